"""Ingest: source (any fsspec URI) -> dataset-format plugin -> canonical ``data/<name>/`` ->
``dvc add data`` + ``dvc push``.

Atomic from the outside: the new files are written beside ``data/``, swapped in with renames,
and if tracking or pushing fails the previous ``data/<name>`` and ``data.dvc`` are put back."""
from __future__ import annotations

import logging
import uuid
from typing import Any

import fsspec

from .config import validate_plugin_params
from .data import Dataset, check_name, encode_dataset, load_dataset, validate_arrays
from .plugins import Registry, get_registry
from .versioning import track_and_push, workspace_lock
from .workspace import Workspace

log = logging.getLogger("pretextflow.ingest")


def ingest(ws: Workspace, source: str, fmt: str, name: str, options: dict[str, Any] | None = None,
           storage_options: dict[str, Any] | None = None, push: bool = True, registry: Registry | None = None,
           logger: logging.Logger | logging.LoggerAdapter = log) -> dict[str, Any]:
    ws.require_initialised()
    registry = registry or get_registry()
    check_name(name)
    fmt_cls = registry.dataset_format(fmt)
    opts = validate_plugin_params(fmt_cls.Options, options or {}, "options")
    logger.info("ingest %s: reading %s as %s", name, source, fmt)
    arrays = fmt_cls().read(source, opts, storage_options or {})
    validate_arrays(arrays, source)
    files = encode_dataset(name, fmt, arrays)

    fs = fsspec.filesystem("file")
    target = ws.data_dir / name
    with workspace_lock(ws, f"ingest {name}"):
        changed = not all(fs.exists(str(target / f)) and fs.cat_file(str(target / f)) == b
                          for f, b in files.items())
        backup_dvc = ws.data_dvc.read_bytes() if ws.data_dvc.exists() else None
        staging = ws.root / ".pretextflow-tmp" / f"{name}-{uuid.uuid4().hex[:8]}"
        old = staging.with_name(staging.name + "-old")
        if changed:
            fs.makedirs(str(staging), exist_ok=True)
            for fname, data in sorted(files.items()):
                fs.pipe_file(str(staging / fname), data)
            fs.makedirs(str(ws.data_dir), exist_ok=True)
            if target.exists():
                target.rename(old)
            staging.rename(target)
        try:
            version = track_and_push(ws, push=push)
        except BaseException:
            if changed:  # put the previous version back: data/ and data.dvc as they were
                fs.rm(str(target), recursive=True)
                if old.exists():
                    old.rename(target)
                if backup_dvc is None:
                    ws.data_dvc.unlink(missing_ok=True)
                else:
                    ws.data_dvc.write_bytes(backup_dvc)
            raise
        finally:
            if old.exists():
                fs.rm(str(old), recursive=True)
    dataset = load_dataset(str(ws.data_dir), name)
    logger.info("ingest %s: %s; data version %s (%d train / %d test images, %s)", name,
                "written" if changed else "unchanged", version, dataset.meta["counts"]["train"],
                dataset.meta["counts"]["test"], "pushed" if push else "not pushed")
    return summary(dataset, version, changed)


def summary(dataset: Dataset, version: str, changed: bool | None = None) -> dict[str, Any]:
    return {"name": dataset.name, "data_version": version, "fingerprint": dataset.fingerprint,
            "changed": changed, "counts": dataset.meta["counts"], "image_shape": dataset.meta["image_shape"],
            "format": dataset.meta["format"]}
