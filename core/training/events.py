"""What a running stage tells the outside while it runs: the one seam between the stages and
everything that watches them (progress bars, the live history, online monitors, logger plugins).

A stage holds an :class:`EventBus` and calls ``emit(event)``; the bus hands the event to every
sink in turn. A sink is any object with a ``handle(event)`` method. A sink that raises is warned
about once, then dropped for the rest of the run: watching a run never fails it. Sinks must be
quick (a logger that talks to a server queues the event and returns; see its plugin).

Events (``Event.kind``):

  run_start   payload: run_id, name (the config's), config (the resolved config, a dict, no secrets), workspace
  stage_start stage; payload: total (units of work, e.g. steps; None when unknown), unit
  progress    stage; payload: done, total, unit, label (a part of the stage: "decode", "features ssl";
              "" for the whole), eta_s, and what the stage wants shown (loss, images_per_s, epoch)
  metrics     stage, step (the global step; None for final values); payload: name -> float
              (pretrain/loss, pretrain/epoch_loss, monitor/rankme, probe/linear_top1, probe/ssl_linear_top1@10%...)
  artifact    stage; payload: path (a local file), name
  stage_end   stage; payload: status ("completed", "failed", "cached"), key, error (when failed)
  run_end     payload: run_id, status ("completed", "failed", "interrupted"), metrics (the final metrics,
              name -> float), and when known report_run_id, run_uri (the report's), error
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("pretextflow.events")

KINDS = ("run_start", "stage_start", "progress", "metrics", "artifact", "stage_end", "run_end")


@dataclass(frozen=True)
class Event:
    kind: str
    stage: str = ""
    step: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


class Sink(Protocol):
    def handle(self, event: Event) -> None: ...


class EventBus:
    """Fans events out to sinks; a failing sink is warned about once and dropped."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks: list[Sink] = list(sinks)
        self.run_id: str | None = None  # the run_start's, for whoever starts more processes for this run

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, kind: str, stage: str = "", step: int | None = None, **payload: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(KINDS)}")
        event = Event(kind, stage, step, payload)
        if kind == "run_start":
            self.run_id = payload.get("run_id")
        for sink in list(self.sinks):
            try:
                sink.handle(event)
            except Exception as exc:  # noqa: BLE001 (a watcher never fails the run)
                self.sinks.remove(sink)
                log.warning(
                    "%s failed on a %s event (%s: %s); it is switched off for the rest of this run, the run goes on",
                    getattr(sink, "name", type(sink).__name__),
                    kind,
                    type(exc).__name__,
                    exc,
                )

    def close(self) -> None:
        """Let every sink that has a ``close`` flush and stop (e.g. a logger's sending thread)."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # noqa: BLE001
                    log.warning(
                        "%s failed to close (%s: %s)",
                        getattr(sink, "name", type(sink).__name__),
                        type(exc).__name__,
                        exc,
                    )


PROGRESS_INTERVAL_S = 0.1  # a stage emits at most ~10 progress events a second, whatever its pace


class Ticker:
    """The emitting side of a progress bar: ``ticker.due(done)`` says whether a ``progress`` event is
    worth sending now (the first one, at most every ``PROGRESS_INTERVAL_S``, and the last one), and
    ``ticker.emit(done, **shown)`` sends it with the rate and the ETA since the ticker started.
    Free when nobody listens: a bus without sinks is never due. Reads only the clock."""

    def __init__(
        self,
        events: EventBus,
        stage: str,
        total: int | None,
        unit: str,
        label: str = "",
        start: int = 0,
        interval_s: float = PROGRESS_INTERVAL_S,
    ):
        self.events, self.stage, self.total, self.unit, self.label = events, stage, total, unit, label
        self.start, self.interval_s = start, interval_s
        self.t0 = time.perf_counter()
        self._last: float | None = None

    def due(self, done: int) -> bool:
        if not self.events.sinks:
            return False
        if self._last is None or (self.total is not None and done >= self.total):
            return True
        return time.perf_counter() - self._last >= self.interval_s

    def rate(self, done: int) -> float | None:
        """Units per second since the ticker started (None before the first unit)."""
        elapsed = time.perf_counter() - self.t0
        return (done - self.start) / elapsed if done > self.start and elapsed > 0 else None

    def emit(self, done: int, **shown: Any) -> None:
        self._last = time.perf_counter()
        rate = self.rate(done)
        eta = (self.total - done) / rate if rate and self.total is not None else None
        payload = {"done": done, "total": self.total, "unit": self.unit, "label": self.label, "eta_s": eta}
        self.events.emit("progress", self.stage, **payload, **shown)

    def __call__(self, done: int, **shown: Any) -> None:
        """``emit`` when ``due``: for callers with nothing costly to show."""
        if self.due(done):
            self.emit(done, **shown)


def progress_callback(events: EventBus, stage: str, unit: str, label: str = ""):
    """A ``report(done, total)`` callable for code that knows nothing of events (feature extraction,
    a supervised run, an ingest): progress of ``stage``'s part ``label`` through a :class:`Ticker`.
    None when the bus has no sinks, so the caller skips even the call."""
    if not events.sinks:
        return None
    ticker: list[Ticker] = []

    def report(done: int, total: int | None) -> None:
        if not ticker:
            ticker.append(Ticker(events, stage, total, unit, label))
        ticker[0].total = total
        ticker[0](done)

    return report
