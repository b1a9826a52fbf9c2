"""Does `pretextflow embed` stream? Peak RSS of embedding N synthetic 64 px colour JPEGs with a
convnet-s backbone (random weights: the memory does not depend on them), for growing N, measured in a
fresh process each, side by side in one run. Streaming means the peak stays flat as N grows.

    .venv/bin/python bench/embed_memory.py            # N = 1000, 4000, 16000
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pretextflow.core.config import BackboneConfig, DataConfig, RunConfig
from pretextflow.core.export.embed import embed
from pretextflow.core.export.extractor import FeatureExtractor
from pretextflow.core.registry.registry import get_registry
from pretextflow.core.training.model import build_backbone

folder, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = RunConfig(data=DataConfig(name="x"), backbone=BackboneConfig(name="convnet-s", kwargs={"width": 16, "depth": 4}))
bb = build_backbone(cfg, {"image_shape": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}, get_registry(), seed=0)
fe = FeatureExtractor(bb.eval(), in_chans=3, image_size=64, num_features=bb.num_features, info={})
t = time.perf_counter()
r = embed(fe, folder, out, batch_size=batch, device="cpu")
print(json.dumps({"count": r.count, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    for i in range(have, n):
        arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:06d}.jpg", quality=90)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 4000, 16000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"imgs{n}"
            _images(folder, n)
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(folder), str(Path(tmp) / f"f{n}.npy"), "256"],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["wall_seconds"] = time.perf_counter() - t
            rows.append(row)
    base = rows[0]
    print("| images | decoded MB | peak RSS MB | RSS vs smallest | images/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        decoded = r["count"] * 64 * 64 * 3 / 1e6
        print(
            f"| {r['count']} | {decoded:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x "
            f"| {r['count'] / r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
