"""The GPU check (bench/gpu_check.sh runs this): the demo's pretraining with AMP and channels-last, once
more with torch.compile, then freeze, features and probes on the GPU, each timed, and the metrics
checked against the CPU run's within a stated tolerance. Exit 0 only when every check passes.

Drives the core stages directly: no Prefect, no DVC (the GPU machine has neither); the dataset is
written in the canonical layout by the dataset-format plugin, as ingest would, minus versioning.

    python bench/gpu_check.py            # on a CUDA machine: Fashion-MNIST, the demo config
    python bench/gpu_check.py --cpu      # here: digits, a short config, the CPU; tests run this
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The CPU run each mode is checked against, measured on this project's 2-core CPU (2026-12-02): the
# demo's pretraining and all-label probes (`make demo` on a fresh clone) for the GPU mode, and the short
# digits config (`sh bench/gpu_check.sh --cpu`) for --cpu. GPU kernels (bf16 AMP, cuDNN autotuning) are not bit-equal to
# the CPU's, and a different device changes the augmentation draws' floating point, so probe
# accuracies are compared within TOLERANCE (absolute top-1), not exactly.
REFERENCE = {
    "gpu": {"linear_top1": 0.8674, "knn_top1": 0.8095, "random_init_linear_top1": 0.7830},
    "cpu": {"linear_top1": 0.9578, "knn_top1": 0.9422, "random_init_linear_top1": 0.9400},
}
TOLERANCE = {"gpu": 0.02, "cpu": 0.01}


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="a short digits run on the CPU (what CI can run)")
    p.add_argument(
        "--fashion", default=str(REPO / "bench" / ".gpu-data"), help="folder with the Fashion-MNIST idx files"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile pretraining")
    return p.parse_args(argv)


def _workspace(root: Path, name: str, fmt: str, source: str) -> Path:
    """A workspace folder whose data/<name> holds the canonical dataset (no git, no DVC)."""
    from pretextflow.core.config import validate_plugin_params
    from pretextflow.core.data.decode import read_all
    from pretextflow.core.data.layout import write_arrays
    from pretextflow.core.registry.registry import get_registry

    fmt_cls = get_registry().dataset_format(fmt)
    arrays = read_all(fmt_cls(), source, validate_plugin_params(fmt_cls.Options, {}, "options"), {})
    write_arrays(root / "data", name, fmt, arrays)
    return root


def _config(cpu: bool, compile_: bool = False):
    from pretextflow.core.config import load_config

    if cpu:
        overrides = ["data.source=null", "train.epochs=2", "train.device=cpu", "probe.device=cpu"]
        overrides += ["probe.label_fractions=[1.0]", "probe.baselines=[random_init]"]
        return load_config(REPO / "configs" / "digits_smoke.yaml", overrides)
    overrides = ["data.source=null", "train.device=cuda", "train.amp=true", "train.channels_last=true"]
    overrides += ["probe.device=cuda", "probe.label_fractions=[1.0]", "probe.baselines=[random_init]"]
    if compile_:  # once, shorter: what compiling costs and gives
        overrides += ["train.compile=true", "train.epochs=2", "name=gpu-check-compile"]
    return load_config(REPO / "configs" / "fashion_mnist.yaml", overrides)


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _run(cfg, ws: Path) -> dict:
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe

    ctx = StageContext.create(cfg, str(ws))
    pre, t_pre = _timed(run_pretrain, ctx)
    _, t_freeze = _timed(run_freeze, ctx)
    probed, t_probe = _timed(run_probe, ctx)
    m = probed["metrics"]
    history = ctx.store.read_json("pretrain", pre["key"], "history.json")
    return {
        "seconds": {"pretrain": t_pre, "freeze": t_freeze, "probe": t_probe, **m["seconds"]},
        "images_per_second": history.get("images_per_second"),
        "device": history.get("device"),
        "final_loss": (history.get("epoch_loss") or [None])[-1],
        "linear_top1": m["linear_top1"],
        "knn_top1": m["knn_top1"],
        "random_init_linear_top1": m["baselines"]["random_init"]["linear_top1"],
    }


def _checks(mode: str, result: dict) -> list[dict]:
    rows = []
    for name, want in REFERENCE[mode].items():
        got = result[name]
        ok = abs(got - want) <= TOLERANCE[mode]
        rows.append({"check": name, "got": got, "cpu_reference": want, "tolerance": TOLERANCE[mode], "ok": ok})
    import math

    rows.append(
        {"check": "final loss is finite", "got": result["final_loss"], "ok": math.isfinite(result["final_loss"])}
    )
    return rows


def main(argv=None) -> int:
    args = _args(argv)
    import torch

    mode = "cpu" if args.cpu else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --cpu on a machine without a GPU", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pretextflow-gpu-check-") as tmp:
        if args.cpu:
            ws = _workspace(Path(tmp), "digits", "sklearn-digits", "sklearn:digits")
        else:
            ws = _workspace(Path(tmp), "fashion-mnist", "idx", args.fashion)
        results = {"main": _run(_config(args.cpu), ws)}
        if mode == "gpu" and not args.no_compile:
            results["compile"] = _run(_config(False, compile_=True), ws)
    checks = _checks(mode, results["main"])
    report = {
        "mode": mode,
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(0) if mode == "gpu" else "cpu",
        "results": results,
        "checks": checks,
        "passed": all(c["ok"] for c in checks),
    }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    for c in checks:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['got']}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
