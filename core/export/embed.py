"""``pretextflow embed``: the features of every image of a folder, an archive, a CSV of paths or any
fsspec URI, streamed in batches (one batch of decoded images in memory, the output written as it
goes), in a fixed order, on the GPU when there is one."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from pretextflow.core.data.sources import is_archive, local_source
from pretextflow.core.errors import DataError, StageInputError
from pretextflow.core.export.extractor import FeatureExtractor
from pretextflow.core.export.onnx_runtime import OnnxModule
from pretextflow.core.security.credentials import resolve, resolve_options
from pretextflow.core.security.redaction import redact
from pretextflow.core.training.model import select_device

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OUTPUTS = (".npy", ".parquet")


@dataclass
class EmbedResult:
    out: str
    index: str | None  # the .npy output's index (row, path, sha256); Parquet holds the paths itself
    count: int
    dim: int
    device: str


def embed(
    backbone: FeatureExtractor,
    source: str,
    out: str,
    batch_size: int = 256,
    storage_options: dict[str, Any] | None = None,
    device: str = "auto",
) -> EmbedResult:
    """Write one feature vector per image of ``source`` to ``out`` (``.npy`` + ``.index.csv``, or
    ``.parquet`` with columns path, sha256, embedding). Images are converted to the backbone's
    channels, resized (shorter side) and centre-cropped to its input size."""
    suffix = next((s for s in OUTPUTS if out.lower().endswith(s)), None)
    if suffix is None:
        raise StageInputError(f"--out {out}: name the output FILE.npy (plus FILE.index.csv) or FILE.parquet")
    if batch_size < 1:
        raise StageInputError(f"--batch-size must be at least 1, got {batch_size}")
    options = resolve_options(storage_options or {})
    dev = _device(backbone, device)
    model = backbone.to(dev)
    with ExitStack() as stack:
        fs, paths, shown = stack.enter_context(_listing(source, options))
        if not paths:
            raise DataError(f"{redact(source)}: no image files ({', '.join(EXTENSIONS)}) found; nothing to embed")
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pretextflow-embed-"))
        writer = _NpyWriter(tmp, len(paths), model.num_features) if suffix == ".npy" else _ParquetWriter(tmp)
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            images, digests = _decode_batch(fs, batch, shown, backbone.in_chans, backbone.image_size)
            with torch.no_grad():
                feats = model(torch.from_numpy(images).to(dev)).float().cpu().numpy()
            writer.write(start, [shown(p) for p in batch], digests, feats)
        files = writer.close()
        return _upload(files, out, options, len(paths), model.num_features, dev.type)


def _device(backbone: FeatureExtractor, preference: str) -> torch.device:
    """``preference`` as train.device and probe.device read it; an ONNX export runs on the CPU."""
    device = select_device(preference, "--device")
    return torch.device("cpu") if isinstance(backbone.model, OnnxModule) else device


# -- what to embed -----------------------------------------------------------------------------
class _listing:
    """``(fs, sorted image paths, path -> the name written to the output)`` for a folder, an archive
    (extracted to a temporary folder, members named ``ARCHIVE!member``), or a CSV with a ``path``
    column (relative paths are relative to the CSV's folder)."""

    def __init__(self, source: str, options: dict[str, Any]):
        self.source, self.options, self._archive = source, options, None

    def __enter__(self):
        source = resolve(self.source)
        if is_archive(source):
            self._archive = local_source(source, self.options)
            root, _ = self._archive.__enter__()
            fs = fsspec.filesystem("file")
            paths = _find_images(fs, root)
            return fs, paths, lambda p: f"{redact(self.source)}!{os.path.relpath(p, root)}"
        fs, path = fsspec.core.url_to_fs(source, **self.options)
        if path.lower().endswith(".csv"):
            return fs, _csv_paths(fs, path, self.source), lambda p: p
        if not fs.isdir(path):
            raise DataError(f"{redact(self.source)}: not a folder, an archive (.zip, .tar[.gz]) or a .csv of paths")
        root = path.rstrip("/")
        return fs, _find_images(fs, root), lambda p: p[len(root) + 1 :]

    def __exit__(self, *exc):
        if self._archive is not None:
            return self._archive.__exit__(*exc)
        return False


def _find_images(fs, root: str) -> list[str]:
    return sorted(p for p, info in fs.find(root, detail=True).items() if p.lower().endswith(EXTENSIONS))


def _csv_paths(fs, path: str, shown: str) -> list[str]:
    with fs.open(path, "r", newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise DataError(f"{redact(shown)}: a CSV to embed needs a 'path' column (found {reader.fieldnames})")
        rows = [r["path"].strip() for r in reader if r.get("path", "").strip()]
    base = posixpath.dirname(path)
    return [r if "://" in r or r.startswith("/") else posixpath.join(base, r) for r in rows]


# -- decoding a batch ----------------------------------------------------------------------------
def _decode_batch(fs, paths: list[str], shown, channels: int, size: int) -> tuple[np.ndarray, list[str]]:
    """uint8 ``(B, C, size, size)`` and each file's sha256; the files of a batch are fetched in one
    ``fs.cat`` call (concurrent on object stores)."""
    raw = fs.cat(paths, on_error="return") if len(paths) > 1 else {paths[0]: _cat_one(fs, paths[0])}
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    digests = []
    for i, p in enumerate(paths):
        data = raw.get(p)
        if data is None:
            data = raw.get(fs._strip_protocol(p)) if hasattr(fs, "_strip_protocol") else None
        if isinstance(data, Exception) or data is None:
            raise DataError(f"{shown(p)}: could not be read ({data!r}). Check the path, or remove it from the list.")
        digests.append(hashlib.sha256(data).hexdigest())
        out[i] = _decode(data, shown(p), channels, size)
    return out, digests


def _cat_one(fs, path: str) -> bytes | Exception:
    try:
        return fs.cat_file(path)
    except OSError as exc:
        return exc


def _decode(data: bytes, name: str, channels: int, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            scale = size / min(im.width, im.height)
            w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
            im = im.resize((w, h), Image.Resampling.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: not a readable image ({exc}). Remove or replace it.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


# -- writing as it goes --------------------------------------------------------------------------
class _NpyWriter:
    def __init__(self, tmp: str, count: int, dim: int):
        self.path, self.index_path = os.path.join(tmp, "out.npy"), os.path.join(tmp, "out.index.csv")
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(count, dim))
        self.index = open(self.index_path, "w", newline="")  # noqa: SIM115  (closed in close())
        self.csv = csv.writer(self.index)
        self.csv.writerow(["row", "path", "sha256"])

    def write(self, start: int, names: list[str], digests: list[str], feats: np.ndarray) -> None:
        self.array[start : start + len(feats)] = feats
        self.csv.writerows([start + i, n, d] for i, (n, d) in enumerate(zip(names, digests, strict=True)))

    def close(self) -> dict[str, str]:
        self.array.flush()
        del self.array
        self.index.close()
        return {"": self.path, ".index.csv": self.index_path}


class _ParquetWriter:
    def __init__(self, tmp: str):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise StageInputError("a .parquet output needs pyarrow: pip install 'pretextflow[parquet]'") from None
        self.pa, self.pq, self.path, self.writer = pa, pq, os.path.join(tmp, "out.parquet"), None

    def write(self, start: int, names: list[str], digests: list[str], feats: np.ndarray) -> None:
        pa = self.pa
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), feats.shape[1])
        table = pa.table({"path": names, "sha256": digests, "embedding": vectors})
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> dict[str, str]:
        self.writer.close()
        return {"": self.path}


def _upload(files: dict[str, str], out: str, options: dict, count: int, dim: int, device: str) -> EmbedResult:
    """Move the finished files to ``out`` (any fsspec URI); the index goes beside it."""
    fs, path = fsspec.core.url_to_fs(resolve(out), **options)
    stem = path[: -len(".npy")] if path.lower().endswith(".npy") else None
    targets = {suffix: (path if not suffix else f"{stem}{suffix}") for suffix in files}
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    for suffix, local in files.items():
        if isinstance(fs, LocalFileSystem):
            shutil.move(local, targets[suffix])
        else:
            fs.put_file(local, targets[suffix])
    index = targets.get(".index.csv")
    return EmbedResult(out=out, index=index, count=count, dim=dim, device=device)
