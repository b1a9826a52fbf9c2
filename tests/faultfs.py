"""Fault injection for tests: ``flaky://`` is the local filesystem (``flaky:///abs/path`` is
``/abs/path``) whose reads, writes, renames, look-ups and listings fail now and then.

The schedule is deterministic: the injected operations are counted across all instances, and the
``every``-th, 2*``every``-th, ... call raises a transient error (EIO, a reset connection and a
timeout, in turn), as a flaky disk or an object store does. ``max_per_task`` bounds the failures
one Prefect task run (all its attempts) sees: a retry policy of N retries can only be expected to
ride out N faults in a row, so the schedule stays within what the pipeline promises (retries=2).
Removals are never failed, so cleanup paths run as written. ``FlakyFileSystem.failures`` records
every injected fault: (call number, operation, path, Prefect task run name or None)."""

from __future__ import annotations

import errno
import threading
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "flaky"
_FAULTS = (
    lambda op, p: OSError(errno.EIO, f"injected I/O error during {op}", p),
    lambda op, p: ConnectionResetError(errno.ECONNRESET, f"injected connection reset during {op}", p),
    lambda op, p: TimeoutError(errno.ETIMEDOUT, f"injected timeout during {op}", p),
)


class FlakyFileSystem(LocalFileSystem):
    protocol = PROTOCOL
    root_marker = "/"

    _lock = threading.Lock()
    calls = 0
    failures: list[tuple[int, str, str, str | None]] = []
    per_task: dict[str, int] = {}
    enabled = True

    def __init__(self, every: int = 7, max_per_task: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        self.every, self.max_per_task = int(every), int(max_per_task)

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls.calls, cls.failures, cls.per_task, cls.enabled = 0, [], {}, True

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(PROTOCOL + "://"):
            path = path[len(PROTOCOL) + 3 :]
        return LocalFileSystem._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self._strip_protocol(name)}"

    def _maybe_fail(self, op: str, path: Any) -> None:
        task_id, task_name = _task_run()
        with self._lock:
            if not FlakyFileSystem.enabled:
                return
            FlakyFileSystem.calls += 1
            n = FlakyFileSystem.calls
            if n % self.every or FlakyFileSystem.per_task.get(task_id, 0) >= self.max_per_task:
                return
            FlakyFileSystem.per_task[task_id] = FlakyFileSystem.per_task.get(task_id, 0) + 1
            FlakyFileSystem.failures.append((n, op, str(path), task_name))
            fault = _FAULTS[(len(FlakyFileSystem.failures) - 1) % len(_FAULTS)]
        raise fault(op, str(path))

    # the operations the artifact store uses; each may fail before it touches the disk
    def cat_file(self, path, start=None, end=None, **kwargs):
        self._maybe_fail("read", path)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._maybe_fail("write", path)
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def mv(self, path1, path2, recursive=True, **kwargs):
        self._maybe_fail("rename", path1)
        return super().mv(path1, path2, recursive=recursive, **kwargs)

    def exists(self, path, **kwargs):
        self._maybe_fail("exists", path)
        return super().exists(path, **kwargs)

    def ls(self, path, detail=False, **kwargs):
        self._maybe_fail("list", path)
        return super().ls(path, detail=detail, **kwargs)

    def makedirs(self, path, exist_ok=False):
        self._maybe_fail("makedirs", path)
        return super().makedirs(path, exist_ok=exist_ok)


def _task_run() -> tuple[str, str | None]:
    """(id, name) of the Prefect task run making the call; ("", None) outside one."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return (str(ctx.task_run.id), ctx.task_run.name) if ctx is not None else ("", None)


def register() -> None:
    fsspec.register_implementation(PROTOCOL, FlakyFileSystem, clobber=True)
