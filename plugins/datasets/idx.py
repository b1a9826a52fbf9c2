"""``idx``: the MNIST family's IDX files (``train-images-idx3-ubyte[.gz]`` and friends), read
through fsspec from a local folder, ``file://``, ``memory://``, ``s3://`` or ``http(s)://``.

Remote (http/https) sources must verify: every file's payload must match a known checksum
(Fashion-MNIST is built in) or one given in ``checksums``."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from pydantic import Field

from pretextflow.api import (
    ArrayDatasetFormat,
    DataError,
    DatasetArrays,
    Params,
    gunzip_bounded,
    hookimpl,
    join_uri,
    read_source_bytes,
)

from .known import KNOWN_IDX_DATASETS

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


class IdxOptions(Params):
    class_names: list[str] | None = Field(
        None, description="names of the classes; default from a known dataset or 0..K-1"
    )
    checksums: dict[str, str] = Field({}, description="file name -> sha256 of the uncompressed payload")
    max_file_mb: float = Field(
        2048,
        gt=0,
        le=1 << 20,
        description="largest file, compressed or uncompressed, read (MB): a gzip bomb or a "
        "wrong file stops there instead of filling the memory",
    )


def parse_idx(payload: bytes, name: str, ndim: int) -> np.ndarray:
    """Decode one IDX payload (uncompressed) of unsigned bytes with ``ndim`` dimensions."""
    if len(payload) < 4 + 4 * ndim:
        raise DataError(f"{name}: truncated IDX header ({len(payload)} bytes). Re-download the file.")
    zero, dtype, dims = payload[0:2], payload[2], payload[3]
    if zero != b"\x00\x00" or dtype != _IDX_UBYTE or dims != ndim:
        raise DataError(
            f"{name}: not an IDX file of unsigned bytes with {ndim} dimension(s) "
            f"(magic {payload[:4].hex()}). Check the file name and source."
        )
    shape = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # exact: numpy's product would wrap around for absurd headers
    body = payload[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(
            f"{name}: header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(body)} bytes: truncated or corrupt. Re-download the file."
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def read_payload(
    source: str, stem: str, storage_options: dict[str, Any], max_bytes: int = 2048 << 20
) -> tuple[str, bytes]:
    """Read ``stem.gz`` or ``stem`` below ``source``; returns (file name, uncompressed bytes). Neither
    the file nor its decompressed payload may exceed ``max_bytes``."""
    last_error: Exception | None = None
    hint = (
        f"If the file is genuine, raise the limit (--option max_file_mb={2 * max_bytes / 2**20:g}); "
        f"otherwise it is not an IDX file of this dataset."
    )
    for fname in (stem + ".gz", stem):
        try:
            raw = read_source_bytes(join_uri(source, fname), storage_options, max_bytes, hint)
        except FileNotFoundError as exc:
            last_error = exc
            continue
        if fname.endswith(".gz"):
            raw = gunzip_bounded(raw, join_uri(source, fname), max_bytes, hint)
        return fname, raw
    raise DataError(
        f"{source}: no {stem}.gz or {stem} found ({last_error}). An idx source is a folder "
        f"holding {', '.join(v + '[.gz]' for v in FILES.values())}."
    )


class IdxFormat(ArrayDatasetFormat):
    name = "idx"
    description = "MNIST-family IDX files (gz or raw): train-/t10k- images and labels"
    Options = IdxOptions

    def arrays(self, source: str, options: IdxOptions, storage_options: dict[str, Any]) -> DatasetArrays:
        arrays: dict[str, np.ndarray] = {}
        digests: dict[str, str] = {}
        for key, stem in FILES.items():
            fname, payload = read_payload(source, stem, storage_options, int(options.max_file_mb * 2**20))
            digests[stem] = hashlib.sha256(payload).hexdigest()
            arrays[key] = parse_idx(payload, fname, 3 if key.endswith("images") else 1)
        known = _verify(source, digests, options)
        for split in ("train", "test"):
            n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
            if n_img != n_lab:
                raise DataError(
                    f"{source}: {split} has {n_img} images but {n_lab} labels: the files come from "
                    f"different datasets or one is truncated. Re-download the images and labels "
                    f"of the same dataset."
                )
        num_classes = int(max(arrays["train_labels"].max(initial=0), arrays["test_labels"].max(initial=0))) + 1
        names = options.class_names or (known["class_names"] if known else [str(i) for i in range(num_classes)])
        return DatasetArrays(
            train_images=arrays["train_images"][:, None],
            train_labels=arrays["train_labels"].astype(np.int64),
            test_images=arrays["test_images"][:, None],
            test_labels=arrays["test_labels"].astype(np.int64),
            class_names=list(names),
            source_files=digests,
        )


def _verify(source: str, digests: dict[str, str], options: IdxOptions) -> dict | None:
    """Returns the known dataset these files are, if any; enforces checksums for remote sources."""
    for stem, digest in digests.items():
        if stem in options.checksums and options.checksums[stem] != digest:
            raise DataError(
                f"{source}: {stem} has sha256 {digest}, expected {options.checksums[stem]}. "
                f"The download is corrupt or is not the dataset you meant."
            )
    known = next((k for k in KNOWN_IDX_DATASETS.values() if k["payload_sha256"] == digests), None)
    remote = source.split("://", 1)[0] in ("http", "https")
    if remote and not known and set(options.checksums) != set(digests):
        raise DataError(
            f"{source}: a remote source must be verified, and these files match no known dataset. "
            f"Pass the sha256 of each uncompressed file: --option checksums.<file>=<sha256>."
        )
    return known


@hookimpl
def pretextflow_dataset_formats():
    return [IdxFormat]
