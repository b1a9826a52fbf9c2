"""SCALING.md's multi-process section: SimCLR training images/s on this CPU with 1 process, 2
processes on one node, and 2 "nodes" x 1 process (two elastic agents on 127.0.0.1, the second in a
process of its own, meeting at a c10d rendezvous), through the real training loop and launcher
(``core.training.loop.pretrain``, ``core.training.launch``); the communication share of a step;
and, on paper, what 2 nodes x 8 GPUs send per step (``bench/comm_volume.py``).

Every point trains configs/fashion_mnist.yaml's SimCLR (convnet-s, global batch 256) on the first
``--steps-per-epoch`` x 256 Fashion-MNIST training images (ingested into a temp workspace): one
untimed warm-up epoch, then ``--steps`` timed steps; images/s from rank 0's ``epoch_seconds``.
The communication share: the same 2 processes run *without* talking to each other (two independent
1-process runs of the local batch, 128, started together on the same cores) give the step time of
computing alone; 1 - that / the DDP step time is the time spent in gradient all-reduce, the
gathered embeddings, global BatchNorm and waiting for the slower rank. Rounds visit the points in
alternating order; medians are reported.

    python bench/distributed.py            # ~4 min on 2 cores; rewrites SCALING.md after its marker
    python bench/distributed.py --quick    # smoke run (numbers meaningless), prints only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import CONFIG, REPO  # noqa: E402

KEY = "distributed"
MARKER = "<!-- processes and nodes: bench/distributed.py (scaling.py keeps what follows) -->"
POINTS = ("1 process, 2 threads", "1 process, 1 thread", "2 processes x 1 thread", "2 nodes x 1 process x 1 thread")
ALONE = "2 independent processes, local batch (no communication)"
ONE_NODE = {  # the points launched from this process alone: their overrides
    POINTS[0]: ["train.threads=2"],
    POINTS[1]: ["train.threads=1"],
    POINTS[2]: ["train.threads=1", "train.devices=2"],
}


def config(overrides: list[str]):
    from pretextflow.core.config import load_config

    return load_config(CONFIG, ["data.source=null", *overrides])


def run_here(cfg_json: str, data_dir: str, store_dir: str) -> dict:
    """One pretraining in this process (or this node's share of it); its history."""
    from pretextflow.core.config import load_config
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    cfg = load_config(raw=json.loads(cfg_json))
    store = ArtifactStore(store_dir)
    pretrain(cfg, load_dataset(data_dir, "fashion-mnist"), store, KEY, get_registry())
    return store.read_json("pretrain", KEY, "history.json")


def _as_json(cfg) -> str:
    return json.dumps(cfg.model_dump(mode="json"))


def _child(cfg, data_dir: str, store_dir: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--as-node", _as_json(cfg), data_dir, store_dir]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=900)
    if proc.returncode:
        raise SystemExit(f"a node exited with {proc.returncode}:\n{err[-3000:]}")


def timed_rate(histories: list[dict], images_per_step: int) -> float:
    """Images/s of the timed epochs (all but the first); of runs made together, the slowest's pace."""
    h = histories[0]
    steps = (len(h["epoch_seconds"]) - 1) * (len(h["step_loss"]) // len(h["epoch_seconds"]))
    return steps * images_per_step / max(sum(x["epoch_seconds"][1:]) for x in histories)


def point(name: str, data_dir: str, tmp: Path, base: list[str], batch: int) -> float:
    """Train point ``name`` once in fresh stores; its images/s (global batch per second)."""
    from pretextflow.core.training.launch import free_port

    stores = [str(tmp / f"store-{i}") for i in range(2)]
    for s in stores:
        shutil.rmtree(s, ignore_errors=True)
    if name in ONE_NODE:
        return timed_rate([run_here(_as_json(config([*base, *ONE_NODE[name]])), data_dir, stores[0])], batch)
    if name == POINTS[3]:
        endpoint = f"127.0.0.1:{free_port()}"
        nodes = ["train.nodes=2", f"train.rdzv_endpoint={endpoint}", "train.local_addr=127.0.0.1"]
        cfg = config([*base, "train.threads=1", *nodes])
        other = _child(cfg, data_dir, stores[0])
        hist = run_here(_as_json(cfg), data_dir, stores[0])
        _wait(other)
        return timed_rate([hist], batch)
    # ALONE: the local batch on each core, no collectives; the global rate they would add up to
    half = batch // 2
    cfg = config(
        [*base, "train.threads=1", f"train.batch_size={half}", f"train.max_train_samples={_samples(base) // 2}"]
    )
    procs = [_child(cfg, data_dir, s) for s in stores]
    for p in procs:
        _wait(p)
    from pretextflow.core.store import ArtifactStore

    hists = [ArtifactStore(s).read_json("pretrain", KEY, "history.json") for s in stores]
    return timed_rate(hists, batch)  # each step of the pair = one global batch


def _samples(base: list[str]) -> int:
    return int(next(o.split("=")[1] for o in base if o.startswith("train.max_train_samples=")))


def measure(args, data_dir: str, tmp: Path) -> dict[str, list[float]]:
    batch = 256
    epochs = 1 + args.steps // args.steps_per_epoch
    base = [
        f"train.batch_size={batch}",
        f"train.max_train_samples={args.steps_per_epoch * batch}",
        f"train.epochs={epochs}",
    ]
    names = [*POINTS, ALONE]
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            rates[name].append(point(name, data_dir, tmp, base, batch))
            print(
                f"round {r + 1}: {name}: {rates[name][-1]:.0f} images/s ({time.perf_counter() - t:.0f} s)", flush=True
            )
    return rates


def run_measurement(args) -> dict:
    """Every point measured (in a temp workspace), with what the section's header states."""
    import torch

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-distributed-"))
    try:
        rates = measure(args, ingest_fashion_mnist(tmp), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "rates": rates,
        "seconds": time.perf_counter() - t0,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "steps_per_epoch": args.steps_per_epoch,
        "repeats": args.repeats,
    }


def markdown(saved: dict, paper: str) -> str:
    rates = saved["rates"]
    med = {n: statistics.median(v) for n, v in rates.items()}
    one = med[POINTS[0]]
    lines = [
        "## Several processes and nodes (the elastic launcher)",
        "",
        f"Command: `python bench/distributed.py` ({saved['seconds'] / 60:.1f} min; `--render` re-renders "
        f"from DISTRIBUTED.json). torch {saved['torch']}, {saved['cpus']} CPUs, {saved['date']}. SimCLR, "
        f"convnet-s, global batch 256 (configs/fashion_mnist.yaml), gloo; {saved['steps']} timed steps "
        f"after a warm-up epoch of {saved['steps_per_epoch']}; {saved['repeats']} rounds, alternating "
        f"order; median (min-max).",
        "",
        "| setup | images/s | min | max | vs 1 process, 2 threads |",
        "|---|---|---|---|---|",
    ]
    for name, values in rates.items():
        lines.append(f"| {name} | {med[name]:.0f} | {min(values):.0f} | {max(values):.0f} | {med[name] / one:.2f} |")
    ddp, nodes, alone = med[POINTS[2]], med[POINTS[3]], med[ALONE]
    overlap = min(rates[POINTS[2]]) <= max(rates[POINTS[3]]) and min(rates[POINTS[3]]) <= max(rates[POINTS[2]])
    lines += [
        "",
        f"- 2 nodes x 1 process vs 2 processes on one node: **{nodes / ddp:.2f}x**"
        + (" (their ranges overlap: equal within this machine's noise)" if overlap else "")
        + ": the same world and the same gloo collectives over loopback; the nodes add only the rendezvous "
        "at the start. Between real machines the collectives cross the network instead (the table below).",
        f"- 2 processes x 1 thread vs 1 process x 1 thread: {ddp / med[POINTS[1]]:.2f}x, the data-parallel "
        f"speed-up on these 2 cores.",
        f"- Communication share of a 2-process step: **{max(0.0, 1 - ddp / alone):.0%}** "
        f"(1 - {ddp:.0f} / {alone:.0f}: the same two processes computing their local batches without "
        f"talking run at {alone:.0f} images/s).",
        f"- 2 processes x 1 thread vs 1 process x 2 threads: {ddp / one:.2f}x. On 2 cores, "
        f"data-parallel processes buy nothing over threads; they exist for several GPUs and machines.",
        "",
        paper,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    head = text.split(MARKER)[0].rstrip("\n")
    path.write_text(f"{head}\n\n{MARKER}\n\n{section}")


def ingest_fashion_mnist(tmp: Path) -> str:
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.plugins.datasets.known import DEBIAN_FASHION_MNIST

    ws = init_workspace(tmp / "ws")
    ingest(ws, os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST), "idx", "fashion-mnist", push=False)
    return str(ws.data_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--steps-per-epoch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 round; prints the section only")
    ap.add_argument("--out", default=str(REPO / "bench" / "SCALING.md"))
    ap.add_argument("--json", default=str(REPO / "bench" / "DISTRIBUTED.json"), help="the measured rates")
    ap.add_argument("--render", action="store_true", help="only re-render the section from --json")
    ap.add_argument("--as-node", nargs=3, metavar=("CONFIG_JSON", "DATA", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.as_node:
        run_here(*args.as_node)
        return
    if args.quick:
        args.steps, args.steps_per_epoch, args.repeats = 2, 2, 1
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    if args.render:
        saved = json.loads(Path(args.json).read_text())
    else:
        saved = run_measurement(args)
        if not args.quick:
            Path(args.json).write_text(json.dumps(saved, indent=1) + "\n")
    from comm_volume import paper_section

    section = markdown(saved, paper_section())
    if args.quick:
        print(section)
    else:
        write_section(Path(args.out), section)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
