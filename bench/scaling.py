"""Scaling curves on Fashion-MNIST: training images/s vs batch size and vs torch threads, and how the
time of ingest, one pretraining epoch and feature extraction grows with the dataset size N (each
should be linear: t = a + b*N).

Throughput (panels 1-2) is measured through the real training loop (`core.train.pretrain`, fresh
temp store): SimCLR on `convnet-s` exactly as configs/fashion_mnist.yaml sets them, on the
canonical dataset (ingested into a temp workspace), `train.max_train_samples` = one epoch of
`--steps-per-epoch` steps; one untimed warm-up epoch, then `--steps` timed steps; images/s from the
loop's own `epoch_seconds`. Every repeat visits all (batch, threads) points in turn, in alternating
order, so machine noise spreads over all points; the median over the repeats is reported.

Dataset size (panel 3), for each N: an IDX source holding the first N Fashion-MNIST training images
and labels (gzip, as the originals) plus the full test set is written to a temp folder (not timed),
then, timed separately:
- ingest: the real `core.ingest.ingest` into a fresh workspace (`init_workspace`, not timed):
  read + decode the IDX gz files, validate, encode the canonical .npy files, `dvc add data` and
  `dvc push` to the workspace's default (local) DVC remote, exactly as `pretextflow ingest` does;
- epoch: one epoch of the real `pretrain` (SimCLR, convnet-s, batch 256) over those N images;
- features: `core.features.extract_features` of the N training images (memory-mapped canonical
  array, as the probe reads it) through convnet-s at the probe's batch size (1024).
Each is fitted with least squares t = a + b*N; reported: R^2, and the per-image time at the largest
vs the smallest N, both raw (t/N, which a fixed cost a inflates at small N) and marginal (the slope
of the last interval over the slope of the first: ~1 when linear, > 1 when superlinear).

    python bench/scaling.py                    # ~8 min on 2 quiet cores; writes bench/SCALING.md and bench/scaling.png
    python bench/scaling.py --quick            # < 90 s smoke run, tiny sizes (numbers meaningless)
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import CONFIG, REPO  # noqa: E402

KEY = "scaling"
DISTRIBUTED_MARKER = "<!-- processes and nodes: bench/distributed.py"  # what follows is that script's
IDX_FILES = {"train-images-idx3-ubyte": 16, "train-labels-idx1-ubyte": 8}  # header bytes
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def source_dir() -> Path:
    from pretextflow.plugins.datasets.known import DEBIAN_FASHION_MNIST

    return Path(os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST))


def make_idx_subset(dest: Path, n: int, payloads: dict[str, bytes]) -> Path:
    """An IDX folder with the first ``n`` training images/labels and the original test files."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem, header in IDX_FILES.items():
        data = payloads[stem]
        item = 28 * 28 if "images" in stem else 1
        total = int.from_bytes(data[4:8], "big")
        if n > total:
            raise SystemExit(f"N={n} is more than the {total} training images")
        body = data[:4] + n.to_bytes(4, "big") + data[8:header] + data[header : header + n * item]
        (dest / f"{stem}.gz").write_bytes(gzip.compress(body, compresslevel=6, mtime=0))
    for name in TEST_FILES:
        shutil.copyfile(source_dir() / name, dest / name)
    return dest


def train_config(overrides: list[str]):
    from pretextflow.core.config import load_config

    return load_config(CONFIG, ["data.source=null", *overrides])


def pretrain_epochs(cfg, dataset, registry) -> list[float]:
    """The real training loop on a fresh temp store; its per-epoch seconds."""
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    tmp = tempfile.mkdtemp(prefix="pretextflow-scaling-store-")
    try:
        store = ArtifactStore(tmp)
        pretrain(cfg, dataset, store, KEY, registry)
        return store.read_json("pretrain", KEY, "history.json")["epoch_seconds"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def throughput(dataset, registry, batch: int, threads: int, steps: int, spe: int) -> float:
    cfg = train_config(
        [
            f"train.batch_size={batch}",
            f"train.threads={threads}",
            f"train.max_train_samples={spe * batch}",
            f"train.epochs={1 + steps // spe}",
        ]
    )
    secs = pretrain_epochs(cfg, dataset, registry)[1:]
    return len(secs) * spe * batch / sum(secs)


def size_point(n: int, src: Path, tmp: Path, registry, default_threads: int) -> dict[str, float]:
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.core.evaluation.features import extract_features
    from pretextflow.core.training.model import build_backbone

    root = Path(tempfile.mkdtemp(prefix=f"ws-{n}-", dir=tmp))
    try:
        ws = init_workspace(root / "ws")
        t = time.perf_counter()
        ingest(ws, str(src), "idx", "fashion-mnist", push=True)
        t_ingest = time.perf_counter() - t
        ds = load_dataset(str(ws.data_dir), "fashion-mnist")
        assert len(ds.train_images) == n, (len(ds.train_images), n)
        cfg = train_config([f"train.threads={default_threads}", "train.epochs=1"])
        t_epoch = pretrain_epochs(cfg, ds, registry)[0]
        backbone = build_backbone(cfg, ds.meta, registry, seed=cfg.seed)
        t = time.perf_counter()
        feats = extract_features(backbone, ds.train_images, cfg.probe.batch_size)
        t_feat = time.perf_counter() - t
        assert feats.shape[0] == n
        return {"ingest": t_ingest, "epoch": t_epoch, "features": t_feat}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fit(ns: list[float], ts: list[float]) -> dict[str, float]:
    """Least squares t = a + b*N over every measurement; R^2; per-image time large vs small N."""
    import numpy as np

    x, y = np.asarray(ns, float), np.asarray(ts, float)
    b, a = np.polyfit(x, y, 1)
    ss_res = float(((y - (a + b * x)) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    sizes = sorted(set(ns))
    med = {n: statistics.median(t for m, t in zip(ns, ts, strict=False) if m == n) for n in sizes}
    raw = (med[sizes[-1]] / sizes[-1]) / (med[sizes[0]] / sizes[0])
    first = (med[sizes[1]] - med[sizes[0]]) / (sizes[1] - sizes[0])
    last = (med[sizes[-1]] - med[sizes[-2]]) / (sizes[-1] - sizes[-2])
    marginal = last / first if len(sizes) >= 3 and first > 0 else float("nan")  # 2 sizes: one interval, no test
    return {"a": float(a), "b": float(b), "r2": r2, "raw_ratio": raw, "marginal_ratio": marginal, "median": med}


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="64,128,256,512")
    ap.add_argument("--threads", default="1,2", help="torch thread counts (at --threads-batch)")
    ap.add_argument("--threads-batch", type=int, default=256, help="batch size of the threads curve")
    ap.add_argument(
        "--base-threads",
        type=int,
        help="torch threads of the batch curve and the size runs (default: torch's default, all cores)",
    )
    ap.add_argument("--sizes", default="7500,15000,30000,60000", help="dataset sizes N (training images)")
    ap.add_argument("--steps", type=int, default=24, help="timed training steps per throughput point")
    ap.add_argument(
        "--steps-per-epoch", type=int, default=8, help="the untimed warm-up is one epoch of this many steps"
    )
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all throughput points")
    ap.add_argument("--size-repeats", type=int, default=2, help="rounds over all dataset sizes")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny batches, steps and sizes; one round each; "
        "writes to a temp folder unless --out/--png are given",
    )
    ap.add_argument("--out", help="markdown (default bench/SCALING.md)")
    ap.add_argument("--png", help="figure (default bench/scaling.png)")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.threads, args.threads_batch, args.sizes = "16,32", "1,2", 32, "1000,2000,4000"
        args.base_threads = args.base_threads or 1  # robust on a busy machine
        args.steps, args.steps_per_epoch, args.repeats, args.size_repeats = 2, 1, 1, 1
    if args.steps % args.steps_per_epoch:
        ap.error("--steps must be a multiple of --steps-per-epoch")
    if len(set(ints(args.sizes))) < 3:
        ap.error("--sizes needs at least 3 different sizes (a line through 2 points tests nothing)")
    base = Path(tempfile.gettempdir()) if args.quick else REPO / "bench"
    out = Path(args.out) if args.out else base / ("SCALING.quick.md" if args.quick else "SCALING.md")
    png = Path(args.png) if args.png else base / ("scaling.quick.png" if args.quick else "scaling.png")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")

    import torch

    from pretextflow.core.registry.registry import get_registry

    t0 = time.perf_counter()
    default_threads = args.base_threads or torch.get_num_threads()
    batches, thread_list, sizes = ints(args.batches), ints(args.threads), sorted(ints(args.sizes))
    registry = get_registry()
    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-scaling-"))
    try:
        from pretextflow.core.data.dataset import load_dataset
        from pretextflow.core.data.ingest import ingest
        from pretextflow.core.data.versioning import init_workspace

        ws = init_workspace(tmp / "canonical")
        ingest(ws, str(source_dir()), "idx", "fashion-mnist", push=False)
        ds = load_dataset(str(ws.data_dir), "fashion-mnist")

        # -- throughput: every (batch, threads) point once per round, order alternating -------------
        tb = args.threads_batch
        points = [(b, default_threads) for b in batches]
        points += [(tb, t) for t in thread_list if (tb, t) not in points]
        ips: dict[tuple[int, int], list[float]] = {p: [] for p in points}
        for r in range(args.repeats):
            for b, t in points if r % 2 == 0 else points[::-1]:
                gc.collect()
                ips[(b, t)].append(throughput(ds, registry, b, t, args.steps, args.steps_per_epoch))
                print(
                    f"[scaling] round {r + 1}/{args.repeats} batch {b} threads {t}: {ips[(b, t)][-1]:.0f} img/s "
                    f"({time.perf_counter() - t0:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
        torch.set_num_threads(default_threads)

        # -- dataset size: every N once per round, order alternating ---------------------------------
        payloads = {stem: gzip.decompress((source_dir() / f"{stem}.gz").read_bytes()) for stem in IDX_FILES}
        sources = {n: make_idx_subset(tmp / f"src-{n}", n, payloads) for n in sizes}
        del payloads
        runs: list[tuple[int, dict[str, float]]] = []
        for r in range(args.size_repeats):
            for n in sizes if r % 2 == 0 else sizes[::-1]:
                gc.collect()
                runs.append((n, size_point(n, sources[n], tmp, registry, default_threads)))
                print(
                    f"[scaling] round {r + 1}/{args.size_repeats} N={n}: "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in runs[-1][1].items())
                    + f" ({time.perf_counter() - t0:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fits = {k: fit([n for n, _ in runs], [m[k] for _, m in runs]) for k in ("ingest", "epoch", "features")}
    plot(png, ips, batches, thread_list, args.threads_batch, default_threads, runs, fits)
    write(out, png, args, torch, ips, thread_list, default_threads, fits, time.perf_counter() - t0)


def plot(path: Path, ips, batches, thread_list, tb, default_threads, runs, fits) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    med = {p: statistics.median(v) for p, v in ips.items()}
    ax[0].plot(batches, [med[(b, default_threads)] for b in batches], "o-")
    for b in batches:
        ax[0].plot([b] * len(ips[(b, default_threads)]), ips[(b, default_threads)], ".", color="gray")
    ax[0].set_xscale("log", base=2)
    ax[0].set(xlabel="batch size", ylabel="training images/s", title=f"SimCLR, convnet-s, {default_threads} threads")
    ax[0].set_xticks(batches, [str(b) for b in batches])
    ax[0].set_xticks([], minor=True)
    ax[1].plot(thread_list, [med[(tb, t)] for t in thread_list], "o-")
    for t in thread_list:
        ax[1].plot([t] * len(ips[(tb, t)]), ips[(tb, t)], ".", color="gray")
    ax[1].set(xlabel="torch threads", ylabel="training images/s", title=f"SimCLR, convnet-s, batch {tb}")
    ax[1].set_xticks(thread_list, [str(t) for t in thread_list])
    xs = np.linspace(0, max(n for n, _ in runs), 50)
    for k, color in (("ingest", "C0"), ("epoch", "C1"), ("features", "C2")):
        f = fits[k]
        ax[2].plot(
            [n for n, _ in runs],
            [m[k] for _, m in runs],
            "o",
            color=color,
            label=f"{k}: {f['a']:.2f} s + {f['b'] * 1e3:.3f} ms/img (R² {f['r2']:.3f})",
        )
        ax[2].plot(xs, f["a"] + f["b"] * xs, "-", color=color, alpha=0.6)
    ax[2].set(xlabel="training images N", ylabel="seconds", title="time vs dataset size (least-squares fit)")
    ax[2].legend(fontsize=8)
    for a in ax:
        a.set_ylim(bottom=0)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(path: Path, png: Path, args, torch, ips, thread_list, default_threads, fits, seconds) -> None:
    cmd = " ".join(["python bench/scaling.py", *sys.argv[1:]])
    try:
        png_ref = png.relative_to(path.parent)
    except ValueError:
        png_ref = png
    med = {p: statistics.median(v) for p, v in ips.items()}
    lines = [
        "# Scaling: throughput vs batch and threads, time vs dataset size",
        "",
        f"Command: `{cmd}` ({seconds / 60:.1f} min). torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"{default_threads} torch threads unless noted, {time.strftime('%Y-%m-%d')}. Figure: `{png_ref}`.",
        "",
        "## Training images/s (SimCLR, convnet-s, configs/fashion_mnist.yaml)",
        "",
        f"Measured through the real training loop (`core.train.pretrain`, fresh temp store): one untimed warm-up "
        f"epoch of {args.steps_per_epoch} steps, then {args.steps} timed steps; images/s from the loop's "
        f"`epoch_seconds`. {args.repeats} round(s) over all points, alternating order; median (min-max).",
        "",
        "| batch | threads | images/s (median) | min | max | vs batch 256 |",
        "|---|---|---|---|---|---|",
    ]
    tb = args.threads_batch
    ref = med.get((256, default_threads))
    for b, t in sorted(ips, key=lambda p: (p[1] != default_threads, p[1], p[0])):
        v = ips[(b, t)]
        rel = f"{med[(b, t)] / ref:.2f}" if ref and t == default_threads else ""
        lines.append(f"| {b} | {t} | {med[(b, t)]:.0f} | {min(v):.0f} | {max(v):.0f} | {rel} |")
    if len(thread_list) > 1:
        lo, hi = min(thread_list), max(thread_list)
        lines += [
            "",
            f"Speed-up {hi} vs {lo} thread(s) at batch {tb}: {med[(tb, hi)] / med[(tb, lo)]:.2f}x "
            f"(ideal {hi / lo:.0f}x).",
        ]
    lines += [
        "",
        "## Time vs dataset size N",
        "",
        f"Sizes {args.sizes}, {args.size_repeats} round(s), alternating order. Ingest = the real `ingest` (IDX gz -> "
        "canonical .npy, `dvc add` + `dvc push` to a local remote) into a fresh workspace; epoch = one epoch of the "
        "real `pretrain` (batch 256, epoch_seconds, first epoch so it includes the loop's warm-up); features = "
        "`extract_features` of the N training images (memory-mapped) at batch 1024. Fit t = a + b*N by least squares "
        "over every measurement. Per-image time, largest vs smallest N: raw = (t/N at max N) / (t/N at min N), which "
        "the fixed cost a pulls below 1; marginal = slope of the last interval / slope of the first (~1 when linear, "
        "> 1 when superlinear).",
        "",
        "| stage | "
        + " | ".join(f"N={n} s" for n in sorted(fits["ingest"]["median"]))
        + " | a (s) | b (ms/image) | R² | per-image raw ratio | per-image marginal ratio |",
        "|---|" + "---|" * (len(fits["ingest"]["median"]) + 5),
    ]
    for k in ("ingest", "epoch", "features"):
        f = fits[k]
        lines.append(
            f"| {k} | "
            + " | ".join(f"{f['median'][n]:.2f}" for n in sorted(f["median"]))
            + f" | {f['a']:.2f} | {f['b'] * 1e3:.4f} | {f['r2']:.4f} | {f['raw_ratio']:.2f} | "
            f"{f['marginal_ratio']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    old = path.read_text() if path.exists() else ""
    if DISTRIBUTED_MARKER in old:  # bench/distributed.py's section stays
        text += "\n" + old[old.index(DISTRIBUTED_MARKER) :]
    path.write_text(text)
    print(text)
    print(f"[scaling] written to {path} and {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
