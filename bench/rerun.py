"""Wall time of a fully cached rerun vs the first run of the same pipeline (issue 5: >= 20x).

Both runs go through the real Prefect flow (`pretextflow-pipeline`) in one process, on a fresh
workspace and artifact store; the second changes nothing, so every stage must come from the
store (the data is re-ingested and found unchanged; the report is written anew).

    python bench/rerun.py                                   # digits, about a minute
    python bench/rerun.py --config configs/fashion_mnist.yaml --set data.source=/usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "digits_smoke.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pretextflow-bench-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from pretextflow.core.config import load_config
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.core.store import ArtifactStore
    from pretextflow.flows.pipeline import pipeline_flow

    ws = init_workspace(Path(tempfile.mkdtemp(prefix="pretextflow-bench-")) / "ws")
    cfg = load_config(args.config, args.overrides).model_dump(mode="json")
    pipeline_flow(
        load_config(
            REPO / "configs" / "digits_smoke.yaml",
            ["train.epochs=1", "store.uri=memory://warm", "probe.label_fractions=[1.0]", "probe.baselines=[]"],
        ).model_dump(mode="json"),
        str(ws.root),
    )  # warm-up: Prefect's temporary server and imports, not part of either timing
    times, stages = [], []
    for _ in range(2):
        t = time.perf_counter()
        out = pipeline_flow(cfg, str(ws.root))
        times.append(time.perf_counter() - t)
        stages.append(ArtifactStore(out["run_uri"]).read_json("manifest.json")["stages"])
    print(f"config: {args.config} {' '.join(args.overrides)}")
    print("| run | wall s | " + " | ".join(f"{s} s" for s in stages[0]) + " |")
    print("|---|---|" + "---|" * len(stages[0]))
    for name, t, st in zip(("first", "cached rerun"), times, stages, strict=False):
        print(
            f"| {name} | {t:.1f} | "
            + " | ".join(f"{v['seconds']:.1f}{' (cached)' if v.get('cached') else ''}" for v in st.values())
            + " |"
        )
    print(f"cached rerun is {times[0] / times[1]:.1f}x faster than the first run")
    assert all(stages[1][s]["cached"] for s in ("pretrain", "freeze", "probe")), "the rerun recomputed a stage"


if __name__ == "__main__":
    main()
