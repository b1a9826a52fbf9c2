"""Is the supervised-from-scratch baseline trained to convergence? Its default budget vs 2x and 4x.

For each labelled fraction, the default recipe (``probe.supervised`` in configs/fashion_mnist.yaml)
is trained with 1x, 2x and 4x its number of steps, side by side in one run. Accuracy is measured on
10,000 *training* images that are outside every labelled subset (never on the test split), so
this check cannot leak into the numbers the report shows. If the baseline had been under-trained,
the longer budgets would score higher.

    python bench/supervised_budget.py                       # 1% and 10% (about 6 min on 2 cores)
    python bench/supervised_budget.py --fractions 0.01,0.1,1.0 --multipliers 1,2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0.01,0.1")
    ap.add_argument("--multipliers", default="1,2,4")
    ap.add_argument("--held-out", type=int, default=10000)
    args = ap.parse_args()

    import torch

    from pretextflow.core.config import load_config
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.core.evaluation.probe import label_subsets
    from pretextflow.core.evaluation.supervised import schedule, train_supervised
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.training.model import configure_runtime
    from pretextflow.plugins.datasets.known import DEBIAN_FASHION_MNIST

    ws = init_workspace(Path(tempfile.mkdtemp(prefix="pretextflow-bench-")) / "ws")
    ingest(ws, os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST), "idx", "fashion-mnist", push=False)
    ds = load_dataset(str(ws.data_dir), "fashion-mnist")
    cfg = load_config(REPO / "configs" / "fashion_mnist.yaml", ["data.source=null"])
    fractions = [float(f) for f in args.fractions.split(",")]
    x, y = ds.train_images, np.asarray(ds.train_labels)
    subsets = label_subsets(y, fractions, cfg.seed)  # exactly the subsets the probe stage uses
    # held-out: training images in none of the subsets below 100% (seeded choice)
    used = np.unique(np.concatenate([subsets[f] for f in fractions if f < 1] or [np.array([], int)]))
    rest = np.setdiff1d(np.arange(len(y)), used)
    held = np.sort(np.random.default_rng(123).choice(rest, size=min(args.held_out, len(rest)), replace=False))

    print(f"recipe: {cfg.probe.supervised.model_dump()}")
    print("| fraction | labels | budget | steps | train top-1 | held-out top-1 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for f in fractions:
        idx = subsets[f] if f < 1 else np.setdiff1d(np.arange(len(y)), held)  # 100%: all but the held-out images
        for mult in (int(m) for m in args.multipliers.split(",")):
            sc = cfg.probe.supervised
            _, _, steps = schedule(len(idx), sc)
            c = cfg.model_copy(
                update={
                    "probe": cfg.probe.model_copy(
                        update={
                            "supervised": sc.model_copy(
                                update={"epochs": sc.epochs * mult, "min_steps": sc.min_steps * mult}
                            )
                        }
                    )
                }
            )
            configure_runtime(cfg.seed, torch.device("cpu"), None)
            t = time.perf_counter()
            r = train_supervised(c, ds.meta, get_registry(), x[idx], y[idx], x[held], y[held], seed=cfg.seed)
            print(
                f"| {f:g} | {len(idx)} | {mult}x | {r['steps']} | {r['train_top1']:.4f} | {r['top1']:.4f} | "
                f"{time.perf_counter() - t:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
