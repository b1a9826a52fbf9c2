"""Watching one run: its event bus, built once per run, with every sink that watches it — the
progress bars or lines (``core.training.progress``), the live history (``core.training.live``) and
the logger plugins (``core.training.tracking``) — and the run's first and last events.

``with watched_run(cfg, registry, store, workspace) as watch:`` emits ``run_start`` (the run id, the
config's name, the resolved config without secrets, the workspace), hands ``watch.events`` to the stages, and on the
way out emits ``run_end`` with the status (``completed``, or ``failed`` / ``interrupted`` when the
body raised) and ``watch.metrics`` (the final metrics, set by the caller), then closes the bus (a
logger's sending thread flushes). Watching never fails the run: a sink that raises is dropped."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretextflow.core.config import RunConfig
from pretextflow.core.registry.registry import Registry
from pretextflow.core.security.redaction import redact
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.events import EventBus


@dataclass
class RunWatch:
    """A watched run: its bus and id, and what its ``run_end`` will say."""

    events: EventBus
    run_id: str
    status: str = "completed"
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # run_uri, report_run_id, error


def new_watch_id(name: str) -> str:
    """The id a run's events carry from its start (the report's run id comes at the end, with the
    probe key in it: ``run_end`` names both)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{slug}-{uuid.uuid4().hex[:8]}"


def run_bus(
    cfg: RunConfig, registry: Registry, store: ArtifactStore, progress: str | None = None, loggers: bool = True
) -> EventBus:
    """The sinks of one run: progress (``progress``, else ``cfg.progress.mode``; none when ``off``),
    the live history in ``store`` and, with ``loggers``, the configured logger plugins."""
    from pretextflow.core.training.live import LiveHistorySink
    from pretextflow.core.training.progress import ProgressSink

    mode = progress or cfg.progress.mode
    sinks: list = [ProgressSink(mode, cfg.progress.every_s)] if mode != "off" else []
    sinks.append(LiveHistorySink(store))
    if loggers:
        from pretextflow.core.training.tracking import build_logger_sinks

        sinks.extend(build_logger_sinks(cfg, registry))
    return EventBus(sinks)


@contextmanager
def watched_run(
    cfg: RunConfig,
    registry: Registry,
    store: ArtifactStore,
    workspace: str | Path,
    run_id: str | None = None,
    progress: str | None = None,
    loggers: bool = True,
) -> Iterator[RunWatch]:
    """See the module docstring."""
    from pretextflow.core.runs.manifest import recorded_config

    watch = RunWatch(run_bus(cfg, registry, store, progress, loggers), run_id or new_watch_id(cfg.name))
    config = recorded_config(cfg, registry)
    watch.events.emit("run_start", run_id=watch.run_id, name=cfg.name, config=config, workspace=str(workspace))
    try:
        yield watch
    except BaseException as exc:
        watch.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        watch.extra["error"] = redact(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        try:
            payload = {"run_id": watch.run_id, "status": watch.status, "metrics": dict(watch.metrics), **watch.extra}
            watch.events.emit("run_end", **payload)
        finally:
            watch.events.close()
