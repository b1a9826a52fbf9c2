"""What the pipeline machinery costs: CLI start-up, ingest, Prefect orchestration, probing, memory.

    python bench/overhead.py --out bench/OVERHEAD.md            # ~17 min on 2 cores (the demo runs once)
    python bench/overhead.py --quick                            # digits instead of the demo (~1 min)

Measured in one run, each against its own reference:
1. CLI start-up: `pretextflow --help` and `pretextflow plugins` (listing cache cold and warm), median
   of 5 runs each, beside `python -c pass` (the interpreter alone).
2. Ingest of Fashion-MNIST (IDX gz source -> canonical arrays -> `dvc add` + `dvc push` to the
   workspace's local remote), through the CLI in a new workspace, median of 3.
3. Orchestration overhead of the demo (`configs/fashion_mnist.yaml` through the Prefect pipeline
   flow, in a fresh process with a temporary Prefect server): wall time of the flow minus the time
   spent inside the five stage functions (each stage reports its own `compute_seconds`), as a
   fraction of the flow's wall time; also the Prefect server start and the process's whole wall.
4. Feature extraction + probes vs pretraining time, from the probe stage's own timings.
5. Peak RSS of the demo process, beside the dataset's size; and how peak RSS grows with the number
   of training images (pretraining 1 epoch on 15,000 vs 60,000 images, each in its own process):
   bytes of RSS per added image, beside the 784 bytes an image occupies.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
BIN = Path(sys.executable).parent


def _median_wall(cmd: list[str], n: int, env: dict | None = None, before=None) -> tuple[float, list[float]]:
    times = []
    for _ in range(n):
        if before:
            before()
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def cli_startup(tmp: Path, n: int) -> dict:
    cache = tmp / "plugin-cache"
    env = {**os.environ, "PRETEXTFLOW_CACHE_DIR": str(cache)}
    exe = str(BIN / "pretextflow")
    clear = lambda: subprocess.run(["rm", "-rf", str(cache)], check=True)  # noqa: E731
    out = {
        "python -c pass": _median_wall([sys.executable, "-c", "pass"], n, env),
        "pretextflow --help": _median_wall([exe, "--help"], n, env),
        "pretextflow plugins (cold: cache cleared)": _median_wall([exe, "plugins"], n, env, before=clear),
    }
    subprocess.run([exe, "plugins"], check=True, capture_output=True, env=env)
    out["pretextflow plugins (cached)"] = _median_wall([exe, "plugins"], n, env)
    return {k: {"median": v[0], "runs": v[1]} for k, v in out.items()}


def ingest_time(tmp: Path, n: int, source: str, fmt: str, name: str) -> dict:
    exe = str(BIN / "pretextflow")
    runs = []
    for i in range(n):
        ws = tmp / f"ingest-ws-{i}"
        subprocess.run([exe, "init", str(ws)], check=True, capture_output=True)
        t = time.perf_counter()
        proc = subprocess.run(
            [exe, "ingest", source, "--format", fmt, "--name", name, "-w", str(ws)], capture_output=True, text=True
        )
        runs.append(time.perf_counter() - t)
        if proc.returncode:
            raise SystemExit(f"ingest failed:\n{proc.stderr}")
        pushed = any((ws / ".dvc-remote").rglob("*")) if (ws / ".dvc-remote").exists() else None
    return {"median": statistics.median(runs), "runs": runs, "pushed_to_remote": pushed}


def child_pipeline(args) -> None:
    """Runs in its own process: the demo through the Prefect pipeline flow; prints JSON."""
    t_process = time.perf_counter()
    from prefect import flow

    from pretextflow.core.config import load_config
    from pretextflow.flows.pipeline import pipeline_flow

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    t = time.perf_counter()
    warm_up()  # starts the temporary Prefect server (kept for this process), so it is timed apart
    server_start = time.perf_counter() - t
    cfg = load_config(args.config, args.set).model_dump(mode="json")
    t = time.perf_counter()
    result = pipeline_flow(cfg, args.workspace, push=True)
    wall = time.perf_counter() - t
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from pretextflow.core.stages import StageContext

    ctx = StageContext.create(load_config(args.config, args.set), args.workspace)
    ds = ctx.dataset()
    probe = ctx.store.read_json("probe", ctx.keys(ds)["probe"], "metrics.json")
    print(
        "RESULT "
        + json.dumps(
            {
                "server_start": server_start,
                "flow_call_wall": wall,
                "flow_seconds": result["flow_seconds"],
                "stages": result["stages"],
                "probe_timings": probe["seconds"],
                "peak_rss_bytes": rss_kb * 1024,
                "dataset_bytes": int(ds.train_images.nbytes + ds.test_images.nbytes),
                "process_wall": time.perf_counter() - t_process,
                "metrics": {"linear_top1": result["metrics"]["linear_top1"], "knn_top1": result["metrics"]["knn_top1"]},
            }
        )
    )


def child_rss(args) -> None:
    """Pretrain 1 epoch on N images in this process; print peak RSS."""
    from pretextflow.core.config import load_config
    from pretextflow.core.stages import StageContext, run_pretrain

    ctx = StageContext.create(load_config(args.config, args.set), args.workspace)
    run_pretrain(ctx)
    print("RESULT " + json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def _child(mode: str, config: Path, overrides: list[str], workspace: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--config", str(config), "--workspace", str(workspace)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-4000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="digits instead of Fashion-MNIST (checks the code path)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", choices=["pipeline", "rss"])
    ap.add_argument("--config", type=Path)
    ap.add_argument("--workspace")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    if args.child == "pipeline":
        return child_pipeline(args)
    if args.child == "rss":
        return child_rss(args)

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-overhead-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    os.environ.pop("PREFECT_API_URL", None)
    if args.quick:
        source, fmt, name, config = "sklearn:digits", "sklearn-digits", "digits", REPO / "configs" / "digits_smoke.yaml"
        rss_sizes, n_cli, n_ingest = [], 2, 1
    else:
        source, fmt, name, config = str(FASHION), "idx", "fashion-mnist", REPO / "configs" / "fashion_mnist.yaml"
        rss_sizes, n_cli, n_ingest = [15000, 60000], 5, 3
    report: dict = {"command": " ".join(["python", "bench/overhead.py", *sys.argv[1:]]), "threads": os.cpu_count()}
    print("CLI start-up ...", flush=True)
    report["cli"] = cli_startup(tmp, n_cli)
    print("ingest ...", flush=True)
    report["ingest"] = ingest_time(tmp, n_ingest, source, fmt, name)
    ws = tmp / "ingest-ws-0"
    print("the demo through the Prefect pipeline ...", flush=True)
    report["pipeline"] = _child("pipeline", config, ["data.source=null"], ws)
    report["rss_vs_images"] = []
    for n in rss_sizes:
        print(f"peak RSS, pretraining 1 epoch on {n} images ...", flush=True)
        r = _child(
            "rss",
            config,
            ["data.source=null", "train.epochs=1", f"train.max_train_samples={n}", f"store.uri=memory://rss-{n}"],
            ws,
        )
        report["rss_vs_images"].append({"images": n, **r})
    text = render(report, args.quick)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))


def render(r: dict, quick: bool) -> str:
    p = r["pipeline"]
    compute = {s: (v.get("compute_seconds") or 0.0) for s, v in p["stages"].items()}
    total_compute = sum(compute.values())
    overhead = p["flow_seconds"] - total_compute
    pt = p["probe_timings"]
    pretrain_s = compute.get("pretrain") or 0.0
    ssl_probe = pt.get("features_ssl", 0) + pt.get("ssl", 0) + pt.get("subsets_ssl", 0)
    all_probe = (
        pt.get("features", 0)
        + pt.get("ssl", 0)
        + pt.get("random_init", 0)
        + pt.get("pixels", 0)
        + pt.get("subsets_ssl", 0)
        + pt.get("subsets_baselines", 0)
    )
    mb = 1024 * 1024
    lines = [
        f"# Pipeline overhead{' (quick: digits)' if quick else ''}",
        "",
        f"Command: `{r['command']}`; {r['threads']} cores; one run, every number below from it.",
        "",
        "## CLI start-up (median wall seconds; target <= 2 s)",
        "",
        "| command | median | runs |",
        "|---|---|---|",
    ]
    for k, v in r["cli"].items():
        lines.append(f"| `{k}` | {v['median']:.2f} | {', '.join(f'{x:.2f}' for x in v['runs'])} |")
    i = r["ingest"]
    lines += [
        "",
        "## Ingest (target <= 15 s)",
        "",
        f"`pretextflow ingest` in a new workspace (source -> canonical arrays -> dvc add -> dvc push to the "
        f"workspace's local remote): median **{i['median']:.1f} s** (runs: {', '.join(f'{x:.1f}' for x in i['runs'])}); "
        f"data in the remote afterwards: {i['pushed_to_remote']}.",
        "",
        "## Orchestration overhead of the demo (target <= 5%)",
        "",
        "| stage | wall in the flow (s) | inside the stage function (s) | cached |",
        "|---|---|---|---|",
    ]
    for s, v in p["stages"].items():
        lines.append(f"| {s} | {v['seconds']:.1f} | {compute[s]:.1f} | {v.get('cached')} |")
    lines += [
        "",
        f"Flow wall time {p['flow_seconds']:.1f} s, of which {total_compute:.1f} s inside the stage functions: "
        f"orchestration overhead **{overhead:.1f} s = {100 * overhead / p['flow_seconds']:.2f}%**. "
        f"Not in the flow: starting the temporary Prefect server {p['server_start']:.1f} s (none with a running "
        f"server); the whole process, imports included, {p['process_wall']:.1f} s "
        f"({100 * (p['process_wall'] - total_compute) / p['process_wall']:.1f}% outside the stages).",
        "",
        "## Feature extraction + probes vs pretraining (target <= 15%)",
        "",
        "| part | seconds | % of pretraining |",
        "|---|---|---|",
    ]
    parts = [
        ("SSL features (extraction)", pt.get("features_ssl", 0)),
        ("SSL linear + kNN, all labels", pt.get("ssl", 0)),
        ("SSL linear + kNN, label subsets", pt.get("subsets_ssl", 0)),
        ("**SSL: features + every probe**", ssl_probe),
        ("baselines: random-init + pixel features", pt.get("features", 0) - pt.get("features_ssl", 0)),
        ("baselines: random-init probes, all labels", pt.get("random_init", 0)),
        ("baselines: pixel probes, all labels", pt.get("pixels", 0)),
        ("baselines: probes on label subsets", pt.get("subsets_baselines", 0)),
        ("**all probes, SSL and baselines**", all_probe),
        ("supervised-from-scratch training (a training run, not a probe)", pt.get("supervised", 0)),
    ]
    for name, sec in parts:
        lines.append(
            f"| {name} | {sec:.1f} | {100 * sec / pretrain_s:.1f}% |" if pretrain_s else f"| {name} | {sec:.1f} | - |"
        )
    lines += [
        "",
        f"Pretraining: {pretrain_s:.1f} s.",
        "",
        "## Memory",
        "",
        f"Peak RSS of the demo process: **{p['peak_rss_bytes'] / mb:.0f} MiB**; the dataset's images "
        f"{p['dataset_bytes'] / mb:.0f} MiB (uint8).",
    ]
    rs = r["rss_vs_images"]
    if len(rs) >= 2:
        a, b = rs[0], rs[-1]
        per_image = (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (b["images"] - a["images"])
        lines += ["", "| training images (1 epoch, own process) | peak RSS (MiB) |", "|---|---|"]
        lines += [f"| {x['images']} | {x['peak_rss_bytes'] / mb:.0f} |" for x in rs]
        lines += [
            "",
            f"Growth: **{per_image:.0f} bytes of peak RSS per added training image** (an image is 784 "
            f"bytes: {per_image / 784:.1f} image-sized copies; the rest is a constant "
            f"~{(a['peak_rss_bytes'] - a['images'] * per_image) / mb:.0f} MiB: Python, torch, the model).",
        ]
    lines += [
        "",
        f"Demo result in this run: linear top-1 {p['metrics']['linear_top1']:.4f}, "
        f"kNN top-1 {p['metrics']['knn_top1']:.4f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
