"""The canonical dataset: one folder per dataset under the workspace's ``data/``.

  data/<name>/train_images.npy   uint8 (N, C, H, W), memory-mappable
  data/<name>/train_labels.npy   int64 (N,), -1 = unlabeled
  data/<name>/test_images.npy, test_labels.npy
  data/<name>/meta.json          shape, classes, counts, per-channel mean/std, source checksums, md5s

Writing is deterministic (no timestamps, sorted keys, fixed ``.npy`` headers): the same source
gives byte-identical files, hence the same DVC md5. Few large files keep DVC fast.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from pretextflow.core.config import DATASET_NAME_RE
from pretextflow.core.registry.contracts import DatasetArrays
from pretextflow.core.errors import DataError

SCHEMA_VERSION = 1
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
NAME_RE = DATASET_NAME_RE  # one rule for names in configs and on the command line


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise DataError(f"dataset name {name!r} is invalid: use 1-64 lowercase letters, digits, '.', '_' "
                        f"or '-', starting with a letter or digit (e.g. fashion-mnist).")
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
            raise DataError(f"{source}: {split} has {len(imgs)} images but {len(labs)} labels. Give every image "
                            f"exactly one label (the files may come from different datasets, or one is truncated).")
    if len(arrays.train_images) == 0:
        raise DataError(f"{source}: the training split is empty; there is nothing to learn from. Check that the "
                        f"source holds training images.")
    if arrays.test_images.size and arrays.train_images.shape[1:] != arrays.test_images.shape[1:]:
        raise DataError(f"{source}: train images are {arrays.train_images.shape[1:]} but test images are "
                        f"{arrays.test_images.shape[1:]}; they must match.")
    c, h, w = arrays.train_images.shape[1:]
    if c not in (1, 3) or h != w:
        raise DataError(f"{source}: images must be square with 1 or 3 channels, got {(c, h, w)}.")
    k = len(arrays.class_names)
    for split in ("train", "test"):
        labs = getattr(arrays, f"{split}_labels")
        bad = labs[(labs < -1) | (labs >= max(k, 0))] if k else labs[labs != -1]
        if bad.size:
            raise DataError(f"{source}: {split} labels out of range: {int(bad[0])} (classes: {k}; -1 = unlabeled). "
                            f"Fix the labels to 0..{max(k - 1, 0)}, or name every class (option class_names).")
    labelled = np.unique(arrays.train_labels[arrays.train_labels >= 0])
    if k and len(labelled) == 1:
        raise DataError(f"{source}: every labelled training image is class {arrays.class_names[labelled[0]]!r}; "
                        f"probing needs at least two classes. Add images of another class (or, for an image "
                        f"folder, put the images directly in the source folder: unlabeled).")


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def encode_dataset(name: str, fmt: str, arrays: DatasetArrays) -> dict[str, bytes]:
    """File name -> bytes of the canonical layout (deterministic)."""
    files = {f"{k}.npy": _npy_bytes(getattr(arrays, k)) for k in ARRAYS}
    imgs = arrays.train_images
    # per-channel statistics, in float64 over all training pixels; rounded so they print stably
    flat = imgs.transpose(1, 0, 2, 3).reshape(imgs.shape[1], -1)
    mean = [round(float(x) / 255.0, 6) for x in flat.mean(axis=1, dtype=np.float64)]
    std = [round(max(float(x) / 255.0, 1e-6), 6) for x in flat.std(axis=1, dtype=np.float64)]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "format": fmt,
        "image_shape": list(imgs.shape[1:]),
        "num_classes": len(arrays.class_names),
        "class_names": list(arrays.class_names),
        "counts": {"train": int(len(imgs)), "test": int(len(arrays.test_images)),
                   "train_labelled": int((arrays.train_labels >= 0).sum()),
                   "test_labelled": int((arrays.test_labels >= 0).sum())},
        "mean": mean,
        "std": std,
        "source_files": dict(sorted(arrays.source_files.items())),
        "md5": {f: hashlib.md5(b).hexdigest() for f, b in sorted(files.items())},
    }
    files["meta.json"] = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    return files


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


def load_dataset(data_uri: str, name: str, storage_options: dict[str, Any] | None = None) -> Dataset:
    fs, root = fsspec.core.url_to_fs(data_uri.rstrip("/") + "/" + name, **(storage_options or {}))
    meta_path = f"{root}/meta.json"
    if not fs.exists(meta_path):
        raise DataError(f"dataset {name!r} is not in {data_uri}. Ingest it first: "
                        f"`pretextflow ingest SOURCE --format FORMAT --name {name}`.")
    try:
        meta = json.loads(fs.cat_file(meta_path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"dataset {name!r}: meta.json is not valid JSON ({exc}). Re-ingest it, or "
                        f"`dvc checkout data` to restore the tracked version.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("schema_version", 0), int):
        raise DataError(f"dataset {name!r}: meta.json is not a pretextflow dataset description. Re-ingest it, or "
                        f"`dvc checkout data` to restore the tracked version.")
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise DataError(f"dataset {name!r} was written by a newer pretextflow (schema "
                        f"{meta['schema_version']} > {SCHEMA_VERSION}). Upgrade pretextflow.")
    local = isinstance(fs, LocalFileSystem)
    arrays = {}
    for key in ARRAYS:
        path = f"{root}/{key}.npy"
        if not fs.exists(path):
            raise DataError(f"dataset {name!r} is incomplete: {key}.npy is missing. Re-ingest it, or "
                            f"`dvc checkout data` to restore the tracked version.")
        try:  # never unpickle: an object array in the store is refused, not executed
            if local:
                arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                arrays[key] = np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise DataError(f"dataset {name!r}: {key}.npy is not a plain numeric array ({exc}). Re-ingest it, or "
                            f"`dvc checkout data` to restore the tracked version.") from None
        want = (np.uint8, 4) if key.endswith("images") else (np.int64, 1)
        if arrays[key].dtype != want[0] or arrays[key].ndim != want[1]:
            raise DataError(f"dataset {name!r}: {key}.npy is {arrays[key].dtype} with {arrays[key].ndim} dimensions, "
                            f"expected {np.dtype(want[0])} with {want[1]}. Re-ingest it, or `dvc checkout data`.")
    return Dataset(name=name, meta=meta, **arrays, location=(data_uri, dict(storage_options or {})))
