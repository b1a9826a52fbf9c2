"""The canonical dataset: one folder per dataset under the workspace's ``data/``.

Schema 2 (written by every ingest):

  data/<name>/meta.json                       classes, image shape, counts, per-channel mean/std and
                                              every shard: its split, count, md5s, label counts
  data/<name>/shards/<split>-<seq>.images.npy  uint8 (n, C, H, W), memory-mappable
  data/<name>/shards/<split>-<seq>.labels.npy  int64 (n,), -1 = unlabeled
  data/<name>/shards/<split>-<seq>.index.csv   key,label,sha256 per image (core.data.shards)
  data/<name>/shards/<split>-<seq>.extents.npy int32 (n, 2), only in a dataset with extents
                                              (meta.json ``"extents": true``): each image's
                                              content (h, w), centred on its zero canvas

A dataset with extents holds images stored with their aspect ratio (the image-file formats'
``max_side``): each is a content of h x w pixels centred on the square, zero-padded canvas;
:class:`Dataset` gives them as ``train_extents`` / ``test_extents`` (None: every image fills its
canvas).

Schema 1 (one ``<split>_images.npy`` / ``<split>_labels.npy`` per split) still loads;
``pretextflow migrate NAME`` rewrites it as schema 2. Writing is deterministic (no timestamps,
sorted keys, fixed ``.npy`` headers): the same source gives byte-identical files, hence the same
DVC md5, and a shard no image of which changed is never rewritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from pretextflow.core.config import DATASET_NAME_RE
from pretextflow.core.data.remote import RemoteNpy
from pretextflow.core.data.shards import ShardedArray, shard_paths
from pretextflow.core.errors import DataError
from pretextflow.core.registry.contracts import DatasetArrays

SCHEMA_VERSION = 2
SPLITS = ("train", "test")
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
NAME_RE = DATASET_NAME_RE  # one rule for names in configs and on the command line


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise DataError(
            f"dataset name {name!r} is invalid: use 1-64 lowercase letters, digits, '.', '_' "
            f"or '-', starting with a letter or digit (e.g. fashion-mnist)."
        )
    return name


def default_name(source: str) -> str:
    """A dataset name from its source: ``/usr/share/datasets/fashion-mnist`` -> ``fashion-mnist``,
    ``sklearn:digits`` -> ``digits``."""
    last = re.split(r"[/:]", source.rstrip("/"))[-1].lower()
    last = re.sub(r"\.(zip|tar|tar\.gz|tgz|tar\.bz2|tbz2|tar\.xz|txz)$", "", last)  # pets.tar.gz -> pets
    return check_name(re.sub(r"[^a-z0-9._-]+", "-", last).strip("-._") or "dataset")


def validate_arrays(arrays: DatasetArrays, source: str) -> None:
    """Refuse what would break training later, with the reason and the fix."""
    for split in ("train", "test"):
        imgs, labs = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if imgs.dtype != np.uint8 or imgs.ndim != 4:
            raise DataError(f"{source}: {split} images must be uint8 (N, C, H, W), got {imgs.dtype} {imgs.shape}")
        if len(imgs) != len(labs):
            raise DataError(
                f"{source}: {split} has {len(imgs)} images but {len(labs)} labels. Give every image "
                f"exactly one label (the files may come from different datasets, or one is truncated)."
            )
    if len(arrays.train_images) == 0:
        raise DataError(
            f"{source}: the training split is empty; there is nothing to learn from. Check that the "
            f"source holds training images."
        )
    if arrays.test_images.size and arrays.train_images.shape[1:] != arrays.test_images.shape[1:]:
        raise DataError(
            f"{source}: train images are {arrays.train_images.shape[1:]} but test images are "
            f"{arrays.test_images.shape[1:]}; they must match."
        )
    c, h, w = arrays.train_images.shape[1:]
    if c not in (1, 3) or h != w:
        raise DataError(f"{source}: images must be square with 1 or 3 channels, got {(c, h, w)}.")
    k = len(arrays.class_names)
    for split in ("train", "test"):
        labs = getattr(arrays, f"{split}_labels")
        bad = labs[(labs < -1) | (labs >= max(k, 0))] if k else labs[labs != -1]
        if bad.size:
            raise DataError(
                f"{source}: {split} labels out of range: {int(bad[0])} (classes: {k}; -1 = unlabeled). "
                f"Fix the labels to 0..{max(k - 1, 0)}, or name every class (option class_names)."
            )
    labelled = np.unique(arrays.train_labels[arrays.train_labels >= 0])
    if k and len(labelled) == 1:
        raise DataError(
            f"{source}: every labelled training image is class {arrays.class_names[labelled[0]]!r}; "
            f"probing needs at least two classes. Add images of another class (or, for an image "
            f"folder, put the images directly in the source folder: unlabeled)."
        )


def channel_stats(shards: list[dict[str, Any]], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training pixels, in [0, 1], from the shards' exact integer
    sums (so an incremental ingest gives exactly what a fresh one gives)."""
    total = np.zeros(channels, dtype=object)
    total_sq = np.zeros(channels, dtype=object)
    pixels = 0
    for rec in shards:
        if rec["split"] == "train":
            total += np.asarray(rec["pixel_sum"], dtype=object)
            total_sq += np.asarray(rec["pixel_sumsq"], dtype=object)
            pixels += rec["pixels_per_channel"]
    if not pixels:
        return [0.0] * channels, [1e-6] * channels
    mean = [float(t) / pixels for t in total]
    var = [max(float(q) / pixels - m * m, 0.0) for q, m in zip(total_sq, mean, strict=True)]
    return ([round(m / 255.0, 6) for m in mean], [round(max(v**0.5 / 255.0, 1e-6), 6) for v in var])


def build_meta(
    name: str,
    fmt: str,
    class_names: list[str],
    image_shape: list[int],
    shards: list[dict[str, Any]],
    extents: bool = False,
) -> dict[str, Any]:
    """meta.json of a schema-2 dataset from its shards' records (deterministic). ``extents``: every
    shard has an ``extents.npy`` (recorded as ``"extents": true``; absent otherwise)."""
    counts = {f"{s}{suffix}": 0 for s in SPLITS for suffix in ("", "_labelled")}
    for rec in shards:
        counts[rec["split"]] += rec["count"]
        counts[f"{rec['split']}_labelled"] += sum(n for k, n in rec["label_counts"].items() if k != "-1")
    mean, std = channel_stats(shards, int(image_shape[0]))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "format": fmt,
        "encoding": "raw",
        "image_shape": [int(x) for x in image_shape],
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "counts": counts,
        "mean": mean,
        "std": std,
        "shards": shards,
    }
    return {**meta, "extents": True} if extents else meta


def meta_bytes(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()


@dataclass
class Dataset:
    """A canonical dataset opened for reading (arrays memory-mapped when local)."""

    name: str
    meta: dict[str, Any]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    location: tuple[str, dict[str, Any]] | None = None  # (data URI, storage options) it was loaded from
    # int32 (N, 2) rows (h, w): each image's content, centred on its H x W zero canvas; None = every
    # image fills its canvas (a dataset without extents)
    train_extents: np.ndarray | None = None
    test_extents: np.ndarray | None = None

    def reopen_args(self) -> tuple[str, str, dict[str, Any]] | None:
        """What another process needs to open the same dataset (None: it exists only in memory)."""
        return (self.location[0], self.name, self.location[1]) if self.location else None

    @property
    def fingerprint(self) -> str:
        """Content hash of this dataset alone (from the md5s in meta.json): what stage keys use, so
        ingesting another dataset into the same workspace does not invalidate this one's caches."""
        return hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def in_chans(self) -> int:
        return int(self.meta["image_shape"][0])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_shape"][1])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def _fail(name: str, what: str) -> DataError:
    return DataError(f"dataset {name!r}: {what}. Re-ingest it, or `dvc checkout data` to restore the tracked version.")


def load_dataset(data_uri: str, name: str, storage_options: dict[str, Any] | None = None) -> Dataset:
    fs, root = fsspec.core.url_to_fs(data_uri.rstrip("/") + "/" + name, **(storage_options or {}))
    meta_path = f"{root}/meta.json"
    if not fs.exists(meta_path):
        raise DataError(
            f"dataset {name!r} is not in {data_uri}. Ingest it first: "
            f"`pretextflow ingest SOURCE --format FORMAT --name {name}`."
        )
    try:
        meta = json.loads(fs.cat_file(meta_path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(name, f"meta.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("schema_version", 0), int):
        raise _fail(name, "meta.json is not a pretextflow dataset description")
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise DataError(
            f"dataset {name!r} was written by a newer pretextflow (schema "
            f"{meta['schema_version']} > {SCHEMA_VERSION}). Upgrade pretextflow."
        )
    read = _read_v2 if meta.get("schema_version") == 2 else _read_v1
    arrays = read(fs, root, name, meta)
    return Dataset(name=name, meta=meta, **arrays, location=(data_uri, dict(storage_options or {})))


def _load_npy(fs, path: str, name: str, what: str, want: tuple[type, int]) -> np.ndarray:
    """The array at ``path``: memory-mapped when local; remote images are read row range by row range
    (:class:`RemoteNpy`), remote labels and extents (8-16 bytes an image) whole."""
    if not fs.exists(path):
        raise _fail(name, f"{what} is missing")
    try:  # never unpickle: an object array in the store is refused, not executed
        if isinstance(fs, LocalFileSystem):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        elif want[1] == 4:
            arr = RemoteNpy(fs, path)
        else:
            arr = np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)
    except DataError as exc:
        raise _fail(name, f"{what}: {exc}") from None
    except (ValueError, EOFError, OSError) as exc:
        raise _fail(name, f"{what} is not a plain numeric array or is truncated ({exc})") from None
    if arr.dtype != want[0] or arr.ndim != want[1]:
        raise _fail(
            name, f"{what} is {arr.dtype} with {arr.ndim} dimensions, expected {np.dtype(want[0])} with {want[1]}"
        )
    return arr


def _read_v1(fs, root: str, name: str, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        key: _load_npy(
            fs, f"{root}/{key}.npy", name, f"{key}.npy", (np.uint8, 4) if key.endswith("images") else (np.int64, 1)
        )
        for key in ARRAYS
    }


def _read_v2(fs, root: str, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    shape = tuple(int(x) for x in meta["image_shape"])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    labels: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    extents: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for rec in meta.get("shards", []):
        paths = {k: str(v) for k, v in shard_paths(Path(root), rec["name"]).items()}
        images = _load_npy(fs, paths["images"], name, f"shard {rec['name']} (images)", (np.uint8, 4))
        labs = _load_npy(fs, paths["labels"], name, f"shard {rec['name']} (labels)", (np.int64, 1))
        if images.shape[1:] != shape or len(images) != rec["count"] or len(labs) != rec["count"]:
            raise _fail(
                name,
                f"shard {rec['name']} holds {len(images)} images of {images.shape[1:]} and "
                f"{len(labs)} labels; meta.json says {rec['count']} of {shape}",
            )
        parts[rec["split"]].append(images)
        labels[rec["split"]].append(labs)
        if meta.get("extents"):
            extents[rec["split"]].append(_shard_extents(fs, paths["extents"], name, rec, shape))
    out: dict[str, Any] = {}
    for s in SPLITS:
        one = len(parts[s]) == 1 and not isinstance(parts[s][0], RemoteNpy)  # remote: always streamed
        out[f"{s}_images"] = parts[s][0] if one else ShardedArray(parts[s], shape)
        out[f"{s}_labels"] = np.concatenate(labels[s]) if labels[s] else np.zeros(0, np.int64)
        if meta.get("extents"):
            ext = extents[s]
            out[f"{s}_extents"] = ext[0] if len(ext) == 1 else np.concatenate(ext or [np.zeros((0, 2), np.int32)])
    return out


def _shard_extents(fs, path: str, name: str, rec: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """A shard's extents (memory-mapped when local), checked: one (h, w) per image, inside the canvas."""
    ext = _load_npy(fs, path, name, f"shard {rec['name']} (extents)", (np.int32, 2))
    if ext.shape != (rec["count"], 2):
        raise _fail(name, f"shard {rec['name']} holds {ext.shape} extents; meta.json says {rec['count']} images")
    h, w = ext[:, 0], ext[:, 1]
    if len(ext) and (h.min() < 1 or w.min() < 1 or h.max() > shape[1] or w.max() > shape[2]):
        raise _fail(name, f"shard {rec['name']} has extents outside its {shape[1]}x{shape[2]} canvas")
    return ext
