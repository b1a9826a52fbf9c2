"""Stage keys: a short hash of everything that determines a stage's output.

Keys hash validated configs, dataset fingerprints (md5-derived) and upstream keys, never
tensors or pickles (their bytes are not stable across processes)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Bump a stage's version when its code changes what it computes: old artifacts stop matching.
STAGE_VERSIONS = {"pretrain": 1, "freeze": 1, "probe": 2, "features": 1, "supervised": 1}


def stage_key(stage: str, payload: dict[str, Any]) -> str:
    blob = json.dumps(
        {"stage": stage, "stage_version": STAGE_VERSIONS.get(stage, 1), **payload},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def source_digest(*objects: Any) -> str:
    """A hash of the source files that define ``objects`` (modules, classes or functions): the
    code version of a stage. Editing the code a stage runs changes its key, so it is recomputed;
    editing anything else (a README, another stage) does not."""
    import inspect
    import sys

    files = set()
    for obj in objects:
        module = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", ""), None)
        path = getattr(module, "__file__", None)
        if path:
            files.add(path)
    h = hashlib.sha256()
    for path in sorted(files):
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]
