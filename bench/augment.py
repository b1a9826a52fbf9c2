"""Batched augmentation: pretextflow's own `core/augment.py` vs kornia (batched, per-sample
parameters, the well-kept library) vs torchvision.transforms.v2 applied image by image (what a
Dataset.__getitem__ pipeline does), measured side by side in one run on the same batches.

    pip install kornia          # only for this benchmark; not a dependency of pretextflow
    python bench/augment.py                       # prints images/s and ratios
    python bench/augment.py --grid views.png      # also writes a PNG grid of views (visual check)
"""

from __future__ import annotations

import argparse
import time

import torch

from pretextflow.core.toolkit.augment import Augmenter, ViewSpec


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def ours(spec: ViewSpec):
    aug = Augmenter(0)
    return lambda x: aug.view(x, spec)


def kornia_pipeline(spec: ViewSpec, size: int):
    import kornia.augmentation as K

    pipe = K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=spec.crop_scale, ratio=spec.crop_ratio),
        K.RandomHorizontalFlip(p=spec.flip_p),
        K.ColorJitter(spec.brightness, spec.contrast, spec.saturation, 0.0, p=spec.jitter_p),
        K.RandomGrayscale(p=spec.grayscale_p),
    )
    return lambda x: pipe(x.float() / 255)


def torchvision_loop(spec: ViewSpec, size: int):
    from torchvision.transforms import v2

    t = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=spec.crop_scale, ratio=spec.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(spec.flip_p),
            v2.RandomApply([v2.ColorJitter(spec.brightness, spec.contrast, spec.saturation)], p=spec.jitter_p),
            v2.RandomGrayscale(spec.grayscale_p),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
    return lambda x: torch.stack([t(img) for img in x])


def write_grid(path: str, images: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretextflow.plugins.pretext.jigsaw import permutation_set, shuffle_tiles

    aug = Augmenter(0)
    x = images[:8]
    rows = {
        "input": x.float() / 255,
        "simclr view 1": aug.view(x, ViewSpec()),
        "simclr view 2": aug.view(x, ViewSpec()),
        "dino local (14px)": aug.view(x, ViewSpec(size=14, crop_scale=(0.05, 0.4))),
        "blur + solarize": aug.view(x, ViewSpec(blur_p=1.0, solarize_p=1.0)),
        "jigsaw puzzle": shuffle_tiles(
            x.float() / 255,
            torch.from_numpy(permutation_set(9, 100))[:8],
            3,
            0.75,
            torch.rand(8, 9, 2, generator=torch.Generator().manual_seed(0)),
        ),
    }
    fig, axes = plt.subplots(len(rows), 8, figsize=(8, len(rows) * 1.1))
    for r, (name, batch) in enumerate(rows.items()):
        for c in range(8):
            ax = axes[r, c]
            img = batch[c].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--grid", help="write a PNG grid of augmented Fashion-MNIST views here")
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = ViewSpec()
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}; best of {args.repeats}")
    print(f"{'shape':>14} | {'ours img/s':>10} | {'kornia img/s':>12} | {'tv loop img/s':>13} | ours/kornia | ours/tv")
    for c, size in ((1, 28), (3, 32), (3, 64)):
        x = torch.randint(0, 256, (args.batch, c, size, size), dtype=torch.uint8)
        t_ours = timeit(lambda x=x: ours(spec)(x), args.repeats)
        try:
            t_k = timeit(lambda x=x, size=size: kornia_pipeline(spec, size)(x), args.repeats)
        except ImportError:
            t_k = float("nan")
        t_tv = timeit(lambda x=x, size=size: torchvision_loop(spec, size)(x), max(1, args.repeats // 2))
        n = args.batch
        print(
            f"{str((c, size, size)):>14} | {n / t_ours:10.0f} | {n / t_k:12.0f} | {n / t_tv:13.0f} | "
            f"{t_k / t_ours:11.2f} | {t_tv / t_ours:7.2f}"
        )
    if args.grid:
        import gzip

        import numpy as np

        from pretextflow.plugins.datasets.known import DEBIAN_FASHION_MNIST

        raw = gzip.open(f"{DEBIAN_FASHION_MNIST}/t10k-images-idx3-ubyte.gz").read()
        imgs = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28).copy())
        write_grid(args.grid, imgs)


if __name__ == "__main__":
    main()
