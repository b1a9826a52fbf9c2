"""Decoding a source through its dataset format, chunk by chunk: the unit of work that ingest runs
in worker processes (or on a Dask cluster), and the checks every decoded image passes.

:func:`read_chunk` is what a worker runs: it builds the format, decodes one chunk of entries, checks
each image (and its extent, when the format gives one) and either writes the chunk as one ``.npy`` into the ingest's local pool folder (worker
processes on this machine) or returns it (Dask workers, which may be other machines). Everything it
receives and returns is plain data, so the result does not depend on where it ran.
:func:`read_all` decodes a whole (small) source in memory: for tests and the conformance kit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pretextflow.core.errors import DataError
from pretextflow.core.registry.contracts import DatasetArrays, DatasetFormat, SourceCatalog, SourceEntry

SPLIT_NAMES = ("train", "test")
SIZE_FIX = (  # what every "sizes differ" message suggests
    "Pass --option image_size=N to resize every image to N x N, or --option max_side=N to keep each "
    "image's aspect ratio on an N x N canvas"
)


@dataclass
class ChunkResult:
    """One decoded chunk: the images' shape, their content hashes (in the entries' order), where
    the pixels are (a pool file, or the array itself) and the seconds spent decoding.
    ``extents``: each image's content ``(h, w)`` on its canvas, in the entries' order (one that
    gave none fills it: ``(H, W)``); None when no image of the chunk gave one."""

    index: int
    shape: tuple[int, ...]
    sha256: list[str]
    seconds: float
    path: str | None = None
    images: np.ndarray | None = None
    extents: list[tuple[int, int]] | None = None


def check_image(image: Any, entry: SourceEntry, shape: tuple[int, ...] | None) -> np.ndarray:
    """The decoded image as uint8 (C, H, W), or a DataError naming the image and the fix."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(
            f"{entry.key}: the format decoded it as {what}; a dataset format must yield uint8 "
            f"(C, H, W) images. Fix the format plugin's read()."
        )
    c, h, w = image.shape
    if c not in (1, 3) or h != w:
        raise DataError(
            f"{entry.key}: images must be square with 1 or 3 channels, got {(c, h, w)}. "
            f"Pass --option image_size=N to resize every image to N x N, or --option max_side=N to "
            f"keep its aspect ratio on an N x N canvas (image-file formats)."
        )
    if shape is not None and image.shape != shape:
        raise DataError(
            f"{entry.key}: size {image.shape} differs from the other images' {shape}. {SIZE_FIX} (or channels=1|3)."
        )
    return image


def check_extent(extent: Any, image: np.ndarray, entry: SourceEntry) -> tuple[int, int] | None:
    """A decoded image's extent as ``(h, w)`` ints inside its canvas (None: it fills the canvas),
    or a DataError naming the image."""
    if extent is None:
        return None
    vals = tuple(extent) if isinstance(extent, (tuple, list)) else ()
    ints = len(vals) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals)
    if not ints or not (1 <= vals[0] <= image.shape[1] and 1 <= vals[1] <= image.shape[2]):
        raise DataError(
            f"{entry.key}: the format gave the extent {extent!r} for a {image.shape[1]}x{image.shape[2]} "
            f"canvas; an extent is (h, w) with 1 <= h <= H and 1 <= w <= W (or None: it fills the "
            f"canvas). Fix the format plugin's read()."
        )
    return int(vals[0]), int(vals[1])


def read_chunk(
    fmt_cls: type[DatasetFormat],
    source: str,
    entries: Sequence[SourceEntry],
    options: dict[str, Any],
    storage_options: dict[str, Any],
    index: int,
    pool_path: str | None = None,
    shape: tuple[int, ...] | None = None,
    fmt: DatasetFormat | None = None,
) -> ChunkResult:
    """Decode one chunk of entries (see the module docstring). ``fmt``: an instance to reuse (the
    ingesting process's own, for formats that are not ``parallel``)."""
    t0 = time.perf_counter()
    fmt = fmt or fmt_cls()
    opts = fmt_cls.Options.model_validate(options)
    images, digests, extents = [], [], []
    decoded = iter(fmt.read(source, list(entries), opts, storage_options))
    for entry in entries:
        item = next(decoded, None)
        if item is None:
            raise DataError(
                f"{fmt_cls.name}: read() stopped before {entry.key}; it must yield one image per "
                f"entry, in order. Fix the format plugin."
            )
        image = check_image(item.image, entry, shape)
        shape = image.shape
        images.append(image)
        digests.append(str(item.sha256))
        extents.append(check_extent(getattr(item, "extent", None), image, entry))
    out = np.stack(images) if images else np.zeros((0, *(shape or (1, 1, 1))), np.uint8)
    full = (int(out.shape[2]), int(out.shape[3]))
    given = [e or full for e in extents] if any(e is not None for e in extents) else None
    seconds = time.perf_counter() - t0
    if pool_path is None:
        return ChunkResult(index, tuple(out.shape[1:]), digests, seconds, images=out, extents=given)
    np.save(pool_path, out, allow_pickle=False)
    return ChunkResult(index, tuple(out.shape[1:]), digests, seconds, path=pool_path, extents=given)


def check_catalog(catalog: SourceCatalog, source: str) -> None:
    """Refuse a listing that would break training later, with the reason and the fix."""
    if not isinstance(catalog, SourceCatalog):
        raise DataError(
            f"{source}: the format's scan() returned {type(catalog).__name__}, not a SourceCatalog. "
            f"Fix the format plugin."
        )
    k = len(catalog.class_names)
    keys = set()
    for e in catalog.entries:
        if e.split not in SPLIT_NAMES:
            raise DataError(f"{source}: {e.key} is in split {e.split!r}; use 'train' or 'test'.")
        if not (e.label == -1 or 0 <= e.label < k):
            raise DataError(
                f"{source}: {e.split} labels out of range: {e.label} for {e.key} (classes: {k}; "
                f"-1 = unlabeled). Fix the labels to 0..{max(k - 1, 0)}, or name every class "
                f"(option class_names)."
            )
        keys.add(e.key)
    if len(keys) != len(catalog.entries):
        raise DataError(f"{source}: two images share a key; every image needs its own (its path).")
    if not any(e.split == "train" for e in catalog.entries):
        raise DataError(
            f"{source}: the training split is empty; there is nothing to learn from. Check that the "
            f"source holds training images."
        )
    labelled = {e.label for e in catalog.entries if e.split == "train" and e.label >= 0}
    if k and len(labelled) == 1:
        raise DataError(
            f"{source}: every labelled training image is class {catalog.class_names[labelled.pop()]!r}; "
            f"probing needs at least two classes. Add images of another class (or, for an image "
            f"folder, put the images in its unlabeled folder)."
        )


def read_all(
    fmt: DatasetFormat, source: str, options: DatasetFormat.Options, storage_options: dict[str, Any]
) -> DatasetArrays:
    """Scan and decode a whole source in this process, as arrays (small sources: tests, the kit;
    the images' extents, if the format gives any, are not among them)."""
    catalog = fmt.scan(source, options, storage_options)
    check_catalog(catalog, source)
    read_opts = {**options.model_dump(), **catalog.read_options}
    out: dict[str, Any] = {}
    shape = None
    for split in SPLIT_NAMES:
        entries = sorted((e for e in catalog.entries if e.split == split), key=lambda e: e.key)
        res = read_chunk(type(fmt), source, entries, read_opts, storage_options, 0, shape=shape, fmt=fmt)
        shape = res.shape if entries else shape
        out[f"{split}_images"] = res.images
        out[f"{split}_labels"] = np.asarray([e.label for e in entries], dtype=np.int64)
    if shape is not None:  # an empty split takes the other's image shape
        for split in SPLIT_NAMES:
            if not len(out[f"{split}_images"]):
                out[f"{split}_images"] = np.zeros((0, *shape), np.uint8)
    return DatasetArrays(class_names=list(catalog.class_names), **out)
