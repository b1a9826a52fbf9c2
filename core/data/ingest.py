"""Ingest: source (any fsspec URI) -> dataset-format plugin -> canonical ``data/<name>/`` ->
``dvc add data`` + ``dvc push``. A ``.zip`` / ``.tar[.gz]`` source is extracted safely first
(``core.sources.local_source``).

Atomic: either the new version is in ``data/<name>``, in ``data.dvc`` and in the DVC remote, or
``data/``, ``data.dvc`` and the remote's files are as they were. Reading and encoding the source
touch nothing. Under the workspace lock the new files are written to a staging folder beside
``data/`` and swapped in with two renames; a journal (``.pretextflow-tmp/ingest-journal.json``:
what was swapped, the previous ``data.dvc``) is written before anything changes and removed only
once ``dvc push`` has succeeded (the commit point). A failure in this process rolls back at once;
a process that died (SIGKILL, power cut of the process, OOM killer) is rolled back by the next
ingest, refresh or stage that reads the data, before it does anything else. So ``data.dvc``
never keeps naming a version that is not in the remote, and neither does a manifest made from it.
The remote itself is never rolled back: it is content-addressed and may be shared, so a push that
died half-way can leave unreferenced objects there (``dvc gc --cloud`` removes them), never fewer."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pretextflow.core.config import validate_plugin_params
from pretextflow.core.data.build import Build, prepare_version
from pretextflow.core.data.dataset import Dataset, check_name, load_dataset
from pretextflow.core.data.incremental import CACHE_DIR, stamps_path, version_digest, write_change, write_stamps
from pretextflow.core.data.layout import DEFAULT_SHARD_MB
from pretextflow.core.data.sources import local_source
from pretextflow.core.data.versioning import track_and_push, workspace_lock
from pretextflow.core.errors import DataError
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.core.security.redaction import redact
from pretextflow.core.store import PERMANENT_ERRNOS
from pretextflow.core.workspace import Workspace

log = logging.getLogger("pretextflow.ingest")

TMP_DIR = ".pretextflow-tmp"  # staging and the journal; only ever written under the workspace lock
JOURNAL = "ingest-journal.json"
MIN_FREE_SLACK = 16 * 2**20  # beyond the dataset's own size, for DVC's metadata and the journal


@dataclass
class IngestSettings:
    """How to ingest (not what): shard size, decode workers, the runner."""

    shard_mb: float = DEFAULT_SHARD_MB
    workers: int | None = None  # None = every core
    runner: str = "local"  # or "dask"
    dask_address: str | None = None  # None with runner dask = a LocalCluster of `workers` processes
    # progress(part, done, total) as images are decoded ("decode") and shards written ("shards"):
    # for a progress bar, never part of what is ingested
    progress: Callable[[str, int, int], None] | None = None


def ingest(
    ws: Workspace,
    source: str,
    fmt: str,
    name: str,
    options: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    push: bool = True,
    registry: Registry | None = None,
    logger: logging.Logger | logging.LoggerAdapter = log,
    settings: IngestSettings | None = None,
) -> dict[str, Any]:
    """Ingest ``source`` as dataset ``name``: read only what changed since the previous version,
    write only the shards that changed, version and push (see the module docstring)."""
    ws.require_initialised()
    registry, settings = registry or get_registry(), settings or IngestSettings()
    check_name(name)
    fmt_cls = registry.dataset_format(fmt)
    opts = validate_plugin_params(fmt_cls.Options, options or {}, "options")
    if settings.shard_mb <= 0:
        raise DataError(f"--shard-mb must be positive, got {settings.shard_mb}.")
    logger.info("ingest %s: reading %s as %s", name, redact(source), fmt)
    ensure_consistent(ws, logger)  # an ingest that died is rolled back before its data is read as the previous
    pool = _new_pool(ws)
    try:
        with local_source(source, storage_options or {}) as (src, src_options):  # archives: extracted safely
            build = prepare_version(ws, name, fmt, fmt_cls, opts, src, src_options, settings, pool, logger)
        version, changed = _commit_version(ws, name, build, push, logger)
    finally:
        shutil.rmtree(pool, ignore_errors=True)
    t_finish = time.perf_counter()
    if changed:
        digest = version_digest((ws.data_dir / name / "meta.json").read_bytes())
        write_change(ws.root, name, digest, asdict(build.changes))
        write_stamps(
            stamps_path(ws.root, name),
            version_digest((ws.data_dir / name / "meta.json").read_bytes()),
            build.entries,
            build.shas,
        )
    dataset = load_dataset(str(ws.data_dir), name)
    build.timing["finish_s"] = round(time.perf_counter() - t_finish, 3)  # stamps, change note, reload
    logger.info(
        "ingest %s: %s; %s; data version %s (%d train / %d test images, %d shards, %s)",
        name,
        "written" if changed else "unchanged",
        build.changes.describe(),
        version,
        dataset.meta["counts"]["train"],
        dataset.meta["counts"]["test"],
        len(dataset.meta["shards"]),
        "pushed" if push else "not pushed",
    )
    out = summary(dataset, version, changed)
    out.update(changes={**asdict(build.changes), "description": build.changes.describe()}, timing=build.timing)
    return out


def _commit_version(
    ws: Workspace, name: str, build: Build, push: bool, logger: logging.Logger | logging.LoggerAdapter
) -> tuple[str, bool]:
    """Under the workspace lock: stage the new version, swap it in, ``dvc add`` + push, commit."""
    target = ws.data_dir / name
    with workspace_lock(ws, f"ingest {name}"):
        recover_interrupted_ingest(ws, logger)
        meta_now = (target / "meta.json").read_bytes() if (target / "meta.json").is_file() else None
        if meta_now != build.prev_meta_bytes:
            raise DataError(
                f"data/{name} changed while this ingest was reading the source (another ingest?). "
                f"Ingest again; nothing was changed."
            )
        changed = not build.unchanged
        version = swap_in(
            ws, name, build.write if changed else None, build.bytes_to_write, push, logger, timing=build.timing
        )
    return version, changed


def swap_in(
    ws: Workspace,
    name: str,
    write: Callable[[Path], None] | None,
    nbytes: int,
    push: bool,
    logger: logging.Logger | logging.LoggerAdapter,
    what: str = "ingest",
    timing: dict[str, Any] | None = None,
) -> str:
    """Make the version ``write(folder)`` stages the new ``data/<name>`` (``write`` None: the
    folder stays as it is), ``dvc add`` + push it, commit; roll back on any failure. The caller
    holds the workspace lock. Returns the data version; ``timing`` gets the DVC steps' seconds."""
    txn = _Transaction(ws, name, write is not None)
    try:
        if write is not None:
            check_workspace_room(ws, nbytes)
        txn.begin()
        if write is not None:
            txn.stage(write)
            txn.swap()
        version = track_and_push(ws, push=push, timing=timing)
        txn.commit()
    except BaseException:
        try:
            txn.rollback()  # data/ and data.dvc as they were
        except Exception:  # the journal stays: the next ingest (or reader) rolls back again
            logger.exception("%s %s: rolling back failed; the next run will retry it", what, name)
        raise
    return version


def _new_pool(ws: Workspace) -> Path:
    """A private folder for this ingest's decoded chunks (outside the lock-guarded staging area,
    since decoding happens before the lock is taken); pools of dead ingests are removed."""
    base = ws.root / CACHE_DIR
    base.mkdir(exist_ok=True)
    for old in base.glob("pool-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    pool = base / f"pool-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pool.mkdir()
    return pool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_workspace_room(ws: Workspace, nbytes: int) -> None:
    """Pre-flight before anything is written: the workspace takes a file and has room for the new
    dataset twice (the staged copy and DVC's cache copy) plus some slack."""
    tmp = ws.root / TMP_DIR
    try:
        tmp.mkdir(exist_ok=True)
        probe = tmp / f"write-check-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise _write_error(ws, exc) from exc
    need = 2 * nbytes + MIN_FREE_SLACK
    free = shutil.disk_usage(ws.root).free
    if free < need:
        raise DataError(
            f"ingest cannot start: {free / 2**20:.0f} MiB free in the workspace {ws.root}, the new "
            f"dataset needs about {need / 2**20:.0f} MiB (a staged copy plus DVC's cache copy). "
            f"Free space there (or `dvc gc` old versions), then ingest again; nothing was changed."
        )


def _write_error(ws: Workspace, exc: OSError) -> DataError:
    why = (
        "no space left"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT)
        else "it is not writable"
        if isinstance(exc, PermissionError) or exc.errno in PERMANENT_ERRNOS
        else "a filesystem error"
    )
    return DataError(
        f"cannot write the new dataset into the workspace {ws.root}: {why} ({exc}). "
        f"Free space or fix the folder's permissions, then ingest again; data/ and data.dvc "
        f"are as they were."
    )


class _Transaction:
    """One ingest's changes to ``data/<name>`` and ``data.dvc``, undoable until :meth:`commit`.
    Every step is recorded in the journal first, so that :func:`recover_interrupted_ingest` can
    undo it after the process died at any point (each undo step is idempotent)."""

    def __init__(self, ws: Workspace, name: str, changed: bool):
        self.ws = ws
        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        target = ws.data_dir / name
        self.journal = {
            "pid": os.getpid(),
            "name": name,
            "changed": changed,
            "target": str(target.relative_to(ws.root)),
            "staging": f"{TMP_DIR}/{tag}",
            "old": f"{TMP_DIR}/{tag}-old",
            "had_previous": target.exists(),
            "data_dir_existed": ws.data_dir.exists(),
            "data_dvc": base64.b64encode(ws.data_dvc.read_bytes()).decode() if ws.data_dvc.exists() else None,
        }
        self.started = False

    def begin(self) -> None:
        _write_journal(self.ws, self.journal)
        self.started = True

    def stage(self, write: Callable[[Path], None]) -> None:
        """Write the new version into the (new) staging folder with ``write(folder)``."""
        staging = self.ws.root / self.journal["staging"]
        try:
            staging.mkdir(parents=True)
            write(staging)
        except OSError as exc:
            raise _write_error(self.ws, exc) from exc

    def swap(self) -> None:
        target, staging = self.ws.root / self.journal["target"], self.ws.root / self.journal["staging"]
        try:
            self.ws.data_dir.mkdir(exist_ok=True)
            if self.journal["had_previous"]:
                target.rename(self.ws.root / self.journal["old"])
            staging.rename(target)
        except OSError as exc:
            raise _write_error(self.ws, exc) from exc

    def commit(self) -> None:
        """The new version is in data/, data.dvc and the remote: drop the journal (the commit
        point), then the previous files."""
        (self.ws.root / TMP_DIR / JOURNAL).unlink()
        self.started = False
        shutil.rmtree(self.ws.root / self.journal["old"], ignore_errors=True)

    def rollback(self) -> None:
        if self.started:
            _undo(self.ws, self.journal)
            self.started = False
        else:  # failed before the journal: at most a staging folder or a write check to clear
            _clear_tmp(self.ws)


def _write_journal(ws: Workspace, journal: dict[str, Any]) -> None:
    tmp_dir = ws.root / TMP_DIR
    tmp_dir.mkdir(exist_ok=True)
    part = tmp_dir / (JOURNAL + ".part")
    with open(part, "w") as f:
        json.dump(journal, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, tmp_dir / JOURNAL)  # atomic: a journal is whole or absent


def _undo(ws: Workspace, j: dict[str, Any]) -> None:
    """Put back ``data/<name>`` and ``data.dvc`` as the journal recorded them. Idempotent: safe to
    run again after dying half-way through it."""
    target, old = ws.root / j["target"], ws.root / j["old"]
    if j["changed"]:
        if old.exists():  # the previous version was moved aside: whatever is at target is new
            if target.exists():
                shutil.rmtree(target)
            old.rename(target)
        elif not j["had_previous"] and target.exists():  # a first version of this dataset: remove it
            shutil.rmtree(target)
        # (had_previous and no old folder: the swap never started, target is the previous version)
    if j["data_dvc"] is None:
        ws.data_dvc.unlink(missing_ok=True)
    else:
        before = base64.b64decode(j["data_dvc"])
        if not ws.data_dvc.exists() or ws.data_dvc.read_bytes() != before:
            part = ws.data_dvc.with_name(ws.data_dvc.name + ".pretextflow-part")
            part.write_bytes(before)
            os.replace(part, ws.data_dvc)
    if not j["data_dir_existed"] and ws.data_dir.is_dir() and not any(ws.data_dir.iterdir()):
        ws.data_dir.rmdir()
    _clear_tmp(ws)  # the journal goes last


def _clear_tmp(ws: Workspace) -> None:
    """Remove staging folders, leftovers and, last, the journal (caller holds the lock: nothing
    in the folder belongs to a live ingest)."""
    tmp = ws.root / TMP_DIR
    if not tmp.is_dir():
        return
    for entry in tmp.iterdir():
        if entry.name != JOURNAL:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
    (tmp / JOURNAL).unlink(missing_ok=True)


def recover_interrupted_ingest(ws: Workspace, logger: logging.Logger | logging.LoggerAdapter = log) -> bool:
    """Undo an ingest whose process died before its commit point (caller holds the workspace lock).
    Returns whether there was one."""
    path = ws.root / TMP_DIR / JOURNAL
    if not path.exists():
        _clear_tmp(ws)  # staging left by a process that died before writing its journal
        return False
    j = json.loads(path.read_text())
    logger.warning(
        "ingest %s (pid %s) was interrupted before it finished; restoring data/%s and data.dvc as they were before it",
        j["name"],
        j["pid"],
        j["name"],
    )
    _undo(ws, j)
    return True


def ensure_consistent(ws: Workspace, logger: logging.Logger | logging.LoggerAdapter = log) -> None:
    """For readers of data/: if an ingest is in progress, wait for it; if one died, roll it back.
    Costs one stat() when there is no journal (the common case)."""
    if (ws.root / TMP_DIR / JOURNAL).exists():
        with workspace_lock(ws, "recover an interrupted ingest"):
            recover_interrupted_ingest(ws, logger)


def summary(dataset: Dataset, version: str, changed: bool | None = None) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "data_version": version,
        "fingerprint": dataset.fingerprint,
        "changed": changed,
        "counts": dataset.meta["counts"],
        "image_shape": dataset.meta["image_shape"],
        "format": dataset.meta["format"],
    }
