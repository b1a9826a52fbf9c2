"""Logger plugins on the event bus: one :class:`LoggerSink` per logger the config turns on
(``logging.loggers``), built by :func:`build_logger_sinks`.

A sink never slows or fails the run. ``handle`` only puts the event on a bounded queue
(``put_nowait``: when the queue is full the event is dropped and counted, with one warning); a
daemon thread takes events off the queue and calls the logger:

  run_start -> start(RunInfo)        metrics -> log_metrics(payload, step, stage)  (loss -> pretrain/loss)
  artifact  -> log_artifact(path, name)   run_end -> end(status, metrics)

(progress and stage_* events are not a logger's business: they are ignored). The first exception
the logger raises is warned about once (the logger's name and the error, redacted), the logger is
switched off and the rest of the queue is drained silently. :meth:`LoggerSink.close` waits a
bounded time for the queue to empty (a dead tracking server must not hang the end of the run),
then warns about what it could not send. A run closed without a ``run_end`` event (a crash that
skipped it) is ended as ``failed``, so the tracker does not show it running forever.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from pretextflow.core.config import RunConfig
from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import RunInfo, RunLogger
from pretextflow.core.registry.preflight import logger_options
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.core.security.redaction import redact
from pretextflow.core.training.events import Event

log = logging.getLogger("pretextflow.tracking")

HANDLED = ("run_start", "metrics", "artifact", "run_end")
"""The event kinds a logger receives; the others (progress, stage_start, stage_end) are ignored."""
QUEUE_SIZE = 10_000
CLOSE_TIMEOUT_S = 10.0
_STOP = object()


def numeric(values: Any) -> dict[str, float]:
    """``name -> float`` of the numbers in ``values`` (ints, floats, 0-dim tensors); others are left out."""
    out: dict[str, float] = {}
    for key, value in dict(values or {}).items():
        if isinstance(value, (str, bytes)):
            continue
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


class LoggerSink:
    """An :class:`~pretextflow.core.training.events.EventBus` sink that feeds one
    :class:`RunLogger` from its own thread (see the module's docstring)."""

    def __init__(self, logger: RunLogger, queue_size: int = QUEUE_SIZE, close_timeout: float = CLOSE_TIMEOUT_S):
        self.logger = logger
        self.name = f"the {logger.name} logger"
        self.close_timeout = close_timeout
        self.dropped = 0  # events refused because the queue was full
        self.delivered = 0  # events the logger took without raising
        self.error: BaseException | None = None  # the first exception the logger raised (then it is off)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._seen: set[str] = set()  # the kinds enqueued: whether a run started and ended
        self._state = {"started": False, "ended": False}  # what the logger was told (worker thread)
        self._warned: set[str] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"pretextflow-logger-{logger.name}", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        """Whether events are still taken (not closed, and the logger has not failed)."""
        return self.error is None and not self._closed

    # -- the emitting side: never blocks, never raises -------------------------------------
    def handle(self, event: Event) -> None:
        if event.kind not in HANDLED or not self.active:
            return
        try:
            self._queue.put_nowait(event)
            self._seen.add(event.kind)
        except queue.Full:
            self.dropped += 1
            self._warn_once(
                "full",
                "%s cannot keep up: its queue of %d events is full, so new events are dropped and counted "
                "(the tracker is slower than the run); the run goes on",
                self.name,
                self._queue.maxsize,
            )

    # -- the logger's thread ---------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self.error is None:
                    self._deliver(item)
                    self.delivered += 1
            except Exception as exc:  # noqa: BLE001 (a logger never fails the run)
                self._fail(exc)
            finally:
                self._queue.task_done()

    def _deliver(self, event: Event) -> None:
        state, payload = self._state, event.payload
        if event.kind == "run_start":
            if state["started"]:
                return  # one tracker run per pipeline run
            self.logger.start(_run_info(payload))
            state["started"] = True
        elif not state["started"] or state["ended"]:
            return  # the lifecycle is start, any number of logs, end: nothing outside it
        elif event.kind == "metrics":
            metrics = {_named(k, event.stage): v for k, v in numeric(payload).items()}
            if metrics:
                self.logger.log_metrics(metrics, event.step, event.stage)
        elif event.kind == "artifact":
            self.logger.log_artifact(str(payload["path"]), payload.get("name"))
        elif event.kind == "run_end":
            state["ended"] = True
            self.logger.end(str(payload.get("status", "completed")), numeric(payload.get("metrics")))

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self._warn_once(
            "off",
            "%s failed (%s: %s); it is switched off for the rest of this run, the run goes on",
            self.name,
            type(exc).__name__,
            redact(str(exc).strip().splitlines()[0] if str(exc).strip() else "")[:500],
        )

    def _warn_once(self, what: str, message: str, *args: Any) -> None:
        # "off" (failed) and "late" (close timed out) are one warning: the logger stopped sending
        key = "off" if what in ("off", "late") else what
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # -- the end -----------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> bool:
        """Send what is queued, then stop the thread; wait at most ``timeout`` seconds (default
        ``close_timeout``). True when everything queued was handled in time. Idempotent."""
        if self._closed:
            return not self._thread.is_alive()
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        if "run_start" in self._seen and "run_end" not in self._seen and self.error is None:
            self._put(Event("run_end", payload={"status": "failed", "metrics": {}}), deadline)
        self._closed = True
        self._put(_STOP, deadline)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            return True
        left = self._queue.qsize()
        if self.error is None:
            self.error = TimeoutError(f"{self.name} did not finish in time")
        self._warn_once(
            "late",
            "%s did not finish sending within %g s (%d event(s) not sent: the tracker may be slow or "
            "unreachable); it is left behind, the run goes on",
            self.name,
            self.close_timeout if timeout is None else timeout,
            left,
        )
        return False

    def _put(self, item: Any, deadline: float) -> None:
        try:
            self._queue.put(item, timeout=max(0.001, deadline - time.monotonic()))
        except queue.Full:
            pass  # the thread is stuck: close() reports it


def _named(name: str, stage: str) -> str:
    """``loss`` of stage ``pretrain`` -> ``pretrain/loss``; a name with a ``/`` is kept as it is."""
    return name if "/" in name or not stage else f"{stage}/{name}"


def _run_info(payload: dict[str, Any]) -> RunInfo:
    return RunInfo(
        run_id=str(payload["run_id"]),
        config=dict(payload.get("config") or {}),
        workspace=str(payload.get("workspace") or ""),
        name=str(payload.get("name") or ""),
    )


def build_logger_sinks(
    cfg: RunConfig, registry: Registry | None = None, close_timeout: float = CLOSE_TIMEOUT_S
) -> list[LoggerSink]:
    """One :class:`LoggerSink` per logger of ``cfg.logging.loggers``, in order, with its options
    validated (ConfigError / PluginError naming the field or the missing library: before the run
    starts). A logger whose constructor raises anything but a PluginError is warned about and left
    out; the run goes on without it."""
    registry = registry or get_registry()
    sinks: list[LoggerSink] = []
    for name, options in logger_options(cfg, registry).items():
        try:
            logger = registry.logger(name)(options)
        except PluginError:
            for sink in sinks:
                sink.close(timeout=1.0)
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "the %s logger could not be set up (%s: %s); the run goes on without it",
                name,
                type(exc).__name__,
                redact(str(exc)),
            )
            continue
        sinks.append(LoggerSink(logger, close_timeout=close_timeout))
    return sinks
