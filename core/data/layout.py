"""Where each image of a new dataset version goes: the shard plan of an ingest, and writing it.

An ingest knows, for every image of the source, its key, split, label and content hash, and where
its pixels are: in a shard of the previous version (unchanged, or renamed: the same content under
a new key) or in the ingest's pool of freshly decoded chunks (new or modified images).
:func:`plan_shards` keeps the previous version's shards in their order, each image in its place
(a modified image is replaced in place, a deleted one dropped), and appends new images, sorted by
key, to the last shard while it is less than half full, then to new shards. A shard whose images
did not change is not rewritten (its files are hard-linked into the new version), so DVC stores
and pushes only the shards an ingest touched. An image's extent (its content's size on the canvas,
when the format stores it with its aspect ratio) travels with its pixels: from the previous shard
or from the chunk that decoded it. A version has extents (a ``.extents.npy`` per shard) when any
of its images does not fill its canvas. A first ingest of the same source always gives the
same shards, whoever decodes it and in whatever order the chunks come back."""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pretextflow.core.data.shards import (
    IndexRow,
    add_extents,
    read_index,
    shard_name,
    shard_paths,
    write_rows,
    write_shard,
)
from pretextflow.core.errors import DataError
from pretextflow.core.registry.contracts import DatasetArrays

DEFAULT_SHARD_MB = 256.0
WRITE_BLOCK = 256  # images gathered per write
OPEN_MAPS = 8  # decoded-chunk and shard files kept memory-mapped at once while writing a shard


@dataclass(frozen=True, slots=True)
class Pixels:
    """Where one image's pixels are: row ``row`` of the ``.npy`` at ``file``."""

    file: str
    row: int


@dataclass(slots=True)
class Row:
    """One image of the new version."""

    key: str
    label: int
    sha256: str
    pixels: Pixels
    extent: tuple[int, int] | None = None  # (h, w) of its content; None = it fills the canvas


@dataclass
class ShardPlan:
    """One shard of the new version; ``same_images``: its images file is the previous one's."""

    name: str
    split: str
    rows: list[Row]
    previous: dict[str, Any] | None = None  # the previous version's record of this shard, if any
    same_images: bool = False
    kept: bool = False  # the previous version's shard file for file (labels and keys too): nothing written


@dataclass
class Previous:
    """The version being updated: its meta, where its shards are, and each image's place."""

    meta: dict[str, Any]
    root: Path
    places: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)  # key -> shard, pos, label, sha
    by_shard: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)  # shard -> key, pos, sha
    images_files: dict[str, str] = field(default_factory=dict)  # shard -> its images.npy (asked once per image)
    extents: dict[str, np.ndarray] = field(default_factory=dict)  # shard -> its extents (a version with extents)

    def images_file(self, shard: str) -> str:
        return self.images_files[shard]

    @property
    def has_extents(self) -> bool:
        return bool(self.meta.get("extents"))

    def extent(self, shard: str, pos: int) -> tuple[int, int] | None:
        """The extent of the image at ``pos`` of ``shard``; None when it fills the canvas."""
        arr = self.extents.get(shard)
        if arr is None:
            return None
        h, w = int(arr[pos, 0]), int(arr[pos, 1])
        return None if [h, w] == list(self.meta["image_shape"][1:]) else (h, w)


@dataclass
class Changes:
    """What an ingest changed, counted in images and shards."""

    added: int = 0
    removed: int = 0
    modified: int = 0
    renamed: int = 0
    relabelled: int = 0
    shards_written: int = 0
    shards_kept: int = 0

    def describe(self) -> str:
        moved = f", {self.renamed:,} renamed" if self.renamed else ""
        relab = f", {self.relabelled:,} relabelled" if self.relabelled else ""
        return (
            f"+{self.added:,} / -{self.removed:,} / ~{self.modified:,} images{moved}{relab}, "
            f"{self.shards_written} shard{'s' * (self.shards_written != 1)} written, "
            f"{self.shards_kept} unchanged"
        )


def capacity(shard_mb: float, image_shape: tuple[int, ...]) -> int:
    """Images per shard: as many as fit in ``shard_mb`` MiB (at least one)."""
    return max(1, int(shard_mb * 2**20) // int(np.prod(image_shape)))


def load_previous(root: Path, meta: dict[str, Any]) -> Previous:
    """The previous schema-2 version at ``root`` (its shards' indexes read; pixels left on disk)."""
    prev = Previous(meta, root)
    for rec in meta["shards"]:
        rows = read_index(shard_paths(root, rec["name"])["index"].read_bytes(), f"shard {rec['name']}")
        prev.images_files[rec["name"]] = str(shard_paths(root, rec["name"])["images"])
        if prev.has_extents:
            prev.extents[rec["name"]] = _read_extents(shard_paths(root, rec["name"])["extents"], len(rows))
        prev.by_shard[rec["name"]] = [(r.key, pos, r.sha256) for pos, r in enumerate(rows)]
        for pos, r in enumerate(rows):
            prev.places[r.key] = (rec["name"], pos, r.label, r.sha256)
    return prev


def _read_extents(path: Path, count: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise DataError(f"{path.name} is not a plain array or is truncated ({exc})") from None
    if arr.dtype != np.int32 or arr.shape != (count, 2):
        raise DataError(f"{path.name} is {arr.dtype} {arr.shape}, expected int32 ({count}, 2)")
    return arr


def plan_shards(
    prev: Previous | None,
    entries: dict[str, list[tuple[str, int]]],
    shas: dict[str, str],
    pool: dict[str, Pixels],
    cap: int,
    pool_extents: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[ShardPlan], Changes]:
    """The shards of the new version. ``entries``: split -> (key, label), sorted by key; ``shas``:
    key -> content hash; ``pool``: key -> pixels of the images decoded by this ingest;
    ``pool_extents``: key -> extent of those of them that do not fill their canvas."""
    changes, plans = Changes(), []
    for split, items in entries.items():
        plans += _plan_split(prev, split, items, shas, (pool, pool_extents or {}), cap, changes)
    extents = has_extents(plans)
    for plan in plans:
        plan.kept = _kept(plan, prev, extents)
    changes.shards_kept = sum(p.kept for p in plans)
    changes.shards_written = len(plans) - changes.shards_kept
    return plans, changes


def _kept(plan: ShardPlan, prev: Previous | None, extents: bool) -> bool:
    """Whether the planned shard is the previous version's, file for file (``extents``: the new
    version has extents; the previous one must have them too, or not, alike)."""
    if prev is None or plan.previous is None or not plan.same_images or prev.has_extents != extents:
        return False
    old = prev.by_shard[plan.name]
    return len(old) == len(plan.rows) and all(
        r.key == k and r.sha256 == sha and r.label == prev.places[k][2]
        for r, (k, _pos, sha) in zip(plan.rows, old, strict=True)
    )


def has_extents(plans: list[ShardPlan]) -> bool:
    """Whether the planned version has extents: an image of it does not fill its canvas."""
    return any(r.extent is not None for p in plans for r in p.rows)


def _plan_split(
    prev: Previous | None,
    split: str,
    items: list[tuple[str, int]],
    shas: dict[str, str],
    decoded: tuple[dict[str, Pixels], dict[str, tuple[int, int]]],
    cap: int,
    changes: Changes,
) -> list[ShardPlan]:
    pool, pool_extents = decoded
    records = [r for r in (prev.meta["shards"] if prev else []) if r["split"] == split]
    names = {r["name"] for r in records}  # asked once per image: a set, not a scan of the records
    slots: dict[tuple[str, int], Row] = {}
    fresh: list[tuple[str, int]] = []
    for key, label in items:  # 1. the same key in the same split: kept, or modified in place
        place = prev.places.get(key) if prev else None
        if place is None or place[0] not in names:
            fresh.append((key, label))
            continue
        shard, pos, old_label, old_sha = place
        same = shas[key] == old_sha
        changes.modified += not same
        changes.relabelled += same and label != old_label
        if same:  # the pixels (and extent) stay where they are
            slots[(shard, pos)] = Row(
                key, label, shas[key], Pixels(prev.images_file(shard), pos), prev.extent(shard, pos)
            )
        else:
            slots[(shard, pos)] = Row(key, label, shas[key], pool[key], pool_extents.get(key))
    gone: dict[str, deque] = defaultdict(deque)  # 2. content of removed keys, for renames
    if prev:
        for rec in records:
            for _key, pos, sha in prev.by_shard[rec["name"]]:
                if (rec["name"], pos) not in slots:
                    gone[sha].append((rec["name"], pos))
    new_rows = []
    for key, label in fresh:
        if gone.get(shas[key]):
            shard, pos = gone[shas[key]].popleft()
            slots[(shard, pos)] = Row(
                key, label, shas[key], Pixels(prev.images_file(shard), pos), prev.extent(shard, pos)
            )
            changes.renamed += 1
        else:
            new_rows.append(Row(key, label, shas[key], pool[key], pool_extents.get(key)))
    changes.removed += sum(len(q) for q in gone.values())
    changes.added += len(new_rows)
    return _assemble(prev, split, records, slots, new_rows, cap)


def _assemble(
    prev: Previous | None,
    split: str,
    records: list[dict],
    slots: dict[tuple[str, int], Row],
    new_rows: list[Row],
    cap: int,
) -> list[ShardPlan]:
    plans = []
    for rec in records:
        rows = [slots[(rec["name"], pos)] for pos in range(rec["count"]) if (rec["name"], pos) in slots]
        if rows:
            same = len(rows) == rec["count"] and all(
                r.pixels == Pixels(prev.images_file(rec["name"]), pos) for pos, r in enumerate(rows)
            )
            plans.append(ShardPlan(rec["name"], split, rows, rec, same))
    seq = 1 + max((int(r["name"].rsplit("-", 1)[1]) for r in records), default=-1)
    if plans and new_rows and len(plans[-1].rows) < cap // 2:  # top up a small last shard
        last = plans[-1]
        room = cap - len(last.rows)
        last.rows, new_rows, last.same_images = last.rows + new_rows[:room], new_rows[room:], False
    for start in range(0, len(new_rows), cap):
        plans.append(ShardPlan(shard_name(split, seq), split, new_rows[start : start + cap]))
        seq += 1
    return plans


def write_plan(
    root: Path, plan: ShardPlan, image_shape: tuple[int, ...], prev: Previous | None, extents: bool = False
) -> dict[str, Any]:
    """Write one planned shard under ``root`` (a staging folder); returns its meta.json record.
    Files of the previous version that stay as they are are hard-linked, not copied. ``extents``:
    the version has extents (every shard gets its ``extents.npy``)."""
    rows = [IndexRow(r.key, r.label, r.sha256) for r in plan.rows]
    ext = _extents(plan.rows, image_shape) if extents else None
    if plan.same_images and plan.previous is not None and prev is not None:
        old = shard_paths(prev.root, plan.name)
        new = shard_paths(root, plan.name)
        _link(old["images"], new["images"])
        if plan.kept:
            for part in ("labels", "index", "extents") if extents else ("labels", "index"):
                _link(old[part], new[part])
            return dict(plan.previous)
        image_fields = {
            k: plan.previous[k]
            for k in ("images_md5", "images_bytes", "pixel_sum", "pixel_sumsq", "pixels_per_channel")
        }
        record = {
            "name": plan.name,
            "split": plan.split,
            **image_fields,
            **write_rows(root, plan.name, rows, plan.previous["images_bytes"]),
        }
        return add_extents(root, record, ext)
    return write_shard(root, plan.name, plan.split, image_shape, _gather(plan.rows, image_shape), rows, ext)


def _extents(rows: list[Row], image_shape: tuple[int, ...]) -> np.ndarray:
    """The rows' extents, int32 (n, 2); an image that fills its canvas is (H, W)."""
    full = (int(image_shape[1]), int(image_shape[2]))
    return np.asarray([r.extent or full for r in rows], dtype=np.int32).reshape(len(rows), 2)


def _gather(rows: list[Row], image_shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """The rows' pixels, block by block, from the memory-mapped files that hold them. At most
    ``OPEN_MAPS`` files stay mapped (rows come mostly in file order): the pages of a file already
    copied leave this process's RSS when it is unmapped, so memory does not grow with the shard."""
    opened: OrderedDict[str, np.ndarray] = OrderedDict()
    for start in range(0, len(rows), WRITE_BLOCK):
        block = rows[start : start + WRITE_BLOCK]
        out = np.empty((len(block), *image_shape), np.uint8)
        for i, r in enumerate(block):
            arr = opened.get(r.pixels.file)
            if arr is None:
                arr = opened[r.pixels.file] = np.load(r.pixels.file, mmap_mode="r", allow_pickle=False)
                if len(opened) > OPEN_MAPS:
                    opened.popitem(last=False)  # the least recently opened: unmapped once dropped
            out[i] = arr[r.pixels.row]
        yield out


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed: a copy is as good, only slower
        shutil.copyfile(src, dst)


def write_arrays(
    data_dir: Path, name: str, fmt: str, arrays: DatasetArrays, shard_mb: float = DEFAULT_SHARD_MB
) -> dict[str, Any]:
    """A schema-2 dataset folder ``data_dir/name`` from in-memory (or memory-mapped) arrays, as a
    first ingest of them would write it (keys ``train/0000000``...); returns its meta.json."""
    return write_arrays_into(Path(data_dir) / name, name, fmt, arrays, shard_mb)


def write_arrays_into(
    root: Path, name: str, fmt: str, arrays: DatasetArrays, shard_mb: float = DEFAULT_SHARD_MB
) -> dict[str, Any]:
    """:func:`write_arrays` into the folder ``root`` (a staging folder, say)."""
    import hashlib

    from pretextflow.core.data.dataset import build_meta, meta_bytes

    shape = tuple(int(x) for x in arrays.train_images.shape[1:])
    cap, records = capacity(shard_mb, shape), []
    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        for seq, start in enumerate(range(0, len(images), cap)):
            part = images[start : start + cap]
            rows = [
                IndexRow(
                    f"{split}/{start + i:07d}",
                    int(labels[start + i]),
                    hashlib.sha256(np.ascontiguousarray(part[i]).tobytes()).hexdigest(),
                )
                for i in range(len(part))
            ]
            chunks = (part[i : i + WRITE_BLOCK] for i in range(0, len(part), WRITE_BLOCK))
            records.append(write_shard(root, shard_name(split, seq), split, shape, chunks, rows))
    meta = build_meta(name, fmt, list(arrays.class_names), list(shape), records)
    (root / "meta.json").write_bytes(meta_bytes(meta))
    return meta
