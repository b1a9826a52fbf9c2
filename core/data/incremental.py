"""What an ingest must read again: the previous version it updates, and each image's stamp.

An image is read again unless its key is in the previous version and its stamp (size + mtime, an
ETag...) is the one recorded when that version was written, or the stamp is itself the content
hash the previous version holds. Stamps are machine-local facts (an mtime changes with a clone),
so they live outside the versioned data, in ``.pretextflow-cache/ingest/<name>.csv``, tied to the
version they describe: a missing or stale file only means more is read again, never a different
result. A previous version is updated only when it is schema 2, of the same format and options,
and whole; otherwise everything is read again (and the new version is laid out afresh)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pretextflow.core.data.dataset import SCHEMA_VERSION
from pretextflow.core.data.layout import Previous, load_previous
from pretextflow.core.data.shards import shard_paths
from pretextflow.core.errors import DataError
from pretextflow.core.registry.contracts import SourceEntry

CACHE_DIR = ".pretextflow-cache"  # machine-local, never versioned (in the workspace's .gitignore)


def stamps_path(ws_root: Path, name: str) -> Path:
    return ws_root / CACHE_DIR / "ingest" / f"{name}.csv"


def version_digest(meta_bytes: bytes) -> str:
    return hashlib.sha256(meta_bytes).hexdigest()


def read_stamps(path: Path, digest: str) -> dict[str, tuple[str, str]]:
    """key -> (stamp, sha256) recorded for the version with meta digest ``digest`` ({} if none)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    head, _, body = text.partition("\n")
    if head != f"# version {digest}":
        return {}
    try:
        return {key: (stamp, sha) for key, stamp, sha in csv.reader(io.StringIO(body))}
    except ValueError:
        return {}


def write_stamps(path: Path, digest: str, entries: Sequence[SourceEntry], shas: dict[str, str]) -> None:
    """Record the stamps of the version just written (atomically; a failure only costs re-reads)."""
    buf = io.StringIO()
    buf.write(f"# version {digest}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerows((e.key, e.stamp, shas[e.key]) for e in entries if e.stamp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + f".{os.getpid()}.part")
        part.write_text(buf.getvalue())
        os.replace(part, path)
    except OSError:
        pass


def previous_version(
    target: Path,
    meta_bytes: bytes | None,
    fmt: str,
    options: dict[str, Any],
    logger: logging.Logger | logging.LoggerAdapter,
) -> Previous | None:
    """The version at ``target`` (whose meta.json holds ``meta_bytes``; None: there is none) that
    this ingest may update in place, or None (read everything)."""
    if meta_bytes is None:
        return None
    try:
        meta = json.loads(meta_bytes)
    except ValueError:
        logger.warning("ingest %s: meta.json is not valid JSON; every image is read again", target.name)
        return None
    why = None
    if meta.get("schema_version") != SCHEMA_VERSION:
        why = f"it is schema {meta.get('schema_version')}; the new version is schema {SCHEMA_VERSION}"
    elif meta.get("format") != fmt or meta.get("options") != options:
        why = "its format or options differ"
    elif not all(_shard_whole(target, rec, meta["image_shape"]) for rec in meta.get("shards", [])):
        why = "a shard of it is missing or truncated"
    if why:
        logger.info(
            "ingest %s: the previous version is not updated in place (%s); every image is read", target.name, why
        )
        return None
    try:
        return load_previous(target, meta)
    except (DataError, OSError) as exc:
        logger.warning(
            "ingest %s: the previous version's index is unreadable (%s); every image is read", target.name, exc
        )
        return None


def _shard_whole(target: Path, rec: dict[str, Any], shape: list[int]) -> bool:
    paths = shard_paths(target, rec["name"])
    try:
        with open(paths["images"], "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            header_shape = read(f)[0]
            data_start = f.tell()
        size = paths["images"].stat().st_size
    except (OSError, ValueError):
        return False
    want = (rec["count"], *shape)
    return (
        tuple(header_shape) == want
        and size == data_start + int(np.prod(want))
        and paths["labels"].is_file()
        and paths["index"].is_file()
        and ("extents_md5" not in rec or paths["extents"].is_file())
    )


def split_known(
    entries: Sequence[SourceEntry], prev: Previous | None, stamps: dict[str, tuple[str, str]]
) -> tuple[list[SourceEntry], dict[str, str]]:
    """(the entries to read, key -> content hash of the others)."""
    to_read, known = [], {}
    for e in entries:
        place = prev.places.get(e.key) if prev else None
        if place is not None and e.stamp:
            sha = place[3]
            if e.stamp == sha or stamps.get(e.key) == (e.stamp, sha):
                known[e.key] = sha
                continue
        to_read.append(e)
    return to_read, known


def change_path(ws_root: Path, name: str) -> Path:
    return ws_root / CACHE_DIR / "ingest" / f"{name}.change.json"


def write_change(ws_root: Path, name: str, digest: str, change: dict[str, Any]) -> None:
    """Remember what the ingest that wrote version ``digest`` changed (for the report; kept out
    of meta.json so that the same images are the same version however they arrived)."""
    try:
        path = change_path(ws_root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": digest, "change": change}, sort_keys=True))
    except OSError:
        pass


def read_change(ws_root: Path, name: str, digest: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(change_path(ws_root, name).read_text())
    except (OSError, ValueError):
        return None
    return rec.get("change") if isinstance(rec, dict) and rec.get("version") == digest else None
