"""Known IDX datasets: where to download them, their checksums and class names (Fashion-MNIST),
and ``fetch_known``, the checksum-verified download behind ``pretextflow fetch``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pretextflow.api import DataError, gunzip_bounded, join_uri, read_source_bytes

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

KNOWN_IDX_DATASETS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "class_names": FASHION_MNIST_CLASSES,
        # sha256 of the uncompressed IDX files (measured on Debian's dataset-fashion-mnist)
        "payload_sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        # md5 of the official .gz archives (as published by zalandoresearch/fashion-mnist)
        "archive_md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83fd310",
        },
    },
}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def fetch_known(
    name: str, dest: str | Path, mirror: str | None = None, storage_options: dict[str, Any] | None = None
) -> Path:
    """Download a known IDX dataset's four files to ``dest`` (skipping verified ones), checking
    every file's checksum. ``mirror`` replaces the official base URL (any fsspec URI)."""
    if name not in KNOWN_IDX_DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(KNOWN_IDX_DATASETS)}")
    info = KNOWN_IDX_DATASETS[name]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = mirror or info["url"]
    for stem, sha in info["payload_sha256"].items():
        target = dest / f"{stem}.gz"
        if target.exists() and _payload_sha256(target.read_bytes()) == sha:
            continue
        archive = read_source_bytes(join_uri(base, f"{stem}.gz"), storage_options)
        archive_ok = hashlib.md5(archive).hexdigest() == info["archive_md5"][f"{stem}.gz"]
        if not archive_ok and _payload_sha256(archive) != sha:
            raise DataError(
                f"{join_uri(base, stem + '.gz')}: checksum mismatch (neither the official archive "
                f"md5 nor the payload sha256 matches). The download is corrupt or from the "
                f"wrong dataset; nothing was written. Retry, or use another mirror."
            )
        tmp = target.with_suffix(".gz.part")
        tmp.write_bytes(archive)
        tmp.replace(target)  # atomic: a failed fetch never leaves a half file under the real name
    return dest


def _payload_sha256(archive: bytes, max_bytes: int = 2048 << 20) -> str:
    try:  # bounded: a mirror's file may be anything, a gzip bomb included
        return hashlib.sha256(gunzip_bounded(archive, "download", max_bytes)).hexdigest()
    except DataError:
        return ""
