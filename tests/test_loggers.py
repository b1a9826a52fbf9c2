"""Logger plugins: the kind (registry, listing, preflight, config, kit, scaffold), the LoggerSink
(a thread per logger, a bounded queue, one warning, a bounded close), and the two built-ins
against the real thing: TensorBoard's EventAccumulator, an MLflow tracking server on 127.0.0.1."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pretextflow.core.config import RunConfig, load_config
from pretextflow.core.errors import ConfigError, PluginError
from pretextflow.core.registry.contracts import RunInfo, RunLogger
from pretextflow.core.registry.hookspecs import hookimpl
from pretextflow.core.registry.preflight import check_plugins
from pretextflow.core.registry.registry import KINDS, build_registry, get_registry
from pretextflow.core.training.events import EventBus
from pretextflow.core.training.tracking import LoggerSink, build_logger_sinks
from pretextflow.testing import LOGGER_CHECKS, assert_conforms, check_logger, registry_with

STEPS = 50


def _config(**logging_cfg) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "digits-run",
            "data": {"name": "digits"},
            "pretext": {"name": "simclr", "params": {"temperature": 0.2}},
            "backbone": {"name": "convnet-s", "kwargs": {"width": 8}},
            "logging": logging_cfg,
        }
    )


def _png(path: Path, h: int = 12, w: int = 20) -> Path:
    from PIL import Image

    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    Image.fromarray(pixels).save(path)
    return path


def _fake_run(bus: EventBus, workspace: Path, run_id: str, config: dict, figure: Path, steps: int = STEPS) -> None:
    bus.emit("run_start", run_id=run_id, config=config, workspace=str(workspace), name="digits simclr")
    bus.emit("stage_start", "pretrain", total=steps, unit="step")
    for step in range(1, steps + 1):
        bus.emit("progress", "pretrain", done=step, total=steps)
        bus.emit("metrics", "pretrain", step, loss=1.0 / step, lr=0.001)
    bus.emit("stage_end", "pretrain", status="completed")
    bus.emit("artifact", "report", path=str(figure), name="figures/loss.png")
    bus.emit("run_end", status="completed", metrics={"linear_top1": 0.91, "knn_top1": 0.88})


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("pretextflow")]


# --------------------------------------------------------------------------------------------
# The kind
# --------------------------------------------------------------------------------------------
def test_logger_is_a_kind_listed_looked_up_and_refused_by_name():
    assert "logger" in KINDS
    reg = build_registry(load_entry_points=False)
    assert {"tensorboard", "mlflow"} <= set(reg.table("logger"))
    assert {(i.name, i.kind) for i in reg.info if i.kind == "logger"} == {
        ("tensorboard", "logger"),
        ("mlflow", "logger"),
    }
    assert reg.logger("mlflow").name == "mlflow"
    with pytest.raises(PluginError, match=r"unknown logger 'wandb'. Installed: mlflow, tensorboard.*logging:"):
        reg.logger("wandb")


def test_plugins_listing_shows_the_loggers():
    from typer.testing import CliRunner

    from pretextflow.cli import app
    from pretextflow.core.registry.listing import listing

    rows, skipped, _ = listing(refresh=True)
    assert {(r["name"], r["kind"]) for r in rows} >= {("tensorboard", "logger"), ("mlflow", "logger")}
    out = CliRunner().invoke(app, ["plugins", "--json"])
    assert out.exit_code == 0 and '"kind": "logger"' in out.output


def test_a_broken_logger_plugin_is_skipped_with_the_reason():
    class NoName(RunLogger):
        pass

    class NotALogger:
        name = "x"

    class Plugin:
        @hookimpl
        def pretextflow_loggers(self):
            return [NoName, NotALogger]

    reg = build_registry(extra_plugins=[("broken", Plugin())], load_entry_points=False)
    reasons = " | ".join(s.reason for s in reg.skipped)
    assert "has no string `name`" in reasons and "is not a RunLogger subclass" in reasons


def test_config_and_preflight_check_the_loggers_and_their_options(monkeypatch):
    reg = get_registry()
    cfg = _config(loggers=["tensorboard", "mlflow", "tensorboard"], options={"mlflow": {"experiment": "e"}})
    assert cfg.logging.loggers == ["tensorboard", "mlflow"]
    check_plugins(cfg, reg)
    with pytest.raises(PluginError, match="unknown logger 'tensorbord'"):
        check_plugins(_config(loggers=["tensorbord"]), reg)
    with pytest.raises(ConfigError, match=r"logging.options.mlfow: no installed logger"):
        check_plugins(_config(loggers=["mlflow"], options={"mlfow": {}}), reg)
    with pytest.raises(ConfigError, match=r"logging.options.mlflow.experimnt: unknown key"):
        check_plugins(_config(loggers=["mlflow"], options={"mlflow": {"experimnt": "e"}}), reg)
    sinks = build_logger_sinks(_config(loggers=["tensorboard"]), reg)
    assert [s.logger.name for s in sinks] == ["tensorboard"] and all(s.close() for s in sinks)
    assert build_logger_sinks(_config(), reg) == []


def test_logger_options_take_credentials_by_reference_and_never_show_them(monkeypatch):
    from pretextflow.core.security.redaction import redact

    monkeypatch.setenv("KIT_MLFLOW_URI", "http://alice:kit-s3cret-pw@mlflow.example:5000")
    monkeypatch.setenv("KIT_TRACKER_TOKEN", "kit-token-0123456789")
    cfg = _config(
        loggers=["mlflow"],
        options={
            "mlflow": {"tracking_uri": "${env:KIT_MLFLOW_URI}", "tags": {"api_token": "${env:KIT_TRACKER_TOKEN}"}}
        },
    )
    assert cfg.logging.options["mlflow"]["tracking_uri"] == "http://alice:kit-s3cret-pw@mlflow.example:5000"
    dumped = str(cfg.model_dump(mode="json")["logging"])
    assert "${env:KIT_MLFLOW_URI}" in dumped and "${env:KIT_TRACKER_TOKEN}" in dumped
    assert "kit-s3cret-pw" not in dumped and "kit-token-0123456789" not in dumped
    literal = _config(loggers=["mlflow"], options={"mlflow": {"tracking_uri": "http://bob:kit-literal-pw@h:5000"}})
    assert "kit-literal-pw" not in str(literal.model_dump(mode="json"))
    assert "kit-literal-pw" not in redact("cannot reach http://bob:kit-literal-pw@h:5000/api")
    with pytest.raises(ConfigError, match="KIT_UNSET_VAR"):
        load_config(
            raw={"data": {"name": "d"}, "logging": {"options": {"mlflow": {"tracking_uri": "${env:KIT_UNSET_VAR}"}}}}
        )


# --------------------------------------------------------------------------------------------
# The sink: a thread per logger, never blocking, one warning, a bounded close
# --------------------------------------------------------------------------------------------
class Recorder(RunLogger):
    name = "kit-recorder"

    def __init__(self, options=None, fail_at: int | None = None, gate: threading.Event | None = None):
        super().__init__(options)
        self.calls: list[tuple] = []
        self.fail_at, self.gate = fail_at, gate
        self.threads: set[str] = set()

    def _call(self, *call):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait()
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise ConnectionError("cannot reach http://carol:kit-hidden-pw@tracker.example/api (connection refused)")
        self.calls.append(call)

    def start(self, run):
        self._call("start", run.run_id, run.workspace)

    def log_metrics(self, metrics, step, stage):
        self._call("metrics", metrics, step, stage)

    def log_artifact(self, path, name=None):
        self._call("artifact", path, name)

    def end(self, status, metrics):
        self._call("end", status, metrics)


def test_the_sink_calls_the_logger_from_its_own_thread_in_order(tmp_path):
    logger = Recorder()
    bus = EventBus([LoggerSink(logger)])
    _fake_run(bus, tmp_path, "r1", {"a": {"b": 1}}, _png(tmp_path / "f.png"), steps=3)
    bus.close()
    kinds = [c[0] for c in logger.calls]
    assert kinds == ["start", "metrics", "metrics", "metrics", "artifact", "end"]
    assert logger.calls[1] == ("metrics", {"pretrain/loss": 1.0, "pretrain/lr": 0.001}, 1, "pretrain")
    assert logger.calls[-1] == ("end", "completed", {"linear_top1": 0.91, "knn_top1": 0.88})
    assert logger.threads == {"pretextflow-logger-kit-recorder"}


def test_a_failing_logger_warns_once_redacted_and_is_switched_off(tmp_path, caplog):
    logger = Recorder(fail_at=2)
    sink = LoggerSink(logger)
    bus = EventBus([sink])
    with caplog.at_level(logging.WARNING):
        _fake_run(bus, tmp_path, "r1", {}, _png(tmp_path / "f.png"), steps=10)
        assert sink.close(timeout=5)
    warned = _warnings(caplog)
    assert len(warned) == 1, warned
    assert "the kit-recorder logger failed (ConnectionError" in warned[0] and "the run goes on" in warned[0]
    assert "kit-hidden-pw" not in warned[0] and "***@tracker.example" in warned[0]
    assert [c[0] for c in logger.calls] == ["start", "metrics"] and sink in bus.sinks and not sink.active


def test_a_stuck_logger_never_blocks_emit_and_close_is_bounded(tmp_path, caplog):
    gate = threading.Event()
    logger = Recorder(gate=gate)
    sink = LoggerSink(logger, queue_size=5)
    bus = EventBus([sink])
    with caplog.at_level(logging.WARNING):
        start = time.monotonic()
        _fake_run(bus, tmp_path, "r1", {}, _png(tmp_path / "f.png"), steps=30)
        emitted = time.monotonic() - start
        start = time.monotonic()
        closed = sink.close(timeout=0.5)
        took = time.monotonic() - start
    gate.set()
    assert emitted < 0.5 and not closed and took < 1.5
    assert sink.dropped >= 25
    warned = _warnings(caplog)
    assert len(warned) == 2, warned  # the full queue (once), and the close that timed out (once)
    assert "queue of 5 events is full" in warned[0] and "did not finish sending within 0.5 s" in warned[1]


def test_a_run_closed_without_run_end_is_ended_as_failed(tmp_path):
    logger = Recorder()
    sink = LoggerSink(logger)
    bus = EventBus([sink])
    bus.emit("run_start", run_id="r1", config={}, workspace=str(tmp_path))
    bus.emit("metrics", "pretrain", 1, loss=0.5, note="not a number")
    bus.close()
    assert logger.calls[-1] == ("end", "failed", {}) and logger.calls[1][1] == {"pretrain/loss": 0.5}
    assert sink.close()  # idempotent


# --------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------
def test_tensorboard_events_read_back_with_event_accumulator(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretextflow.plugins.loggers.tensorboard_logger import TensorBoardLogger

    ws = tmp_path / "ws"
    sink = LoggerSink(TensorBoardLogger())
    bus = EventBus([sink])
    _fake_run(bus, ws, "run-tb", _config().model_dump(mode="json"), _png(tmp_path / "loss.png"))
    bus.close()
    assert sink.error is None
    log_dir = ws / "runs" / "run-tb" / "tensorboard"
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"pretrain/loss", "pretrain/lr", "final/linear_top1", "final/knn_top1"} <= set(tags["scalars"])
    loss = acc.Scalars("pretrain/loss")
    assert [e.step for e in loss] == list(range(1, STEPS + 1))
    assert np.allclose([e.value for e in loss], [1.0 / s for s in range(1, STEPS + 1)])
    assert acc.Scalars("final/linear_top1")[0].value == pytest.approx(0.91)
    image = acc.Images("artifacts/figures/loss")[0]
    assert (image.width, image.height) == (20, 12)
    assert {"hparams/text_summary", "run/text_summary"} <= set(tags["tensors"])


def test_tensorboard_log_dir_option_and_a_missing_library(tmp_path, monkeypatch):
    from pretextflow.plugins.loggers.tensorboard_logger import TensorBoardLogger

    logger = TensorBoardLogger(TensorBoardLogger.Options(log_dir=str(tmp_path / "tb")))
    logger.start(RunInfo(run_id="r", config={}, workspace=str(tmp_path / "ws")))
    logger.end("completed", {})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")) and not (tmp_path / "ws").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(PluginError, match=r"pip install 'pretextflow\[trackers\]'"):
        TensorBoardLogger()


def test_mlflow_logger_without_mlflow_names_the_extra(monkeypatch):
    from pretextflow.plugins.loggers.mlflow_logger import MlflowLogger

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(PluginError, match=r"mlflow logger needs MLflow's client.*pretextflow\[trackers\]"):
        MlflowLogger()


# --------------------------------------------------------------------------------------------
# MLflow: a real tracking server on 127.0.0.1
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a free port of 127.0.0.1, with its SQLite store and artifacts in ``root``."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
        cmd += ["--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = (root / "server.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait(root)

    def _wait(self, root: Path, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited:\n" + (root / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError("mlflow server did not answer in time:\n" + (root / "server.log").read_text()[-3000:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the server and its uvicorn worker
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.kill()


def _mlflow_run(url: str, experiment: str, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`pretextflow.run_id` = '{run_id}'")
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.timeout(240)
def test_mlflow_run_reads_back_through_the_client(mlflow_server, tmp_path):
    from pretextflow.plugins.loggers.flatten import flatten
    from pretextflow.plugins.loggers.mlflow_logger import MlflowLogger

    config = _config().model_dump(mode="json")
    config["report"]["note"] = "x" * 900  # longer than any server keeps
    (tmp_path / "report.md").write_text("# report\n")
    logger = MlflowLogger(MlflowLogger.Options(tracking_uri=mlflow_server.url, experiment="kit-roundtrip"))
    sink = LoggerSink(logger)
    bus = EventBus([sink])
    bus.emit("run_start", run_id="run-ml-1", config=config, workspace=str(tmp_path), name="digits simclr")
    for step in range(1, STEPS + 1):
        bus.emit("metrics", "pretrain", step, loss=1.0 / step)
    bus.emit("artifact", "report", path=str(tmp_path / "report.md"), name="report.md")
    bus.emit("artifact", "report", path=str(_png(tmp_path / "f.png")), name="figures/loss.png")
    bus.emit("run_end", status="completed", metrics={"linear_top1": 0.91})
    assert sink.close(timeout=60) and sink.error is None

    client, run = _mlflow_run(mlflow_server.url, "kit-roundtrip", "run-ml-1")
    params = run.data.params
    assert len(params) == len(flatten(config))
    assert params["train.lr"] == "0.002" and params["pretext.name"] == "simclr"
    assert params["probe.label_fractions"] == "[0.01, 0.1, 1.0]" and params["backbone.kwargs.width"] == "8"
    assert len(params["report.note"]) == 500 and params["report.note"].endswith("...")
    assert run.data.tags["dataset"] == "digits" and run.data.tags["method"] == "simclr"
    assert run.info.run_name == "digits simclr" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "pretrain/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert np.allclose([m.value for m in sorted(history, key=lambda m: m.step)], [1 / s for s in range(1, STEPS + 1)])
    assert run.data.metrics["linear_top1"] == pytest.approx(0.91)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.md", "figures"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/loss.png"]


@pytest.mark.timeout(240)
def test_mlflow_server_killed_mid_run_warns_once_and_never_blocks(tmp_path, caplog):
    from pretextflow.plugins.loggers.mlflow_logger import MlflowLogger

    server = MlflowServer(tmp_path / "server")
    try:
        options = MlflowLogger.Options(tracking_uri=server.url, experiment="kit-killed")  # 2 retries per request
        sink = LoggerSink(MlflowLogger(options), close_timeout=10)
        bus = EventBus([sink])
        with caplog.at_level(logging.WARNING):
            bus.emit("run_start", run_id="run-ml-2", config=_config().model_dump(mode="json"), workspace=str(tmp_path))
            for step in range(1, 6):
                bus.emit("metrics", "pretrain", step, loss=1.0 / step)
            deadline = time.monotonic() + 60
            while sink.delivered < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sink.delivered == 6 and sink.error is None
            server.kill()
            start = time.monotonic()
            for step in range(6, STEPS + 1):
                bus.emit("metrics", "pretrain", step, loss=1.0 / step)
            bus.emit("artifact", "report", path=str(_png(tmp_path / "f.png")), name="figures/loss.png")
            bus.emit("run_end", status="completed", metrics={"linear_top1": 0.9})
            emitted = time.monotonic() - start
            start = time.monotonic()
            sink.close()
            closed_in = time.monotonic() - start
        assert emitted < 0.5, emitted
        assert closed_in < 10.5, closed_in
        warned = _warnings(caplog)
        assert len(warned) == 1, warned
        assert "the mlflow logger" in warned[0] and "the run goes on" in warned[0]
        assert sink.error is not None and sink in bus.sinks
    finally:
        server.kill()


# --------------------------------------------------------------------------------------------
# The conformance kit on both built-ins and on a scaffolded logger
# --------------------------------------------------------------------------------------------
def test_the_kit_passes_on_tensorboard():
    results = assert_conforms("tensorboard", kind="logger")
    assert [r.name for r in results] == list(LOGGER_CHECKS)


@pytest.mark.timeout(240)
def test_the_kit_passes_on_mlflow(mlflow_server):
    assert_conforms("mlflow", options={"tracking_uri": mlflow_server.url, "experiment": "kit-conformance"})


def test_the_kit_fails_a_logger_that_breaks_the_contract():
    class EndsTwice(Recorder):
        name = "kit-ends-twice"

        def end(self, status, metrics):
            if any(c[0] == "end" for c in self.calls):
                raise RuntimeError("already ended")
            super().end(status, metrics)

    results = {r.name: r for r in check_logger(EndsTwice, registry=registry_with(EndsTwice))}
    assert results["registered"].passed and results["lifecycle"].passed and results["pipeline"].passed
    assert results["end_twice"].failed and "RuntimeError: already ended" in results["end_twice"].detail
    with pytest.raises(PluginError, match="reads no source"):
        check_logger("tensorboard", source="x")


def test_a_scaffolded_logger_passes_the_kit(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pretextflow.cli import app

    made = CliRunner().invoke(app, ["plugins", "new", "kit-jsonl", "--kind", "logger", "--dir", str(tmp_path / "pkg")])
    assert made.exit_code == 0, made.output
    assert "pretextflow_kit_jsonl/logger.py" in made.output
    text = (tmp_path / "pkg" / "pyproject.toml").read_text()
    assert 'kit-jsonl = "pretextflow_kit_jsonl.logger"' in text
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    cls = importlib.import_module("pretextflow_kit_jsonl.logger").KitJsonl
    results = assert_conforms(cls, registry=registry_with(cls))
    assert all(r.passed for r in results)
    taken = CliRunner().invoke(app, ["plugins", "new", "mlflow", "--kind", "logger", "--dir", str(tmp_path / "b")])
    assert taken.exit_code == 2 and "already provided" in taken.output
