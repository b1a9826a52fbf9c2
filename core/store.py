"""The artifact store: any fsspec URI (a local folder, ``memory://``, ``s3://``), laid out by stage
and key (``pretrain/<key>/...``). Writes go to a temporary name and are renamed into place, so a
crash never leaves half a file under the real name; a stage is complete only once its
``_COMPLETE`` marker exists (written last).

Every filesystem error is raised as a :class:`StoreError` naming the store and the fix, marked
``transient`` when a retry can help (a dropped connection, an I/O hiccup) and not when it cannot
(no space left, permission denied, a read-only filesystem): the Prefect tasks retry only the
former (``flows.common.is_transient``)."""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pretextflow.core.errors import PretextflowError

COMPLETE = "_COMPLETE"


# errno values a retry will not fix: a full disk or quota, a missing permission, a read-only
# filesystem, a file where a folder must be. Any other filesystem error (EIO, a timeout, a reset
# connection, an S3 5xx that s3fs maps to OSError, a file that vanished under a concurrent run)
# may pass, and is worth a retry.
PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENAMETOOLONG,
    }
)
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _modified(entry: dict[str, Any]) -> float:
    """A listing entry's modification time (seconds since the epoch) across fsspec backends; now
    when the backend reports none (then only the dead-writer rule applies)."""
    value = entry.get("mtime", entry.get("LastModified", entry.get("last_modified", entry.get("created"))))
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return time.time()


def is_transient_io_error(exc: BaseException) -> bool:
    """Whether an exception from a filesystem is worth retrying (see ``PERMANENT_ERRNOS``)."""
    if isinstance(exc, PermissionError):  # s3fs raises it for AccessDenied, sometimes without an errno
        return False
    return isinstance(exc, OSError) and exc.errno not in PERMANENT_ERRNOS


# A temporary file's name says who writes it: .tmp-<uuid>-<pid>.<host hash>-<name>. A process killed
# mid-write (SIGKILL, OOM, power) leaves it behind; the next stage in that folder removes the ones
# whose writer is gone (same host, pid no longer running) or that are older than a day.
_TEMP_NAME = re.compile(r"^\.tmp-[0-9a-f]{32}-(?:(\d+)\.([0-9a-f]{8})-)?")
STALE_TEMP_SECONDS = 24 * 3600


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix() -> str:
    return f".tmp-{uuid.uuid4().hex}-{os.getpid()}.{_host_tag()}-"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class StoreError(PretextflowError):
    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient  # kept when pickled (BaseException pickles __dict__)


class ArtifactStore:
    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri_of(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    @contextmanager
    def _io(self, action: str, *parts: str) -> Iterator[None]:
        """Turn a filesystem error into a StoreError that says what failed, where, and the fix."""
        try:
            yield
        except OSError as exc:
            raise self.error(action, exc, *parts) from exc

    def error(self, action: str, exc: OSError, *parts: str) -> StoreError:
        where = self.uri_of(*parts) if parts else self.uri
        code = getattr(exc, "errno", None)
        if code in _NO_SPACE:
            return StoreError(
                f"no space left on {self.uri} while trying to {action} {where} ({exc}). Free space "
                f"there, or set store.uri to a store with room; nothing was written under that name."
            )
        if isinstance(exc, PermissionError) or code in _NOT_WRITABLE:
            what = "writable" if action in ("write", "remove") else "readable"
            return StoreError(
                f"the artifact store {self.uri} refused to {action} {where} ({exc}): it is not "
                f"{what} by this user. Fix its permissions, or set store.uri to a folder or bucket "
                f"you can write."
            )
        if is_transient_io_error(exc):
            return StoreError(
                f"cannot {action} {where}: {exc.__class__.__name__}: {exc}. A transient storage "
                f"error (the stage is retried); if it persists, check the store's connection and "
                f"health (store.uri).",
                transient=True,
            )
        return StoreError(
            f"cannot {action} {where}: {exc}. Check store.uri: it must name a folder or bucket this user can write."
        )

    def exists(self, *parts: str) -> bool:
        with self._io("look up", *parts):
            return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        with self._io("read", *parts):
            return self.fs.cat_file(self.path(*parts))

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> str:
        target = self.path(*parts)
        parent = target.rsplit("/", 1)[0]
        tmp = f"{parent}/{temp_prefix()}{target.rsplit('/', 1)[1]}"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)
        except OSError as exc:
            try:  # a partial temp file (disk full mid-write) must not stay behind
                self.fs.rm(tmp)
            except OSError:  # incl. FileNotFoundError: it was never created
                pass
            raise self.error("write", exc, *parts) from exc
        return self.uri_of(*parts)

    def remove(self, *parts: str) -> None:
        with self._io("remove", *parts):
            self.fs.rm(self.path(*parts))

    def check_writable(self, min_free_bytes: int = 0) -> None:
        """Pre-flight, before a stage starts work: the store takes a small write and its removal
        and, when it is a local folder, has at least ``min_free_bytes`` free. Raises a StoreError
        naming the store and the fix, so a full or read-only store fails in a second, not after an
        hour of training."""
        probe = f".pretextflow-write-check-{uuid.uuid4().hex[:12]}"
        self.write_bytes(b"pretextflow write check\n", probe)
        self.remove(probe)
        if min_free_bytes > 0 and isinstance(self.fs, LocalFileSystem):
            free = shutil.disk_usage(self.root).free
            if free < min_free_bytes:
                raise StoreError(
                    f"only {free / 1e6:.0f} MB free on the artifact store {self.uri}; at least "
                    f"{min_free_bytes / 1e6:.0f} MB are required before a stage starts "
                    f"(store.min_free_mb). Free space there, set store.uri to a store with room, or "
                    f"lower store.min_free_mb."
                )

    def remove_stale_temp_files(self, *parts: str) -> list[str]:
        """Remove the temporary files a killed writer left in the folder ``parts``: those written on
        this host by a process that is no longer running, and any older than STALE_TEMP_SECONDS (a
        writer on another host). A live writer's file, here or elsewhere, is left alone. Returns the
        names removed."""
        folder = self.path(*parts)
        removed = []
        with self._io("clean up", *parts):
            if not self.fs.exists(folder):
                return []
            entries = self.fs.ls(folder, detail=True)
        now = time.time()
        for entry in entries:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            match = _TEMP_NAME.match(name)
            if not match or entry.get("type") == "directory":
                continue
            pid, host = match.group(1), match.group(2)
            dead = pid is not None and host == _host_tag() and not _pid_running(int(pid))
            if dead or now - _modified(entry) > STALE_TEMP_SECONDS:
                try:
                    self.fs.rm(entry["name"])
                    removed.append(name)
                except FileNotFoundError:  # another run cleaned it first
                    pass
                except OSError as exc:
                    raise self.error("remove", exc, *parts, name) from exc
        return removed

    def write_json(self, obj: Any, *parts: str) -> str:
        return self.write_bytes((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), *parts)

    def is_complete(self, stage: str, key: str) -> bool:
        return self.exists(stage, key, COMPLETE)

    def mark_complete(self, stage: str, key: str, info: dict[str, Any] | None = None) -> None:
        self.write_json(info or {}, stage, key, COMPLETE)

    def listdir(self, *parts: str) -> list[str]:
        p = self.path(*parts)
        with self._io("list", *parts):
            if not self.fs.exists(p):
                return []
            return sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in self.fs.ls(p, detail=False))
