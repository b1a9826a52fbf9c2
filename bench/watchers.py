"""What watching a run costs: progress, live history, loggers and online monitors vs none.

    python bench/watchers.py --out bench/OVERHEAD.md     # ~12 min on 2 cores
    python bench/watchers.py --quick --repeats 1         # digits, checks the code path

``--workspace WS``: a workspace with the dataset ingested (`pretextflow init WS && pretextflow ingest
...`); without it the script ingests Fashion-MNIST (or digits) into a temporary one. Each measurement is one
process pretraining the demo config (configs/fashion_mnist.yaml), shortened by ``--set`` overrides
(default: 2 epochs of 12,800 images), inside
``core.runs.watch.watched_run`` (the bus a pipeline run builds), in three settings:

- ``none``: ``progress.mode=off``, ``logging.loggers=[]``, ``monitor.every_epochs=0``: nothing watches;
- ``monitors``: only the online monitors (kNN top-1 + RankMe after every epoch, the demo's default);
- ``all``: plain progress lines, the live history, TensorBoard and MLflow (a local SQLite store)
  and the monitors. A logger that fails (and so switches itself off) fails the bench.

The settings alternate within each repeat (none, monitors, all, none, ...), so drift in the machine's
speed falls on all three alike. A run's pretrain seconds (the stage's own ``compute_seconds``) split
into its epochs (the per-step cost of every event the sinks receive), its monitor checks (one after
each epoch, the same cost whatever the epoch's length) and the rest (fixed: a logger's start, the
monitors' subset); the demo's share is projected from the medians of the three over the repeats.
The result replaces the "Watching a run" section of ``--out`` (the rest of the file is kept);
``--render WATCHERS.json`` re-renders a saved run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
HEADING = "## Watching a run: progress, live history, loggers, monitors (target <= 3% of pretraining)"
SETTINGS = ("none", "monitors", "all")


def overrides(setting: str, tmp: Path, tag: str) -> list[str]:
    base = ["data.source=null", f"store.uri=file://{tmp}/store-{tag}"]
    if setting == "none":
        return base + ["progress.mode=off", "logging.loggers=[]", "monitor.every_epochs=0"]
    if setting == "monitors":
        return base + ["progress.mode=off", "logging.loggers=[]", "monitor.every_epochs=1"]
    return base + [
        "progress.mode=lines",
        "logging.loggers=[tensorboard, mlflow]",
        f"logging.options={{mlflow: {{tracking_uri: '{mlflow_uri(tmp)}'}}}}",
        "monitor.every_epochs=1",
    ]


def mlflow_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp}/mlflow.db"


def create_mlflow_store(tmp: Path) -> None:
    """A tracking store that exists already, as a team's does: creating the SQLite schema (~5 s, once
    per store) is not a cost of watching a run."""
    import mlflow.tracking

    mlflow.tracking.MlflowClient(tracking_uri=mlflow_uri(tmp)).search_experiments()


def child(args) -> None:
    """Runs in its own process: one watched pretraining; prints JSON."""
    from pretextflow.core.config import load_config
    from pretextflow.core.runs.watch import watched_run
    from pretextflow.core.stages import StageContext, run_pretrain

    cfg = load_config(args.config, args.set)
    ctx = StageContext.create(cfg, args.workspace)
    t = time.perf_counter()
    with watched_run(cfg, ctx.registry, ctx.store, args.workspace, progress=cfg.progress.mode) as watch:
        ctx.events = watch.events
        out = run_pretrain(ctx)
    wall = time.perf_counter() - t
    history = ctx.store.read_json("pretrain", out["key"], "history.json")
    result = {
        "compute_seconds": out["compute_seconds"],
        "watched_wall": wall,
        "epoch_seconds": history["epoch_seconds"],
        "monitor_seconds": [r["seconds"] for r in history.get("monitor", [])],  # after each epoch, outside it
    }
    print("RESULT " + json.dumps(result))


def run_child(config: Path, ws: Path, sets: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--config", str(config), "--workspace", str(ws)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed ({' '.join(sets)}):\n{proc.stderr[-4000:]}")
    if "logger failed" in proc.stderr:  # a logger that switched itself off would measure nothing
        raise SystemExit(f"a logger failed ({' '.join(sets)}):\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def ingest(tmp: Path, quick: bool) -> Path:
    exe = str(Path(sys.executable).parent / "pretextflow")
    ws = tmp / "ws"
    subprocess.run([exe, "init", str(ws)], check=True, capture_output=True)
    src = ["sklearn:digits", "--format", "sklearn-digits", "--name", "digits"] if quick else [str(FASHION)]
    src = src if quick else src + ["--format", "idx", "--name", "fashion-mnist"]
    subprocess.run([exe, "ingest", *src, "-w", str(ws), "--quiet"], check=True, capture_output=True)
    return ws


def measure(config: Path, ws: Path, tmp: Path, extra: list[str], repeats: int, settings: list[str]) -> list[dict]:
    rows = []
    for r in range(repeats):
        row = {}
        for setting in settings:
            print(f"repeat {r + 1}/{repeats}: {setting} ...", flush=True)
            sets = overrides(setting, tmp, f"{setting}-{r}") + extra
            row[setting] = run_child(config, ws, sets)
        rows.append(row)
    return rows


LABELS = {
    "none": "none (s)",
    "monitors": "monitors only (s)",
    "all": "all: progress + live history + TensorBoard + MLflow + monitors (s)",
}


def _split(r: dict) -> tuple[float, float, float]:
    """(fixed seconds: the stage outside its epochs and monitor checks; steady seconds per epoch: the
    epochs after the first; seconds per monitor check, 0 without monitors)."""
    ep, mon = r["epoch_seconds"], r.get("monitor_seconds") or []
    fixed = r["compute_seconds"] - sum(ep) - sum(mon)
    return fixed, statistics.mean(ep[1:] or ep), statistics.mean(mon) if mon else 0.0


def summary(rows: list[dict], setting: str, demo_epoch_s: float, demo_epochs: int) -> dict:
    """Medians over the repeats of: the whole stage's ratio to ``none``, a steady epoch's ratio (the
    per-step cost: progress, the live history, the loggers), the fixed extra seconds, the seconds of
    a monitor check (once per epoch); and the share of the demo's pretraining they add up to."""
    med = statistics.median
    parts = [(_split(r[setting]), _split(r["none"])) for r in rows]
    total = med(r[setting]["compute_seconds"] / r["none"]["compute_seconds"] for r in rows)
    epoch = med(a[1] / b[1] for a, b in parts)
    fixed, monitor = med(a[0] - b[0] for a, b in parts), med(a[2] - b[2] for a, b in parts)
    demo = demo_epoch_s * demo_epochs
    share = (fixed + demo_epochs * monitor + demo * (epoch - 1)) / demo
    spread = (min(a[1] / b[1] for a, b in parts), max(a[1] / b[1] for a, b in parts))
    return {"total": total, "epoch": epoch, "fixed": fixed, "monitor": monitor, "demo": share, "spread": spread}


def render(report: dict) -> str:
    rows, settings = report["rows"], report["settings"]
    lines = [
        HEADING,
        "",
        f"Command: `{report['command']}`; {report['threads']} cores; load average at the start {report['load']}. "
        f"Each cell is one process pretraining `{report['config']}` with `{' '.join(report['extra']) or '-'}` inside "
        "the pipeline's watched run (`bench/watchers.py` says how): the stage's own `compute_seconds`, and in "
        "brackets its steady epoch (the mean of the epochs after the first; the monitor check after an "
        "epoch is timed apart, in `history.json`'s `monitor` records). The settings alternate in each "
        "repeat. The MLflow store (SQLite) exists before the runs, as a team's does.",
        "",
        "| repeat | " + " | ".join(LABELS[s] for s in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for i, r in enumerate(rows, 1):
        cells = [f"{r[s]['compute_seconds']:.1f} ({_split(r[s])[1]:.1f})" for s in settings]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines.append("")
    demo_epoch_s, demo_epochs = report["demo_epoch_s"], report["demo_epochs"]
    for s in settings[1:]:
        x = summary(rows, s, demo_epoch_s, demo_epochs)
        verdict = f" (target <= 3%: {'met' if x['demo'] <= 0.03 else 'missed'})" if s == "all" else ""
        lines.append(
            f"- **{s}** vs none, medians over the repeats: the whole stage {x['total']:.3f}x, a steady "
            f"epoch {x['epoch']:.3f}x (the per-step cost), {x['monitor']:.2f} s per monitor check (one per epoch), "
            f"fixed extra {x['fixed']:+.1f} s per run. On the demo "
            f"({demo_epochs} epochs of ~{demo_epoch_s:.0f} s here) that is **{100 * x['demo']:+.1f}%** of "
            f"pretraining{verdict}. The steady-epoch ratios of single repeats range "
            f"{x['spread'][0]:.3f}x to {x['spread'][1]:.3f}x: the machine's noise is larger than the effect."
        )
    lines += [
        "",
        "Short runs keep the repeats many (the machine's speed drifts by ~10% between identical runs), but "
        "they overweight what a run pays once (the MLflow client opening its store, the TensorBoard writer, "
        "the monitors' subset): the whole-stage ratio is an upper bound, and the demo's share is the fixed "
        "seconds, plus 10 monitor checks, plus the steady per-epoch ratio over its 10 epochs. The monitors run after every epoch "
        "(`monitor.every_epochs: 1`, the default), and cost the same per check whatever the epoch's length.",
        "",
    ]
    return "\n".join(lines)


def _demo_epoch(config: Path, ws: Path, tmp: Path, extra: list[str]) -> float:
    """Seconds of one demo epoch on this machine, unwatched: one epoch on every image."""
    print("one unwatched demo epoch, to scale the fixed costs ...", flush=True)
    sets = overrides("none", tmp, "demo-epoch") + ["train.epochs=1"]
    return run_child(config, ws, sets)["epoch_seconds"][0]


def write_section(path: Path, section: str) -> None:
    """Replace the section under HEADING (up to the next '## ') in ``path``, or append it."""
    text = path.read_text() if path.exists() else ""
    start = text.find(HEADING)
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + len(HEADING))
    tail = text[end + 1 :] if end >= 0 else ""
    path.write_text(text[:start] + section + ("\n" + tail if tail else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="digits and configs/digits_smoke.yaml")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--demo-epoch-s", type=float, default=None, help="a demo epoch's seconds (default: a none run's)")
    ap.add_argument("--settings", default="none,all", help=f"a comma list of {', '.join(SETTINGS)}; none first")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None, help="re-render a saved WATCHERS.json into --out")
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.render:
        section = render(json.loads(args.render.read_text()))
        print(section)
        return write_section(args.out, section) if args.out else None
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-watchers-"))
    config = args.config or REPO / "configs" / ("digits_smoke.yaml" if args.quick else "fashion_mnist.yaml")
    ws = args.workspace or ingest(tmp, args.quick)
    report = {
        "command": " ".join(["python", "bench/watchers.py", *sys.argv[1:]]),
        "threads": os.cpu_count(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
    }
    settings = [x.strip() for x in args.settings.split(",")]
    if settings[0] != "none" or not set(settings) <= set(SETTINGS):
        raise SystemExit(f"--settings: a comma list of {', '.join(SETTINGS)}, none first")
    create_mlflow_store(tmp)
    report["settings"] = settings
    extra = args.set or (["train.epochs=1"] if args.quick else ["train.epochs=2", "train.max_train_samples=12800"])
    report["extra"] = extra
    report["rows"] = measure(config, ws, tmp, extra, args.repeats, settings)
    report["demo_epochs"] = 10
    report["demo_epoch_s"] = args.demo_epoch_s or _demo_epoch(config, ws, tmp, extra)
    section = render(report)
    print(section)
    if args.out:
        write_section(args.out, section)
        args.out.with_name("WATCHERS.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
