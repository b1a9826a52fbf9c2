"""Shard files of the canonical dataset (schema 2) and the array view over them.

One shard is three files under ``data/<name>/shards/``, named by its split and a sequence number:

  train-00000.images.npy   uint8 (n, C, H, W), a plain ``.npy`` (memory-mappable, no pickle)
  train-00000.labels.npy   int64 (n,), -1 = unlabeled
  train-00000.index.csv    key,label,sha256 per image: where it came from and its content hash

and, in a dataset with extents (images stored with their aspect ratio, centred on a zero square
canvas: the image-file formats' ``max_side``), a fourth:

  train-00000.extents.npy  int32 (n, 2): each image's content height and width, (h, w)

Written in one pass with a fixed ``.npy`` header and no timestamps, so the same images give the
same bytes (hence the same DVC md5) whoever writes them. :class:`ShardedArray` reads many shards as
one ``(N, C, H, W)`` array: indexing gathers from the memory-mapped shards, nothing else is loaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretextflow.core.errors import DataError

SHARD_DIR = "shards"
SUFFIXES = {"images": ".images.npy", "labels": ".labels.npy", "index": ".index.csv", "extents": ".extents.npy"}
INDEX_HEADER = ("key", "label", "sha256")


@dataclass(frozen=True)
class IndexRow:
    """One image of a shard: its source key, label and content hash."""

    key: str
    label: int
    sha256: str


def shard_name(split: str, seq: int) -> str:
    return f"{split}-{seq:05d}"


def shard_paths(root: Path, name: str) -> dict[str, Path]:
    return {part: root / SHARD_DIR / f"{name}{suffix}" for part, suffix in SUFFIXES.items()}


class _HashingWriter:
    """A file opened for writing that keeps the md5 of what went in."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.md5.update(data)
        self.size += len(data)

    def close(self) -> str:
        self.f.close()
        return self.md5.hexdigest()


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def write_shard(
    root: Path,
    name: str,
    split: str,
    image_shape: Sequence[int],
    chunks: Iterable[np.ndarray],
    rows: Sequence[IndexRow],
    extents: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write one shard from image chunks (uint8, each (k, C, H, W), together ``len(rows)`` images in
    the rows' order) and, when given, the images' extents (``(len(rows), 2)``); returns its
    meta.json record (count, md5s, bytes, label counts, pixel sums)."""
    images = write_images(root, name, image_shape, chunks, len(rows))
    record = {"name": name, "split": split, **images, **write_rows(root, name, rows, images["images_bytes"])}
    return add_extents(root, record, extents)


def add_extents(root: Path, record: dict[str, Any], extents: np.ndarray | None) -> dict[str, Any]:
    """``record`` with the shard's ``extents.npy`` written (its md5 and size added); ``record``
    itself when there are no extents."""
    if extents is None:
        return record
    arr = np.ascontiguousarray(extents, dtype=np.int32)
    if arr.shape != (record["count"], 2):
        raise RuntimeError(f"shard {record['name']}: extents of shape {arr.shape} for {record['count']} images")
    data = _npy_header(arr.dtype, arr.shape) + arr.tobytes()
    path = shard_paths(root, record["name"])["extents"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {**record, "extents_md5": hashlib.md5(data).hexdigest(), "bytes": record["bytes"] + len(data)}


def write_images(
    root: Path, name: str, image_shape: Sequence[int], chunks: Iterable[np.ndarray], count: int
) -> dict[str, Any]:
    """The shard's ``images.npy``, streamed chunk by chunk; its md5, size and exact pixel sums."""
    path = shard_paths(root, name)["images"]
    path.parent.mkdir(parents=True, exist_ok=True)
    c = int(image_shape[0])
    sums, sumsq, done = np.zeros(c, np.int64), np.zeros(c, np.int64), 0
    out = _HashingWriter(path)
    try:
        out.write(_npy_header(np.dtype(np.uint8), (count, *map(int, image_shape))))
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
            out.write(memoryview(chunk).cast("B"))
            flat = chunk.transpose(1, 0, 2, 3).reshape(c, -1)
            sums += flat.sum(axis=1, dtype=np.int64)
            sumsq += np.einsum("ij,ij->i", flat, flat, dtype=np.int64)
            done += len(chunk)
    finally:
        md5 = out.close()
    if done != count:
        raise RuntimeError(f"shard {name}: {done} images written for {count} index rows")
    return {
        "images_md5": md5,
        "images_bytes": out.size,
        "pixel_sum": [int(x) for x in sums],
        "pixel_sumsq": [int(x) for x in sumsq],
        "pixels_per_channel": count * int(np.prod(image_shape[1:])),
    }


def write_rows(root: Path, name: str, rows: Sequence[IndexRow], images_bytes: int) -> dict[str, Any]:
    """The shard's ``labels.npy`` and ``index.csv``; the rest of its meta.json record."""
    paths = shard_paths(root, name)
    paths["labels"].parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray([r.label for r in rows], dtype=np.int64)
    label_bytes = _npy_header(labels.dtype, labels.shape) + labels.tobytes()
    paths["labels"].write_bytes(label_bytes)
    index_bytes = index_csv(rows)
    paths["index"].write_bytes(index_bytes)
    values, counts = np.unique(labels, return_counts=True)
    return {
        "count": len(rows),
        "bytes": images_bytes + len(label_bytes) + len(index_bytes),
        "labels_md5": hashlib.md5(label_bytes).hexdigest(),
        "index_md5": hashlib.md5(index_bytes).hexdigest(),
        "label_counts": {str(int(v)): int(n) for v, n in zip(values, counts, strict=True)},
    }


def index_csv(rows: Sequence[IndexRow]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INDEX_HEADER)
    w.writerows((r.key, r.label, r.sha256) for r in rows)
    return buf.getvalue().encode()


def read_index(data: bytes, where: str) -> list[IndexRow]:
    """The rows of a shard's ``index.csv`` (refused, naming the file, when it is not one)."""
    try:
        reader = csv.reader(io.StringIO(data.decode()))
        header = tuple(next(reader))
        if header != INDEX_HEADER:
            raise ValueError(f"header {header}")
        return [IndexRow(key, int(label), sha) for key, label, sha in reader]
    except (ValueError, StopIteration, UnicodeDecodeError) as exc:
        raise DataError(
            f"{where} is not a shard index ({exc}). Re-ingest the dataset, or `dvc checkout data` to "
            f"restore the tracked version."
        ) from None


class _ImageArray:
    """What ShardedArray and ImageView share: an (N, *item_shape) array's derived sizes."""

    item_shape: tuple[int, ...]
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class ShardedArray(_ImageArray):
    """Several ``(n_i, C, H, W)`` arrays (memory-mapped shards) read as one ``(N, C, H, W)`` array.

    Supports what the pipeline does with image arrays: ``len``, ``shape``, ``dtype``, an integer,
    a slice, an index array or a boolean mask (each returns a new in-memory array of just those
    images) and ``np.asarray`` (every image: only for data that fits in memory)."""

    def __init__(self, parts: Sequence[np.ndarray], item_shape: Sequence[int] | None = None):
        self.parts = list(parts)
        if item_shape is None:
            if not self.parts:
                raise ValueError("a ShardedArray without parts needs item_shape")
            item_shape = self.parts[0].shape[1:]
        self.item_shape = tuple(int(x) for x in item_shape)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.dtype = self.parts[0].dtype if self.parts else np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.offsets[-1]), *self.item_shape)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} images")
            s = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.parts[s][i - self.offsets[s]]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self.take(idx)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """The images at ``idx`` (any order, repeats allowed), as one contiguous array."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = np.empty((len(idx), *self.item_shape), dtype=self.dtype)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            rows = idx[where] - self.offsets[s]
            lo, hi = int(rows.min()), int(rows.max()) + 1
            if hi - lo == len(rows) and np.all(np.diff(rows) == 1):
                out[where] = self.parts[s][lo:hi]  # a contiguous run: one sequential read
            else:
                out[where] = self.parts[s][np.sort(rows)][np.argsort(np.argsort(rows))]
        return out

    def head(self, n: int) -> ShardedArray:
        """The first ``n`` images as a ShardedArray over the same parts (cut short: views of the memory
        maps, nothing read or copied)."""
        n = max(0, min(int(n), len(self)))
        parts = [_head(p, n - int(lo)) for p, lo in zip(self.parts, self.offsets[:-1], strict=True) if lo < n]
        return ShardedArray(parts, self.item_shape)

    def __repr__(self) -> str:
        return f"ShardedArray({len(self.parts)} shards, shape={self.shape}, dtype={self.dtype})"


def _head(part, n: int):
    """The first ``n`` rows of a part, unread: a memory map's view, or a remote array's ``head``."""
    return part.head(n) if hasattr(part, "head") else part[: max(0, n)]


class ImageView(_ImageArray):
    """The rows ``idx`` of an image array (a memory map, an ndarray or a :class:`ShardedArray`), read
    only when asked: ``len``, ``shape``, ``dtype``, ``nbytes``; a slice or an index array / boolean
    mask (positions in the view) gathers just those images into a new in-memory array, an integer
    gives one image, ``np.asarray`` every image. Probing reads the labelled images batch by batch
    through one, instead of copying them all into memory first."""

    def __init__(self, base, idx: np.ndarray):
        self.base = base
        self.idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        self.item_shape = tuple(int(x) for x in base.shape[1:])
        self.dtype = np.dtype(base.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.idx), *self.item_shape)

    def __len__(self) -> int:
        return len(self.idx)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._gather(self.idx)
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.base[int(self.idx[key])]
        if isinstance(key, slice):
            return self._gather(self.idx[key])
        key = np.asarray(key)
        return self._gather(self.idx[np.flatnonzero(key) if key.dtype == bool else key])

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        if isinstance(self.base, ShardedArray):
            return self.base.take(rows)
        return np.asarray(self.base[rows])  # fancy indexing: a new array of just these rows

    def __repr__(self) -> str:
        return f"ImageView({len(self)} of {len(self.base)} images, shape={self.shape}, dtype={self.dtype})"
