"""What every stage task shares: config parsing, retries on transient faults, run logging."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import NONE, CachePolicy

from pretextflow.core.config import load_config
from pretextflow.core.errors import PretextflowError
from pretextflow.core.security.redaction import add_record_transform, install_log_redaction
from pretextflow.core.stages import StageContext
from pretextflow.core.store import is_transient_io_error
from pretextflow.core.training.events import EventBus


def is_transient(exc: BaseException) -> bool:
    """Storage and network hiccups are worth a retry; our own validation errors never are, nor a
    full disk, a missing permission or a read-only store (``core.store.PERMANENT_ERRNOS``): those
    fail at once with their message instead of after two pointless back-offs. An error that says
    itself whether it is ``transient`` (StoreError) is taken at its word."""
    if isinstance(exc, PretextflowError):
        flag = getattr(exc, "transient", None)
        if flag is not None:
            return bool(flag)
        cause = exc.__cause__
        return cause is not None and is_transient(cause)
    return is_transient_io_error(exc)  # OSError, incl. ConnectionError and TimeoutError


def retry_transient(task, task_run, state) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


# Ingest and report always run (ingest decides itself whether the data changed; a report is a new
# run). They keep no Prefect result. Retries back off: 2 s, then 10 s (a store or network blip
# usually passes within seconds); every stage is safe to retry (atomic writes, atomic ingest).
TASK_OPTIONS: dict[str, Any] = dict(
    retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NONE, persist_result=False
)


@dataclass
class StageArtifactCache(CachePolicy):
    """Prefect's cache key for a stage = the stage's own key (the folder of its artifact in the
    store), offered only while that artifact is complete. So the Prefect UI shows a rerun's
    stages as Cached, and a deleted artifact can never be served from a stale Prefect cache
    entry: without the artifact there is no key, and the stage recomputes."""

    stage: str = ""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        try:
            ctx = context(inputs["config"], inputs.get("workspace"))
            key = ctx.keys(ctx.dataset())[self.stage]
            if not ctx.store.is_complete(self.stage, key):
                return None
        except Exception:  # no dataset yet, bad config, store unreachable...: no cache; the task itself
            return None  # meets the error, reports it, and retries it if it is transient
        return f"pretextflow-{self.stage}-{key}-{hashlib.sha256(ctx.store.uri.encode()).hexdigest()[:8]}"


def stage_task_options(stage: str) -> dict[str, Any]:
    return {**TASK_OPTIONS, "cache_policy": StageArtifactCache(stage=stage), "persist_result": True}


def hide_user_error_traceback(record: logging.LogRecord) -> None:
    """A user error (bad config, bad data) is reported as one clear line, in the console and the
    Prefect UI alike; Prefect's engine would otherwise attach the traceback from deep inside."""
    if record.exc_info and isinstance(record.exc_info[1], PretextflowError):
        record.exc_info, record.exc_text = None, None


def install_log_filter() -> None:
    """User errors lose their tracebacks, and secrets are redacted, as each log record is created
    (one record factory, ``core.security.redaction``): a handler-level filter would be lost whenever
    Prefect sets up its logging again (new handlers)."""
    install_log_redaction()  # no secret reaches a handler: console, Prefect's API, files
    add_record_transform(hide_user_error_traceback)


install_log_filter()


# The event bus of the flow run in progress (``core.runs.watch``): a flow sets it once, and every
# stage task it runs in this process (in its thread, or in a thread pool's: Prefect copies the
# context) gets it through ``context``. Tasks in other processes (a process pool, Dask) see none.
_EVENTS: ContextVar[EventBus | None] = ContextVar("pretextflow_events", default=None)


@contextmanager
def watching(events: EventBus) -> Iterator[EventBus]:
    """The stage tasks run inside this block report to ``events``."""
    token = _EVENTS.set(events)
    try:
        yield events
    finally:
        _EVENTS.reset(token)


def context(config: dict[str, Any], workspace: str | None) -> StageContext:
    ctx = StageContext.create(load_config(raw=dict(config)), workspace)
    events = _EVENTS.get()
    if events is not None:
        ctx.events = events
    return ctx


@contextmanager
def watched_flow(
    config: dict[str, Any], workspace: str | None, progress: str | None = None, loggers: bool = True
) -> Iterator[Any]:
    """A flow run watched as one run (``core.runs.watch.watched_run``): its bus built once, with the
    progress, the live history and (``loggers``) the logger plugins; ``run_start`` now, ``run_end``
    when the block ends, however it ends; the stage tasks inside report to it."""
    from pretextflow.core.runs.watch import watched_run

    ctx = StageContext.create(load_config(raw=dict(config)), workspace)
    with watched_run(ctx.cfg, ctx.registry, ctx.store, ctx.ws.root, progress=progress, loggers=loggers) as watch:
        with watching(watch.events):
            yield watch


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t
