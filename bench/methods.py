"""Every pretext task on Fashion-MNIST with the same backbone and the same wall-clock budget.

Each method runs in its own process (so peak memory is its own): a short calibration measures its
training throughput, the number of epochs that fits the budget is fixed from it (so the learning-
rate schedule is a normal, deterministic one), then pretrain -> freeze -> probe run through the
core stages. The random-init and raw-pixel baselines are probed once with the same protocol.
MAE needs a ViT (it masks patch tokens), so it runs on `timm/vit_tiny_patch16_224` (patch 4) with
that backbone's own random-init baseline.

    python bench/methods.py --budget-minutes 30 --out bench/RESULTS.md      # the issue's budget
    python bench/methods.py --budget-minutes 4 --methods simclr,byol        # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
VIT = ["backbone.name=timm/vit_tiny_patch16_224", "backbone.kwargs={patch_size: 4}"]


def run_one(
    method: str, budget_s: float, workspace: str, store: str, calib_steps: int, images_per_s: float | None = None
) -> dict:
    import torch

    from pretextflow.core.config import load_config
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe

    base = [
        f"pretext.name={method}",
        "pretext.params={}",
        f"store.uri={store}",
        "data.source=null",
        "probe.baselines=[]",
    ]  # the baselines are probed once, by their own job
    if method == "mae":
        base += VIT
    if method in ("baselines", "baselines-vit"):
        base = ["pretext.name=simclr", "pretext.params={}", f"store.uri={store}", "data.source=null"]
        if method == "baselines-vit":
            base += VIT
    # calibration: images/s of this method's training step on this machine, before the real run
    calib = StageContext.create(
        load_config(
            CONFIG,
            base
            + [
                "train.epochs=1",
                f"train.max_train_samples={calib_steps * 256}",
                "store.uri=memory://calibration",
                "train.warmup_epochs=0",
            ],
        ),
        workspace,
    )
    if method.startswith("baselines"):
        from pretextflow.core.evaluation.features import extract_features, pixel_features
        from pretextflow.core.evaluation.probe import evaluate_features
        from pretextflow.core.training.model import build_backbone, configure_runtime

        ctx = calib
        ds = ctx.dataset()
        configure_runtime(0, torch.device("cpu"), None)
        cfg = ctx.cfg
        xtr, ytr, xte, yte = ds.train_images, ds.train_labels, ds.test_images, ds.test_labels
        rand = build_backbone(cfg, ds.meta, get_registry(), seed=cfg.seed).eval().requires_grad_(False)
        rows = {
            "random_init": evaluate_features(
                "random_init",
                extract_features(rand, xtr),
                ytr,
                extract_features(rand, xte),
                yte,
                10,
                cfg.probe,
                0,
                _log(),
            )
        }
        if method == "baselines":
            rows["pixels"] = evaluate_features(
                "pixels", pixel_features(xtr), ytr, pixel_features(xte), yte, 10, cfg.probe, 0, _log()
            )
        return {
            name: {"linear_top1": r["linear"]["top1"], "knn_top1": r["knn"]["k200"]["top1"]} for name, r in rows.items()
        }
    # measured over the training loop, not model building; or given (a calibration from a quiet machine)
    ips = images_per_s or run_pretrain(calib)["images_per_second"]
    epochs = max(1, int(budget_s * ips / 60000))
    ctx = StageContext.create(load_config(CONFIG, base + [f"train.epochs={epochs}"]), workspace)
    t = time.perf_counter()
    pre = run_pretrain(ctx)
    train_s = time.perf_counter() - t
    run_freeze(ctx)
    t = time.perf_counter()
    metrics = run_probe(ctx)["metrics"]
    return {
        "method": method,
        "family": get_registry().pretext[method].family,
        "epochs": epochs,
        "calibrated_images_per_s": ips,
        "images_per_s": pre["images_per_second"],
        "train_s": train_s,
        "probe_s": time.perf_counter() - t,
        "linear_top1": metrics["linear_top1"],
        "knn_top1": metrics["knn_top1"],
        "final_loss": pre["final_loss"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "backbone": ctx.cfg.backbone.name,
    }


def _log():
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return logging.getLogger("bench")


ALL = [
    "rotation",
    "jigsaw",
    "relative-location",
    "inpainting",
    "simclr",
    "moco",
    "byol",
    "simsiam",
    "barlow-twins",
    "vicreg",
    "dino",
    "mae",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=30.0, help="pretraining wall-clock budget per method")
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--calibration-steps", type=int, default=30)
    ap.add_argument(
        "--images-per-second",
        type=float,
        help="skip the calibration: this training speed (images/s, "
        "measured by an earlier run's training loop) fixes the epochs",
    )
    ap.add_argument(
        "--update",
        metavar="LOG",
        help="start from the results in a previous run's log (stderr) and replace only the methods run now",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--workspace", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(
            json.dumps(
                run_one(
                    args.one,
                    args.budget_minutes * 60,
                    args.workspace,
                    args.store,
                    args.calibration_steps,
                    args.images_per_second,
                )
            )
        )
        return

    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.plugins.datasets.known import DEBIAN_FASHION_MNIST

    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-bench-"))
    ws = init_workspace(tmp / "ws")
    ingest(ws, os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST), "idx", "fashion-mnist", push=False)
    results, methods = [], [m for m in args.methods.split(",") if m]
    jobs = ["baselines"] + methods + (["baselines-vit"] if "mae" in methods else [])
    if args.update:
        results = previous_results(Path(args.update), keep_out=set(methods))
        jobs = [j for j in jobs if j not in {r["method"] for r in results}]
    for job in jobs:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            job,
            "--budget-minutes",
            str(args.budget_minutes),
            "--workspace",
            str(ws.root),
            "--store",
            str(tmp / "store"),
            "--calibration-steps",
            str(args.calibration_steps),
        ]
        if args.images_per_second and not job.startswith("baselines"):
            cmd += ["--images-per-second", str(args.images_per_second)]
        print(f"[bench] {job} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results.append({"method": job, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
            continue
        results.append({"method": job, **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(f"[bench] {job}: {results[-1]}", file=sys.stderr, flush=True)
    write_results(Path(args.out), results, args)


def previous_results(log: Path, keep_out: set[str]) -> list[dict]:
    import ast

    out = []
    for line in log.read_text().splitlines():
        if line.startswith("[bench] ") and ": {" in line:
            r = ast.literal_eval(line.split(": ", 1)[1])
            if r["method"] not in keep_out:
                out.append(r)
    return out


def write_results(path: Path, results: list[dict], args) -> None:
    base = next((r for r in results if r["method"] == "baselines"), {})
    vit = next((r for r in results if r["method"] == "baselines-vit"), {})
    rand = base.get("random_init", {}).get("linear_top1")
    lines = [
        "# Pretext methods on Fashion-MNIST, same budget",
        "",
        f"Command: `python bench/methods.py --budget-minutes {args.budget_minutes:g} --methods {args.methods}`"
        + (f" (updating the results logged in `{args.update}`)" if args.update else ""),
        "",
        f"Each method: {args.budget_minutes:g} min of pretraining wall clock on this machine (2 CPU cores; epochs fixed "
        "from a calibrated images/s, so the LR schedule is complete), backbone `convnet-s` (width 16) unless noted, "
        "batch 256, AdamW lr 2e-3, seed 0, published defaults of each method. Linear probe and kNN (k=200, T=0.07) "
        "on the frozen backbone: all 60k training labels, 10k test images, weight decay chosen on a validation "
        "split of the training labels.",
        "",
        "| method | family | backbone | epochs | images/s | train s | linear top-1 | kNN top-1 | vs random init | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(ALL)}
    for r in sorted(results, key=lambda r: order.get(r["method"], len(order))):
        if r["method"].startswith("baselines"):
            continue
        if "error" in r:
            lines.append(f"| {r['method']} | | | | | | failed: {r['error']} | | | |")
            continue
        ref = vit.get("random_init", {}).get("linear_top1") if r["method"] == "mae" else rand
        delta = f"{(r['linear_top1'] - ref) * 100:+.1f}" if ref is not None else "?"
        lines.append(
            f"| {r['method']} | {r['family']} | {r['backbone']} | {r['epochs']} | {r['images_per_s']:.0f} | "
            f"{r['train_s']:.0f} | {r['linear_top1']:.4f} | {r['knn_top1']:.4f} | {delta} | {r['peak_rss_mb']:.0f} |"
        )
    for label, b in (("convnet-s", base), ("timm/vit_tiny (patch 4)", vit)):
        for name, vals in b.items():
            if isinstance(vals, dict):
                lines.append(
                    f"| baseline: {name} | | {label if name != 'pixels' else '-'} | | | | "
                    f"{vals['linear_top1']:.4f} | {vals['knn_top1']:.4f} | | |"
                )
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
