"""Pretrain throughput (images/s) of every built-in method: pretextflow's real training loop
(`core.train.pretrain`) vs a bare hand-written PyTorch loop with the same model, batch,
augmentations and optimizer (the limit). Target: ours >= 0.95 x bare for every method.

Both sides run in this one process on the canonical Fashion-MNIST dataset (ingested into a temp
workspace as bench/methods.py does), config as methods.py builds it (configs/fashion_mnist.yaml,
`pretext.params={}` = each method's published defaults, batch 256; MAE on timm's ViT-tiny, patch 4):

- OURS: `pretrain(cfg, dataset, ArtifactStore(<fresh temp dir>), ...)` with
  `train.max_train_samples = steps-per-epoch x batch` and `1 + steps / steps-per-epoch` epochs;
  images/s from its own `history.json` (`epoch_seconds`), the first epoch (warm-up) left out.
  (Its checkpoint writes happen outside `epoch_seconds`, so they are not counted.)
- BARE: the same task module (`build_backbone` + `build_task`), the same `Augmenter`, the same AdamW
  with the same two param groups, the same images tensor in memory, the same seeds, threads and
  deterministic algorithms (`configure_runtime`); per epoch `torch.randperm`, then per step slice,
  `task(batch, aug)`, `zero_grad`, `backward`, `step`, `task.on_step_end` and nothing else; timed
  per epoch with the first epoch left out, exactly like OURS.

The two sides are interleaved epoch by epoch in one process: BARE's epochs run from `pretrain`'s
`on_epoch_end` hook (outside OURS's timed epochs), so a repeat is O1 B1 O2 B2 ... or, every other
repeat, B1 O1 B2 O2 ... (order alternates); machine noise hits both sides within seconds. The ratio
ours/bare is taken within a repeat; the median (min, max) over the repeats is reported. The step-0
loss of both sides must be identical (same init, data and views): a check that they train the same.
Timed steps per side and repeat: `--steps` (15), raised for fast methods so that each side's timed
window is at least `--min-seconds` (3 s; from a 4-step calibration of the bare loop).

    python bench/throughput.py                                   # all 12 methods, ~8-10 min on 2 quiet cores
    python bench/throughput.py --methods simclr,byol --repeats 5
    python bench/throughput.py --quick                           # a < 90 s smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import ALL, CONFIG, REPO, VIT  # noqa: E402

TARGET = 0.95
KEY = "throughput"


def method_config(method: str, steps_per_epoch: int, epochs: int, threads: int | None, batch: int | None = None):
    from pretextflow.core.config import load_config

    over = [
        f"pretext.name={method}",
        "pretext.params={}",
        "data.source=null",
        "probe.baselines=[]",
        f"train.epochs={epochs}",
    ]
    if batch:
        over.append(f"train.batch_size={batch}")
    if threads:
        over.append(f"train.threads={threads}")
    if method == "mae":
        over += VIT
    cfg = load_config(CONFIG, over)
    return load_config(CONFIG, over + [f"train.max_train_samples={steps_per_epoch * cfg.train.batch_size}"])


def canonical_dataset(tmp: Path):
    """Fashion-MNIST ingested into a temp workspace (as bench/methods.py does), opened for reading."""
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.plugins.datasets.known import DEBIAN_FASHION_MNIST

    ws = init_workspace(tmp / "ws")
    ingest(ws, os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST), "idx", "fashion-mnist", push=False)
    return load_dataset(str(ws.data_dir), "fashion-mnist")


class BareLoop:
    """A minimal hand-written loop: same model, heads, loss, views, optimizer, data and seeds.
    Runs one epoch per call, so its epochs can be interleaved with OURS's (between two epochs it
    keeps its own global RNG state, so its numbers are those of a run alone)."""

    def __init__(self, cfg, dataset, registry, steps_per_epoch: int):
        import numpy as np
        import torch

        from pretextflow.core.toolkit.augment import Augmenter
        from pretextflow.core.training.model import build_backbone, build_task, configure_runtime

        tc = cfg.train
        device = torch.device("cpu")
        configure_runtime(cfg.seed, device, tc.threads)
        self.task = build_task(cfg, build_backbone(cfg, dataset.meta, registry, seed=cfg.seed), registry)
        self.images = torch.from_numpy(np.array(dataset.train_images[: tc.max_train_samples]))
        decay, no_decay = [], []
        for p in self.task.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        assert tc.optimizer == "adamw", tc.optimizer
        self.opt = torch.optim.AdamW(groups, lr=tc.lr)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.aug = Augmenter(cfg.seed + 1, device)
        self.steps, self.bs, self.total = steps_per_epoch, tc.batch_size, tc.epochs * steps_per_epoch
        self.epoch, self.epoch_seconds, self.first_loss = 0, [], None
        self.rng = torch.get_rng_state()
        self.task.train()

    def run_epoch(self) -> None:
        import torch

        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        task, opt, aug, images, bs = self.task, self.opt, self.aug, self.images, self.bs
        t = time.perf_counter()
        perm = torch.randperm(len(images), generator=self.data_gen)
        for i in range(self.steps):
            step = self.epoch * self.steps + i
            out = task(images[perm[i * bs : (i + 1) * bs]], aug)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            task.on_step_end(step, self.total)
            if step == 0:  # in the warm-up epoch, which is not timed
                self.first_loss = float(out.loss.detach())
        self.epoch_seconds.append(time.perf_counter() - t)
        self.rng = torch.get_rng_state()
        torch.set_rng_state(outer)
        self.epoch += 1


def one_repeat(cfg, dataset, registry, steps_per_epoch: int, ours_first: bool) -> dict:
    """OURS (the real `pretrain`, fresh temp store) and BARE, epoch by epoch in turn:
    ours-first: O1 B1 O2 B2 ...; bare-first: B1 O1 B2 O2 ... The first epoch of each is not timed."""
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    epochs = cfg.train.epochs
    bare = BareLoop(cfg, dataset, registry, steps_per_epoch)
    if not ours_first:
        bare.run_epoch()
    tmp = tempfile.mkdtemp(prefix="pretextflow-throughput-store-")
    try:
        store = ArtifactStore(tmp)
        pretrain(
            cfg,
            dataset,
            store,
            KEY,
            registry,
            on_epoch_end=lambda e: bare.run_epoch() if ours_first or e < epochs else None,
        )
        hist = store.read_json("pretrain", KEY, "history.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert bare.epoch == epochs == len(hist["epoch_seconds"]), (bare.epoch, epochs, hist["epoch_seconds"])
    images = (epochs - 1) * steps_per_epoch * cfg.train.batch_size
    ours_s, bare_s = hist["epoch_seconds"][1:], bare.epoch_seconds[1:]
    return {
        "ours": images / sum(ours_s),
        "bare": images / sum(bare_s),
        "pairs": [b / o for o, b in zip(ours_s, bare_s, strict=False)],  # ours/bare img/s of adjacent epochs
        "same_loss": hist["step_loss"][0] == bare.first_loss,
    }


T0 = time.perf_counter()


def measure(method: str, dataset, registry, args) -> dict:
    # fast methods get more steps, so each side's timed window is at least --min-seconds: a quick
    # calibration of the bare loop (2 warm-up steps, then 2 timed) sets the step count
    steps, spe = args.steps, args.steps_per_epoch
    if args.min_seconds > 0:
        cal = BareLoop(method_config(method, 2, 2, args.threads, args.batch), dataset, registry, 2)
        cal.run_epoch()
        cal.run_epoch()
        per_step = cal.epoch_seconds[1] / 2
        del cal
        steps = min(max(steps, spe * math.ceil(args.min_seconds / per_step / spe)), 10 * args.steps)
    cfg = method_config(method, spe, 1 + steps // spe, args.threads, args.batch)
    rows = []
    for r in range(args.repeats):
        gc.collect()
        got = one_repeat(cfg, dataset, registry, args.steps_per_epoch, ours_first=r % 2 == 0)
        got["ratio"] = got["ours"] / got["bare"]
        rows.append(got)
        print(
            f"[throughput] {method} repeat {r + 1}/{args.repeats} ({'ours' if r % 2 == 0 else 'bare'} first): "
            f"ours {got['ours']:.0f} img/s, bare {got['bare']:.0f} img/s, ratio {got['ratio']:.3f} "
            f"({time.perf_counter() - T0:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    ratios = [g["ratio"] for g in rows]
    return {
        "method": method,
        "backbone": cfg.backbone.name,
        "batch": cfg.train.batch_size,
        "steps": steps,
        "ours": statistics.median(g["ours"] for g in rows),
        "bare": statistics.median(g["bare"] for g in rows),
        "ratio": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "pair_median": statistics.median(x for g in rows for x in g["pairs"]),
        "same_step0_loss": all(g["same_loss"] for g in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument(
        "--steps",
        type=int,
        default=15,
        help="timed steps per side per repeat (after a warm-up epoch); at least, see --min-seconds",
    )
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=3.0,
        help="fast methods get more timed steps (a multiple of --steps-per-epoch, at most 10 x --steps) "
        "so each side's timed window per repeat is at least this long, from a 4-step calibration; 0 = off",
    )
    ap.add_argument(
        "--steps-per-epoch",
        type=int,
        default=5,
        help="epoch length = the interleaving grain; the first epoch (this many steps) of each side is "
        "the untimed warm-up; must divide --steps",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, help="batch size (default: the config's, 256)")
    ap.add_argument("--threads", type=int, help="torch threads (train.threads); default: torch's default")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (< 90 s, numbers meaningless): batch 32, "
        "1 thread, 1 timed step after a 1-step warm-up epoch, 2 repeats; writes to a temp file unless "
        "--out is given",
    )
    ap.add_argument("--out", help="markdown results (default bench/THROUGHPUT.md)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.steps_per_epoch, args.repeats, args.batch = 1, 1, 2, args.batch or 32
        args.min_seconds = 0
        args.threads = args.threads or 1  # 2 threads on a busy 2-core machine can be 10-50x slower (spinning)
    if args.steps % args.steps_per_epoch:
        ap.error("--steps must be a multiple of --steps-per-epoch")
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.gettempdir()) / "THROUGHPUT.quick.md" if args.quick else REPO / "bench" / "THROUGHPUT.md")
    )
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")

    import torch

    from pretextflow.core.registry.registry import get_registry

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-throughput-"))
    try:
        dataset = canonical_dataset(tmp)
        registry = get_registry()
        results = []
        for method in [m for m in args.methods.split(",") if m]:
            results.append(measure(method, dataset, registry, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write(out, results, args, torch, time.perf_counter() - t0)


def write(path: Path, results: list[dict], args, torch, seconds: float) -> None:
    below = [r["method"] for r in results if r["ratio"] < TARGET]
    cmd = " ".join(["python bench/throughput.py", *sys.argv[1:]])
    lines = [
        "# Pretrain throughput: our training loop vs a bare PyTorch loop",
        "",
        f"Command: `{cmd}` ({seconds / 60:.1f} min). torch {torch.__version__}, {torch.get_num_threads()} torch "
        f"threads, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}.",
        "",
        f"Same config as bench/methods.py (configs/fashion_mnist.yaml, each method's default params, batch "
        f"{results[0]['batch'] if results else '?'}); per side and repeat: one warm-up "
        f"epoch of {args.steps_per_epoch} steps (not timed), then the timed steps (at least {args.steps}, more for "
        f"fast methods so each side is timed >= {args.min_seconds:g} s per repeat) in epochs of "
        f"{args.steps_per_epoch}, the two sides' epochs interleaved (BARE runs from `pretrain`'s `on_epoch_end`). "
        f"OURS = `core.train.pretrain` on a fresh temp store, images/s from its `epoch_seconds`; BARE = a hand-written "
        f"loop with the same task module, Augmenter, AdamW param groups, images, seeds and threads. The side "
        f"going first alternates each repeat; ratio = ours / bare within a repeat, median (min-max) over "
        f'{args.repeats} repeats. "epoch-pair median" = the median ratio over every pair of adjacent timed '
        f'epochs of all repeats (a cross-check robust to bursts of load). "step-0 loss" = both sides '
        f"computed the identical first loss (same model init, batch and views).",
        "",
        "| method | backbone | timed steps | ours img/s | bare img/s | ours / bare (median) | min | max "
        "| epoch-pair median | step-0 loss equal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['backbone']} | {r['steps']} | {r['ours']:.0f} | {r['bare']:.0f} | "
            f"{r['ratio']:.3f} | {r['min']:.3f} | {r['max']:.3f} | {r['pair_median']:.3f} | "
            f"{'yes' if r['same_step0_loss'] else 'NO'} |"
        )
    lines += [
        "",
        f"all methods >= {TARGET}: {'yes' if not below else 'no'}" + (f" (below: {', '.join(below)})" if below else ""),
    ]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)
    print(f"[throughput] written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
