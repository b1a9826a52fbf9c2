"""Synthetic colour JPEG collections with realistic file sizes, for ingest benchmarks (SCALE.md).

    python bench/make_jpegs.py OUT --n 200000 --size 96 --classes 10 [--start 0] [--unlabeled K] [--workers 2]

writes ``OUT/c{k}/img{i:07d}.jpg`` for i in start..start+n-1 (class k = i mod classes; with
``--unlabeled K`` the last K of them go to ``OUT/unlabeled/`` instead). Image i depends only on i
and ``--seed``: a smooth low-frequency colour field, a mid-frequency texture, 3-8 random shapes
and mild uniform noise, saved at JPEG quality 90, so a 96 px image is about 4-6 KB, like a real
photo of that size (pure noise would be ~3x larger, a flat field ~10x smaller). ``--start``
appends new images to an existing collection (their indices, hence names, follow the old ones).
Prints images/s and the mean file size; ``generate()`` is the same from Python.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

BLOCK = 500  # images per task sent to a worker
QUALITY = 90


def _waves(rng: np.random.Generator, size: int, terms: int, fmin: float, fmax: float, amp: float) -> np.ndarray:
    """A random sum of separable cosines (frequencies in cycles per image), (size, size, 3)."""
    f = rng.uniform(fmin, fmax, (2, terms)) * 2 * np.pi / size
    ph = rng.uniform(0, 2 * np.pi, (2, terms))
    x = np.arange(size, dtype=np.float32)
    cy = np.cos(f[0][:, None] * x + ph[0][:, None]).astype(np.float32)
    cx = np.cos(f[1][:, None] * x + ph[1][:, None]).astype(np.float32)
    a = rng.normal(0, amp, (3, terms)).astype(np.float32)
    return np.matmul((a[:, :, None] * cy[None]).transpose(0, 2, 1), cx).transpose(1, 2, 0)


def _shapes(im, rng: np.random.Generator, size: int, label: int) -> None:
    """3-8 filled ellipses, rectangles and triangles; the class decides which kind is most common."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.08, 0.5, 2) * size
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = label % 3 if rng.random() < 0.5 else int(rng.integers(3))
        if kind == 0:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            d.polygon([tuple(p) for p in rng.uniform(0, size, (3, 2))], fill=colour)


def render(i: int, size: int = 96, classes: int = 10, seed: int = 0, quality: int = QUALITY) -> bytes:
    """The JPEG bytes of image ``i`` (deterministic in ``i``, ``size``, ``classes`` and ``seed``)."""
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    label = i % max(classes, 1)
    hue = np.array([np.cos(2 * np.pi * label / max(classes, 1) + o) * 45 + 128 for o in (0, 2.1, 4.2)], np.float32)
    field = hue + _waves(rng, size, 6, 0, 2.5, 40) + _waves(rng, size, 32, 4, 20, 10)
    im = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    _shapes(im, rng, size, label)
    noisy = np.asarray(im, dtype=np.int16) + rng.integers(-5, 6, (size, size, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def image_path(out: Path, i: int, classes: int, unlabeled_from: int | None) -> Path:
    """Where image ``i`` goes: ``c{k}/`` or, from index ``unlabeled_from`` on, ``unlabeled/``."""
    folder = "unlabeled" if unlabeled_from is not None and i >= unlabeled_from else f"c{i % classes}"
    return out / folder / f"img{i:07d}.jpg"


def _write_block(task: tuple) -> tuple[int, int]:
    """Write images lo..hi-1; returns (images, bytes written)."""
    out, lo, hi, size, classes, seed, unlabeled_from = task
    total = 0
    for i in range(lo, hi):
        data = render(i, size, classes, seed)
        image_path(Path(out), i, classes, unlabeled_from).write_bytes(data)
        total += len(data)
    return hi - lo, total


def generate(
    out: str | Path,
    n: int,
    size: int = 96,
    classes: int = 10,
    start: int = 0,
    unlabeled: int = 0,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Write images start..start+n-1 under ``out``; returns images, bytes, mean_bytes, seconds, images_per_s."""
    if classes < 1 or n < 0 or not 0 <= unlabeled <= n:
        raise ValueError("need classes >= 1, n >= 0 and 0 <= unlabeled <= n")
    out = Path(out)
    unlabeled_from = start + n - unlabeled if unlabeled else None
    for k in range(classes):
        (out / f"c{k}").mkdir(parents=True, exist_ok=True)
    if unlabeled:
        (out / "unlabeled").mkdir(parents=True, exist_ok=True)
    tasks = [
        (str(out), lo, min(lo + BLOCK, start + n), size, classes, seed, unlabeled_from)
        for lo in range(start, start + n, BLOCK)
    ]
    workers = workers or len(os.sched_getaffinity(0))
    t0, done, total = time.perf_counter(), 0, 0
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for count, nbytes in pool.imap_unordered(_write_block, tasks):
            done, total = done + count, total + nbytes
            if progress and done % (20 * BLOCK) < count:
                print(f"  {done:,}/{n:,} images, {done / (time.perf_counter() - t0):,.0f} images/s", flush=True)
    seconds = time.perf_counter() - t0
    return {
        "images": done,
        "bytes": total,
        "mean_bytes": total / max(done, 1),
        "seconds": round(seconds, 3),
        "images_per_s": done / seconds if seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--n", type=int, default=200_000, help="images to write")
    ap.add_argument("--size", type=int, default=96, help="width = height, pixels")
    ap.add_argument("--classes", type=int, default=10, help="class folders c0..c{K-1}")
    ap.add_argument("--start", type=int, default=0, help="first image index (append to a collection)")
    ap.add_argument("--unlabeled", type=int, default=0, help="the last K images go to unlabeled/")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    r = generate(a.out, a.n, a.size, a.classes, a.start, a.unlabeled, a.workers, a.seed, progress=True)
    print(
        f"wrote {r['images']:,} JPEGs ({a.size} px) to {a.out} in {r['seconds']:.1f} s: "
        f"{r['images_per_s']:,.0f} images/s; mean file size {r['mean_bytes']:,.0f} bytes "
        f"({r['bytes'] / 2**20:,.1f} MiB in all)"
    )


if __name__ == "__main__":
    main()
