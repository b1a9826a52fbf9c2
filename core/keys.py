"""Stage keys: a short hash of everything that determines a stage's output.

Keys hash validated configs, dataset fingerprints (md5-derived) and upstream keys, never
tensors or pickles (their bytes are not stable across processes)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

# Bump a stage's version when its code changes what it computes: old artifacts stop matching.
STAGE_VERSIONS = {"pretrain": 1, "freeze": 1, "probe": 1}


def stage_key(stage: str, payload: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "stage_version": STAGE_VERSIONS.get(stage, 1), **payload},
                      sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
