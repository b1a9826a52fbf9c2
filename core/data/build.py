"""Building a dataset's next version from its source, before anything in ``data/`` changes: scan
the source, read again only what changed (``core.data.incremental``), decode it in parallel
(``core.data.parallel``) into a private pool, with the extents the format gives, plan the shards
(``core.data.layout``). The
:class:`Build` it returns knows whether anything changed and writes the version into a staging
folder; ``core.data.ingest`` swaps that in under the workspace lock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pretextflow.core.data import parallel
from pretextflow.core.data.dataset import build_meta, meta_bytes
from pretextflow.core.data.decode import SIZE_FIX, check_catalog
from pretextflow.core.data.incremental import previous_version, read_stamps, split_known, stamps_path, version_digest
from pretextflow.core.data.layout import (
    Changes,
    Pixels,
    Previous,
    ShardPlan,
    capacity,
    has_extents,
    plan_shards,
    write_plan,
)
from pretextflow.core.data.parallel import ReadPlan, decode_chunks
from pretextflow.core.errors import DataError
from pretextflow.core.registry.contracts import DatasetFormat, SourceCatalog, SourceEntry
from pretextflow.core.security.redaction import redact

if TYPE_CHECKING:
    from pretextflow.core.data.ingest import IngestSettings
    from pretextflow.core.workspace import Workspace


@dataclass
class Build:
    """A new version, planned and decoded, not yet written."""

    name: str
    fmt: str
    catalog: SourceCatalog
    entries: list[SourceEntry]
    shas: dict[str, str]
    plans: list[ShardPlan]
    prev: Previous | None
    prev_meta_bytes: bytes | None
    image_shape: tuple[int, ...]
    options: dict[str, Any]
    changes: Changes
    timing: dict[str, float] = field(default_factory=dict)
    progress: Callable[[str, int, int], None] | None = None  # (part, done, total): IngestSettings.progress

    @property
    def unchanged(self) -> bool:
        """Every shard is the previous version's and so is the meta.json."""
        if self.prev is None or not all(p.kept for p in self.plans) or len(self.plans) != len(self.prev.meta["shards"]):
            return False
        return meta_bytes(self._meta([p.previous for p in self.plans])) == self.prev_meta_bytes

    @property
    def has_extents(self) -> bool:
        """Whether the version stores its images' extents (one of them does not fill its canvas)."""
        return has_extents(self.plans)

    @property
    def bytes_to_write(self) -> int:
        return sum(len(p.rows) for p in self.plans if not p.kept) * int(np.prod(self.image_shape))

    def _meta(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """meta.json: what the version holds, never how it came about (so the same images under
        the same layout are the same version, however they were ingested)."""
        meta = build_meta(
            self.name, self.fmt, list(self.catalog.class_names), list(self.image_shape), records, self.has_extents
        )
        return {**meta, "options": self.options}

    def write(self, staging: Path) -> None:
        """Write the whole version into ``staging`` (unchanged shards hard-linked)."""
        t0 = time.perf_counter()
        extents = self.has_extents
        records = []
        for i, plan in enumerate(self.plans, 1):
            records.append(write_plan(staging, plan, self.image_shape, self.prev, extents))
            if self.progress is not None:
                self.progress("shards", i, len(self.plans))
        (staging / "meta.json").write_bytes(meta_bytes(self._meta(records)))
        self.timing["write_s"] = round(time.perf_counter() - t0, 3)


def prepare_version(
    ws: Workspace,
    name: str,
    fmt: str,
    fmt_cls: type[DatasetFormat],
    opts: DatasetFormat.Options,
    src: str,
    storage_options: dict[str, Any],
    settings: IngestSettings,
    pool: Path,
    logger: logging.Logger | logging.LoggerAdapter,
) -> Build:
    t0 = time.perf_counter()
    instance = fmt_cls()
    catalog = instance.scan(src, opts, storage_options)
    check_catalog(catalog, redact(src))
    entries = sorted(catalog.entries, key=lambda e: (e.split, e.key))
    options = {k: v for k, v in opts.model_dump(mode="json").items() if k not in fmt_cls.io_options}
    target = ws.data_dir / name
    prev_meta = (target / "meta.json").read_bytes() if (target / "meta.json").is_file() else None
    prev = previous_version(target, prev_meta, fmt, options, logger)
    stamps = read_stamps(stamps_path(ws.root, name), version_digest(prev_meta)) if prev and prev_meta else {}
    to_read, shas = split_known(entries, prev, stamps)
    t_scan = time.perf_counter()
    logger.info("ingest %s: %d images in the source, %d to read", name, len(entries), len(to_read))
    read = ReadPlan(
        fmt_cls,
        instance,
        src,
        {**opts.model_dump(mode="json"), **catalog.read_options},
        storage_options,
        settings.workers,
        settings.runner,
        settings.dask_address,
    )
    shape = tuple(prev.meta["image_shape"]) if prev else None
    shape, pool_pixels, pool_extents, cpu = _decode(read, to_read, pool, shas, shape, settings.progress)
    t_read = time.perf_counter()
    by_split: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for e in entries:
        by_split[e.split].append((e.key, e.label))
    plans, changes = plan_shards(prev, by_split, shas, pool_pixels, capacity(settings.shard_mb, shape), pool_extents)
    timing = {
        "scan_s": round(t_scan - t0, 3),
        "decode_s": round(t_read - t_scan, 3),
        "decode_cpu_s": round(cpu, 3),
        "images_read": len(to_read),
    }
    build = Build(name, fmt, catalog, entries, shas, plans, prev, prev_meta, shape, options, changes, timing)
    build.progress = settings.progress
    return build


def _decode(
    read: ReadPlan,
    to_read: list[SourceEntry],
    pool: Path,
    shas: dict[str, str],
    shape: tuple[int, ...] | None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[tuple[int, ...] | None, dict[str, Pixels], dict[str, tuple[int, int]], float]:
    """Decode ``to_read`` into the pool; fills ``shas``; returns the image shape, where each
    decoded image's pixels are, the extents of those that do not fill their canvas, and the
    decode seconds summed over the workers. ``progress("decode", images done, to read)`` after
    each chunk."""
    pool_pixels: dict[str, Pixels] = {}
    pool_extents: dict[str, tuple[int, int]] = {}
    cpu = 0.0
    decoded = 0
    for res in decode_chunks(read, to_read, pool):
        size = parallel.CHUNK  # looked up at run time, as decode_chunks does
        chunk = to_read[res.index * size : (res.index + 1) * size]
        if shape is not None and res.shape != shape and chunk:
            raise DataError(
                f"{chunk[0].key}: size {res.shape} differs from the other images' {shape}. {SIZE_FIX} "
                f"(or channels=1|3)."
            )
        shape = res.shape if chunk else shape
        cpu += res.seconds
        for j, e in enumerate(chunk):
            shas[e.key] = res.sha256[j]
            pool_pixels[e.key] = Pixels(res.path, j)
            extent = tuple(int(v) for v in res.extents[j]) if res.extents is not None else None
            if extent is not None and extent != tuple(res.shape[1:]):
                pool_extents[e.key] = extent
        decoded += len(chunk)
        if progress is not None:
            progress("decode", decoded, len(to_read))
    return shape, pool_pixels, pool_extents, cpu
