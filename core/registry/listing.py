"""`pretextflow plugins` without importing torch: the listing is cached, keyed by everything
that can change it.

Building the registry imports every plugin module, and they import torch (~1.5 s on a small
machine). The listing (names, kinds, families, packages, versions) only changes when an installed
package, an entry point, a plugin's source file or the allow/block environment changes, so the
cache key is a fingerprint of exactly those, computed from package metadata and file stats alone:

- pretextflow's version and the (path, size, mtime) of every .py file of its core and plugins;
- every ``pretextflow`` entry point (name, value) with its distribution's name, version and
  RECORD (the hashes pip wrote); for an editable install, the stats of its source files instead;
- ``PRETEXTFLOW_LOAD_PLUGINS`` / ``PRETEXTFLOW_BLOCK_PLUGINS``.

A listing with skipped (broken) plugins is never cached: it is recomputed until fixed. The cache
lives in ``$PRETEXTFLOW_CACHE_DIR`` (default ``$XDG_CACHE_HOME/pretextflow`` or
``~/.cache/pretextflow``); a missing or unwritable cache only costs the slow path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "pretextflow"  # = core.plugins.ENTRY_POINT_GROUP (not imported: that imports torch)
_ENV = ("PRETEXTFLOW_LOAD_PLUGINS", "PRETEXTFLOW_BLOCK_PLUGINS")
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", "__pycache__", ".tox", ".eggs"}
_MAX_FILES = 5000


def cache_dir() -> Path:
    if os.environ.get("PRETEXTFLOW_CACHE_DIR"):
        return Path(os.environ["PRETEXTFLOW_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pretextflow"


def _tree_stats(root: Path, h: hashlib._Hash) -> None:
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            st = os.stat(os.path.join(dirpath, name))
            h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            count += 1
            if count > _MAX_FILES:
                return


def _dist_fingerprint(dist: metadata.Distribution, h: hashlib._Hash) -> None:
    h.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    direct = dist.read_text("direct_url.json")
    if direct:
        info = json.loads(direct)
        if info.get("dir_info", {}).get("editable") and info.get("url", "").startswith("file://"):
            _tree_stats(Path(info["url"][len("file://") :]), h)
            return
    h.update((dist.read_text("RECORD") or "").encode())


def fingerprint() -> str:
    from pretextflow.core.version import __version__

    h = hashlib.sha256(f"pretextflow {__version__}\n".encode())
    for package in ("pretextflow.core", "pretextflow.plugins"):
        spec = importlib.util.find_spec(package)  # imports `pretextflow` only, not the plugins
        for location in (spec.submodule_search_locations or []) if spec else []:
            _tree_stats(Path(location), h)
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        h.update(f"ep {ep.name}={ep.value}\n".encode())
        if ep.dist is not None:
            _dist_fingerprint(ep.dist, h)
    for var in _ENV:
        h.update(f"{var}={os.environ.get(var)!r}\n".encode())
    return h.hexdigest()[:24]


def listing(refresh: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, str]], bool]:
    """(rows, skipped, from_cache). Rows are ``Registry.as_rows()``; skipped are dicts with
    plugin, package, reason."""
    key = fingerprint()
    path = cache_dir() / f"plugins-{key}.json"
    if not refresh:
        try:
            data = json.loads(path.read_text())
            return data["rows"], [], True
        except (OSError, ValueError, KeyError):
            pass
    from pretextflow.core.registry.registry import get_registry

    registry = get_registry()
    rows = registry.as_rows()
    skipped = [{"plugin": s.plugin, "package": s.package, "reason": s.reason} for s in registry.skipped]
    if not skipped:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.glob("plugins-*.json"):
                old.unlink(missing_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"rows": rows}))
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
        except OSError:
            pass
    return rows, skipped, False
