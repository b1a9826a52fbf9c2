"""The checks of a logger (an experiment tracker): :func:`check_logger`.

A logger is told about one run: ``start`` with the run's resolved config, ``log_metrics`` per step,
``log_artifact`` per file, ``end`` once. The checks make it go through that with a fake run (the
default config of a run on a tiny dataset, a PNG figure and a JSON file), in a temporary folder that
is also the working directory: the whole lifecycle, a second ``end`` (which must do nothing), a
failed run, and the path a real run takes (an ``EventBus`` feeding a ``LoggerSink``, which calls
the logger from its own thread and must close in time)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pretextflow.core.config import RunConfig
from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import RunInfo, RunLogger
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.testing.common_checks import _params_check, _registered_check
from pretextflow.testing.fixtures import _resolve_name
from pretextflow.testing.harness import _run
from pretextflow.testing.results import CheckResult, _Fail, _Skip

LOGGER_CHECKS = ("registered", "options", "lifecycle", "end_twice", "failed_run", "pipeline")
PIPELINE_STEPS = 20


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary folder, also the working directory (a logger's default store lands there)."""
    before = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="pretextflow-kit-logger-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(before)


def _fake_run(root: Path, cls: type[RunLogger], run_id: str) -> RunInfo:
    """A run as a pipeline announces it: the resolved default config of a run on a tiny dataset."""
    config = RunConfig.model_validate(
        {"name": "kit", "data": {"name": "kit-digits"}, "logging": {"loggers": [cls.name]}}
    ).model_dump(mode="json")
    workspace = root / "workspace"
    workspace.mkdir(exist_ok=True)
    return RunInfo(run_id=run_id, config=config, workspace=str(workspace), name=f"kit {run_id}")


def _artifacts(root: Path) -> list[Path]:
    """A PNG figure (a 16 x 24 gradient) and a JSON file, as a report's figures and manifest."""
    from PIL import Image

    figure = root / "loss.png"
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, 24, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, 16, dtype=np.uint8)[:, None]
    Image.fromarray(pixels).save(figure)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"run_id": "kit", "metrics": {"linear_top1": 0.9}}))
    return [figure, manifest]


class _LoggerChecks:
    """The checks of one logger with one set of options; each public method is one check."""

    def __init__(self, cls: type[RunLogger], values: dict, close_timeout: float) -> None:
        self.cls, self.values, self.close_timeout = cls, values, close_timeout
        self.state: dict[str, Any] = {}

    def _logger(self) -> RunLogger:
        try:
            options = self.cls.Options.model_validate(self.values)
        except Exception:
            raise _Skip("Options could not be built; see the options check") from None
        return self.cls(options)

    def lifecycle(self) -> str:
        with _scratch() as root:
            logger = self._logger()
            files = _artifacts(root)
            logger.start(_fake_run(root, self.cls, "kit-run-1"))
            for step in (1, 2, 3):
                logger.log_metrics({"pretrain/loss": 1.0 / step, "pretrain/lr": 1e-3 * step}, step, "pretrain")
            logger.log_metrics({"probe/linear_top1": 0.9}, None, "probe")
            for path in files:
                logger.log_artifact(str(path), path.name)
            logger.end("completed", {"linear_top1": 0.9, "knn_top1": 0.8})
            self.state["ended"] = logger
        return (
            "start, log_metrics at 3 steps and a final value, log_artifact of a PNG figure and a JSON file, "
            "end('completed') in a temporary folder"
        )

    def end_twice(self) -> str:
        logger = self.state.get("ended")
        if logger is None:
            raise _Skip("needs lifecycle to pass")
        with _scratch():
            logger.end("completed", {"linear_top1": 0.9})
        return "a second end() after the run ended raises nothing (it must do nothing)"

    def failed_run(self) -> str:
        with _scratch() as root:
            logger = self._logger()
            logger.start(_fake_run(root, self.cls, "kit-run-2"))
            logger.log_metrics({"pretrain/loss": float("nan")}, 1, "pretrain")
            logger.end("failed", {})
        return "a failed run: start, a NaN loss, end('failed') with no final metrics"

    def pipeline(self) -> str:
        from pretextflow.core.training.events import EventBus
        from pretextflow.core.training.tracking import LoggerSink

        with _scratch() as root:
            figure = _artifacts(root)[0]
            info = _fake_run(root, self.cls, "kit-run-3")
            sink = LoggerSink(self._logger(), close_timeout=self.close_timeout)
            bus = EventBus([sink])
            _emit_run(bus, info, figure)
            start = time.monotonic()
            closed = sink.close()
            took = time.monotonic() - start
        if sink.error is not None and not isinstance(sink.error, TimeoutError):
            raise _Fail(
                f"the logger raised on the thread that feeds it: {type(sink.error).__name__}: "
                f"{str(sink.error).strip()[:300]} (the run would go on without it)"
            )
        if not closed:
            raise _Fail(f"LoggerSink.close() timed out after {self.close_timeout:g} s: the logger is too slow")
        return (
            f"through an EventBus and a LoggerSink, as a run sends it: {sink.delivered} events delivered "
            f"from the sink's thread, closed in {took:.2f} s"
        )


def _emit_run(bus: Any, info: RunInfo, figure: Path) -> None:
    bus.emit("run_start", run_id=info.run_id, config=info.config, workspace=info.workspace, name=info.name)
    bus.emit("stage_start", "pretrain", total=PIPELINE_STEPS, unit="step")
    for step in range(1, PIPELINE_STEPS + 1):
        bus.emit("progress", "pretrain", done=step, total=PIPELINE_STEPS, loss=1.0 / step)
        bus.emit("metrics", "pretrain", step, loss=1.0 / step, lr=1e-3)
    bus.emit("stage_end", "pretrain", status="completed")
    bus.emit("artifact", "report", path=str(figure), name="figures/loss.png")
    bus.emit("run_end", status="completed", metrics={"linear_top1": 0.9, "knn_top1": 0.8})


def check_logger(
    logger: str | type[RunLogger],
    *,
    options: dict | None = None,
    pipeline: bool = True,
    close_timeout: float = 30.0,
    registry: Registry | None = None,
    only: Sequence[str] | None = None,
    source: str | None = None,
) -> list[CheckResult]:
    """Check a logger (its name, or the class) with ``options`` (its ``Options``' fields).
    ``pipeline``: also feed it through an EventBus and a LoggerSink, as a run does, which must close
    within ``close_timeout`` seconds (generous: that includes ``start``, and a first start may create
    the tracker's store, e.g. MLflow's SQLite tables)."""
    if source is not None:
        raise PluginError("a logger reads no source: drop --source")
    base = registry or get_registry()
    cls = _resolve_name(base, "logger", logger) if isinstance(logger, str) else logger
    if not (isinstance(cls, type) and issubclass(cls, RunLogger)):
        raise PluginError(f"{logger!r} is not a RunLogger subclass")
    values = dict(options or {})
    c = _LoggerChecks(cls, values, close_timeout)
    return _run(
        [
            ("registered", _registered_check(base, "logger", cls), ()),
            ("options", _params_check(getattr(cls, "Options", None), values, f"{cls.__name__}.Options"), ()),
            ("lifecycle", c.lifecycle, ("options",)),
            ("end_twice", c.end_twice, ("lifecycle",)),
            ("failed_run", c.failed_run, ("options",)),
            *([("pipeline", c.pipeline, ("lifecycle",))] if pipeline else []),
        ],
        only,
    )
