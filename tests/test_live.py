"""Watching a run as it happens (issue 17): the events of a run in order, progress bars and lines
(and --quiet), the live history of a SIGKILLed pretraining, `runs --live`, online monitors that
change no loss, a collapse that stops the run and keeps the last good checkpoint, and the files DVC
reads (`dvc metrics diff` between two runs)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretextflow.core.stages import StageContext, run_pretrain
from pretextflow.core.training import checkpoint
from pretextflow.core.training.events import EventBus, Ticker
from pretextflow.core.training.live import LIVE, LiveHistorySink, parse_live
from pretextflow.core.training.progress import ProgressSink

from .conftest import REPO

CONFIG = REPO / "configs" / "digits_smoke.yaml"
# a probe stage in seconds: all labels only, one baseline
FAST_PROBE = ["probe.label_fractions=[0.1, 1.0]", "probe.baselines=[supervised]", "probe.supervised.min_steps=20"]


class Recorder:
    name = "recorder"

    def __init__(self):
        self.events = []

    def handle(self, event):
        self.events.append(event)

    def kinds(self, stage=None):
        return [e.kind for e in self.events if stage is None or e.stage == stage]


def _ctx(ws, *overrides):
    from pretextflow.core.config import load_config

    return StageContext.create(load_config(CONFIG, ["train.epochs=3", *overrides]), str(ws.root))


def _history(ctx):
    return ctx.store.read_json("pretrain", ctx.pretrain_key(ctx.dataset()), "history.json")


# -- progress: the emitting side and the sink ------------------------------------------------------
def test_ticker_emits_at_most_ten_a_second_and_always_the_last():
    rec = Recorder()
    ticker = Ticker(EventBus([rec]), "pretrain", 100_000, "steps")
    t0 = time.perf_counter()
    for step in range(1, 100_001):
        ticker(step)
    seconds = time.perf_counter() - t0
    done = [e.payload["done"] for e in rec.events]
    assert done[0] == 1 and done[-1] == 100_000
    assert len(done) <= 10 * seconds + 2
    assert all(e.payload["total"] == 100_000 and e.payload["unit"] == "steps" for e in rec.events)
    assert Ticker(EventBus(), "pretrain", 10, "steps").due(1) is False  # nobody listens: never due


def _progress_events(sink, n, stage="pretrain", label="", **shown):
    bus = EventBus([sink])
    for done in range(n + 1):
        bus.emit("progress", stage, done=done, total=n, unit="steps", label=label, eta_s=n - done, **shown)
    bus.emit("stage_end", stage, status="completed")


def test_progress_is_plain_lines_at_a_bounded_rate_when_not_a_terminal():
    out = io.StringIO()  # not a terminal: auto -> lines
    sink = ProgressSink("auto", every_s=30.0, stream=out)
    assert sink.mode == "lines"
    _progress_events(sink, 1000, loss=0.5, images_per_s=812.0, epoch=2, epochs=10)
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 12  # the first, one per 10%, the last: not one per event
    assert "| progress | pretrain: 0/1000 steps (0%)" in lines[0]
    assert lines[-1].split(" | ", 1)[1].startswith("progress | pretrain: 1000/1000 steps (100%), epoch 2/10")
    assert "loss 0.5000" in lines[-1] and "812 images/s" in lines[-1]
    assert "\x1b[" not in out.getvalue()  # no terminal control codes in a log


def test_progress_off_prints_nothing_and_bars_render_on_a_terminal():
    quiet = io.StringIO()
    _progress_events(ProgressSink("off", stream=quiet), 50)
    assert quiet.getvalue() == ""
    term = io.StringIO()
    sink = ProgressSink("bars", stream=term)
    _progress_events(sink, 50, stage="probe", label="features ssl")
    sink.close()
    assert sink.mode == "bars" and "features ssl" in term.getvalue()


# -- the events of a whole run ---------------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch):
    """Every run_bus (core.runs.watch) gets a Recorder too; the list of them."""
    from pretextflow.core.runs import watch

    recorders = []
    real = watch.run_bus

    def run_bus(*args, **kwargs):
        bus = real(*args, **kwargs)
        recorders.append(Recorder())
        bus.add(recorders[-1])
        return bus

    monkeypatch.setattr(watch, "run_bus", run_bus)
    return recorders


def _pairs(rec):
    return [(e.kind, e.stage) for e in rec.events if e.kind in ("stage_start", "stage_end")]


STAGES = ("ingest", "pretrain", "freeze", "probe", "report")


@pytest.mark.slow
def test_the_events_of_a_digits_run_arrive_in_order(digits_workspace, recorded):
    from pretextflow.core.config import load_config
    from pretextflow.flows.pipeline import pipeline_flow

    overrides = ["train.epochs=2", "train.log_every=5", "store.uri=artifacts-events", "progress.mode=off", *FAST_PROBE]
    cfg = load_config(CONFIG, overrides).model_dump(mode="json")
    result = pipeline_flow(cfg, str(digits_workspace.root))
    rec = recorded[-1]
    kinds = rec.kinds()
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    start, end = rec.events[0].payload, rec.events[-1].payload
    assert start["config"]["train"]["epochs"] == 2 and start["workspace"] == str(digits_workspace.root)
    assert start["config"]["pretext"]["params"]["proj_dim"] == 128  # resolved
    assert _pairs(rec) == [(k, s) for s in STAGES for k in ("stage_start", "stage_end")]
    for stage in STAGES:  # everything of a stage between its start and its end
        idx = [i for i, e in enumerate(rec.events) if e.stage == stage]
        assert rec.events[idx[0]].kind == "stage_start" and rec.events[idx[-1]].kind == "stage_end"
    statuses = {e.stage: e.payload["status"] for e in rec.events if e.kind == "stage_end"}
    assert statuses["pretrain"] == statuses["probe"] == "completed"
    steps = [e.step for e in rec.events if e.kind == "metrics" and "pretrain/loss" in e.payload]
    assert steps == [5, 10, 15, 20]  # every train.log_every steps
    epochs = [e.payload for e in rec.events if e.kind == "metrics" and "pretrain/epoch_loss" in e.payload]
    assert [p["pretrain/epoch"] for p in epochs] == [1.0, 2.0]
    (history_file,) = (digits_workspace.root / "artifacts-events" / "pretrain").glob("*/history.json")
    history = json.loads(history_file.read_text())
    assert [p["pretrain/epoch_loss"] for p in epochs] == history["epoch_loss"]  # the numbers the run wrote
    assert any(e.kind == "metrics" and "monitor/rankme" in e.payload for e in rec.events)
    probe = [e.payload for e in rec.events if e.kind == "metrics" and e.stage == "probe"][0]
    assert probe["probe/linear_top1"] == result["metrics"]["linear_top1"] and "probe/supervised_top1@10%" in probe
    names = {e.payload["name"] for e in rec.events if e.kind == "artifact"}
    assert {"report.md", "report.html", "manifest.json", "pretrain_loss.png", "backbone.safetensors"} <= names
    assert all(os.path.isfile(e.payload["path"]) for e in rec.events if e.kind == "artifact")
    assert end["status"] == "completed" and end["metrics"]["probe/linear_top1"] == result["metrics"]["linear_top1"]
    assert end["report_run_id"] == result["run_id"] and end["run_id"] == start["run_id"]
    assert any(e.kind == "progress" and e.stage == "pretrain" for e in rec.events)
    assert any(e.kind == "progress" and e.payload["label"] == "features ssl" for e in rec.events)

    pipeline_flow(cfg, str(digits_workspace.root))  # again: every stage's artifact is reused
    statuses = {e.stage: e.payload["status"] for e in recorded[-1].events if e.kind == "stage_end"}
    assert statuses == {
        "ingest": "cached",
        "pretrain": "cached",
        "freeze": "cached",
        "probe": "cached",
        "report": "completed",
    }
    assert not any(e.kind == "progress" and e.stage == "pretrain" for e in recorded[-1].events)


def test_a_remote_stores_artifacts_reach_the_loggers_as_local_copies(digits_workspace):
    from pretextflow.core.stages import _emit_artifacts

    ctx = _ctx(digits_workspace, "store.uri=memory://artifact-events")
    ctx.store.write_bytes(b"# report", "runs", "r1", "report.md")
    ctx.store.write_bytes(b"\x89PNG", "runs", "r1", "pretrain_loss.png")
    ctx.store.write_bytes(b"weights", "freeze", "k1", "backbone.safetensors")
    rec = Recorder()
    ctx.events = EventBus([rec])
    _emit_artifacts(ctx, "r1", "k1")
    got = {e.payload["name"]: Path(e.payload["path"]) for e in rec.events if e.kind == "artifact"}
    assert set(got) == {"report.md", "pretrain_loss.png", "backbone.safetensors"}
    assert got["report.md"].read_bytes() == b"# report" and got["backbone.safetensors"].read_bytes() == b"weights"
    assert all(
        p.is_relative_to(digits_workspace.root / ".pretextflow-cache" / "artifacts" / "r1") for p in got.values()
    )
    before = len(rec.events)
    _emit_artifacts(ctx, "r1", "missing")  # no frozen weights: the run folder's files only
    assert sorted(e.payload["name"] for e in rec.events[before:]) == ["pretrain_loss.png", "report.md"]


# -- online monitors -------------------------------------------------------------------------------
def test_monitors_on_or_off_give_the_same_losses_and_weights(digits_workspace):
    common = ["train.epochs=3", "train.threads=1", "monitor.knn_samples=300", "monitor.rankme_samples=128"]
    on = _ctx(digits_workspace, *common, "monitor.every_epochs=1", "store.uri=memory://monitor-on")
    off = _ctx(digits_workspace, *common, "monitor.every_epochs=0", "store.uri=memory://monitor-off")
    rec = Recorder()
    on.events = EventBus([rec])
    run_pretrain(on)
    run_pretrain(off)
    a, b = _history(on), _history(off)
    assert a["step_loss"] == b["step_loss"] and a["epoch_loss"] == b["epoch_loss"]
    key = on.pretrain_key(on.dataset())
    wa = checkpoint.decode(on.store.read_bytes("pretrain", key, "task.safetensors"))[0]["model"]
    wb = checkpoint.decode(off.store.read_bytes("pretrain", key, "task.safetensors"))[0]["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["epoch"] for r in a["monitor"]] == [1, 2, 3] and "monitor" not in b
    assert all(r["rankme"] > 1.5 and 0 <= r["knn_top1"] <= 1 for r in a["monitor"])
    emitted = [e.payload["monitor/rankme"] for e in rec.events if "monitor/rankme" in e.payload]
    assert emitted == [r["rankme"] for r in a["monitor"]]


def _constant_when_evaluated(monkeypatch):
    """The backbone's output is constant in eval mode (what the monitor sees), as a collapsed
    encoder's; training (train mode) is untouched."""
    from pretextflow.core.registry.contracts import Backbone

    forward = Backbone.forward

    def collapsed(self, images):
        out = forward(self, images)
        return out if self.training else torch.ones_like(out)

    monkeypatch.setattr(Backbone, "forward", collapsed)


def test_a_collapse_stops_the_run_and_keeps_the_last_good_checkpoint(digits_workspace, monkeypatch):
    from pretextflow.core.errors import CollapseError

    _constant_when_evaluated(monkeypatch)
    ctx = _ctx(
        digits_workspace,
        "train.epochs=4",
        "monitor.every_epochs=2",  # the first check after epoch 2; epoch 1's checkpoint is the good one
        "monitor.stop_on_collapse=true",
        "monitor.rankme_samples=64",
        "monitor.knn_samples=64",
        "store.uri=memory://collapse",
    )
    rec = Recorder()
    ctx.events = EventBus([rec])
    with pytest.raises(CollapseError, match=r"simclr: the representation is collapsing: RankMe 1\.0") as err:
        run_pretrain(ctx)
    assert "last good checkpoint (step 10) is kept" in str(err.value)
    key = ctx.pretrain_key(ctx.dataset())
    _, info = checkpoint.decode(ctx.store.read_bytes("pretrain", key, "checkpoint.safetensors"))
    assert info["step"] == 10 and not ctx.store.is_complete("pretrain", key)
    assert rec.events[-1].kind == "stage_end" and rec.events[-1].payload["status"] == "failed"
    assert "CollapseError" in rec.events[-1].payload["error"]


# -- the live history of a killed pretraining, and `runs --live` -----------------------------------
RUN_WATCHED = (
    "import sys; from pretextflow.core.config import load_config; "
    "from pretextflow.core.stages import StageContext, run_pretrain; "
    "from pretextflow.core.training.events import EventBus; "
    "from pretextflow.core.training.live import LiveHistorySink; "
    "ctx = StageContext.create(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2]); "
    "ctx.events = EventBus([LiveHistorySink(ctx.store, 'run-killed')]); run_pretrain(ctx)"
)


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "pretextflow", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"},
        **kwargs,
    )


def _live_rows(store):
    out = _cli("runs", "--live", "--json", "--store", str(store))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_live_history_of_a_sigkilled_pretraining_is_readable(digits_workspace, tmp_path):
    from pretextflow.core.config import load_config

    store = tmp_path / "store"
    overrides = ["train.epochs=100", "train.log_every=1", "train.threads=1", "monitor.every_epochs=0"]
    overrides.append(f"store.uri={store}")
    ctx = StageContext.create(load_config(CONFIG, overrides), str(digits_workspace.root))
    key = ctx.pretrain_key(ctx.dataset())
    live = store / "pretrain" / key / LIVE
    cmd = [sys.executable, "-c", RUN_WATCHED, str(CONFIG), str(digits_workspace.root), *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not live.exists() or live.read_bytes().count(b"\n") < 20:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        running = _live_rows(store)  # `runs --live` while it trains
        assert [(r["key"], r["status"], r["pid"]) for r in running] == [(key, "running", proc.pid)]
        assert running[0]["total_steps"] == 1000 and running[0]["loss"] is not None
        assert proc.poll() is None, "finished before it could be killed: raise train.epochs"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    data = live.read_bytes()
    assert data.endswith(b"\n")  # whole lines only, up to the last one written
    records = [json.loads(line) for line in data.splitlines()]  # every line parses
    header, lines = records[0], records[1:]
    assert header["kind"] == "header" and header["pid"] == proc.pid and header["run_id"] == "run-killed"
    assert header["total_steps"] == 1000 and header["start_step"] == 0 and header["key"] == key
    steps = [r["step"] for r in lines if "pretrain/loss" in r["metrics"]]
    assert len(steps) >= 19 and steps == list(range(1, len(steps) + 1))
    assert all(r["kind"] == "metrics" for r in lines)  # no end line: it was killed
    parsed = parse_live(data)
    assert parsed.end is None and parsed.step == max(r["step"] for r in lines)

    dead = _live_rows(store)  # the pid is gone, the stage has no _COMPLETE: it died
    assert [(r["key"], r["status"]) for r in dead] == [(key, "died")]
    assert dead[0]["step"] == parsed.step and dead[0]["eta_s"] is None
    text = _cli("runs", "--live", "--store", str(store))  # not a terminal: plain text
    assert text.returncode == 0 and key in text.stdout and "died" in text.stdout and "─" not in text.stdout


def test_live_history_on_a_remote_store_is_rewritten_whole(tmp_path):
    from pretextflow.core.store import ArtifactStore

    store = ArtifactStore("memory://live-remote")
    sink = LiveHistorySink(store, "r1")
    bus = EventBus([sink])
    bus.emit("progress", "pretrain", done=0, total=4, unit="steps", key="k1", epochs=2, steps_per_epoch=2)
    for step in range(1, 5):
        bus.emit("metrics", "pretrain", step, **{"pretrain/loss": 1.0 / step, "monitor/rankme": float("nan")})
    bus.emit("stage_end", "pretrain", status="completed")
    live = parse_live(store.read_bytes("pretrain", "k1", LIVE))
    assert live.header["run_id"] == "r1" and [r["step"] for r in live.lines] == [1, 2, 3, 4]
    assert live.lines[0]["metrics"]["monitor/rankme"] is None  # NaN: null, so every line is JSON
    assert live.end["status"] == "completed" and live.last("pretrain/loss") == (4, 0.25)


def test_a_multiprocess_run_writes_its_live_history_from_rank_0_and_replays_its_metrics(digits_workspace, tmp_path):
    """train.devices: 2 on the CPU: rank 0 (its own process) writes the live history; the launching
    process's bus hears the metrics from the finished history, and its live sink writes nothing."""
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    cfg = _ctx(digits_workspace, "train.epochs=2", "train.devices=2", "train.threads=1", "train.log_every=5").cfg
    cfg = cfg.model_copy(update={"progress": cfg.progress.model_copy(update={"mode": "off"})})
    store = ArtifactStore(str(tmp_path / "store"))
    rec = Recorder()
    bus = EventBus([LiveHistorySink(store), rec])
    bus.emit("run_start", run_id="ddp-run", config={}, workspace="")
    pretrain(cfg, load_dataset(str(digits_workspace.data_dir), "digits"), store, "key", get_registry(), events=bus)
    records = [json.loads(line) for line in store.read_bytes("pretrain", "key", LIVE).splitlines()]
    assert [r["kind"] for r in records].count("header") == 1  # rank 0's, not this process's
    header = records[0]
    assert header["run_id"] == "ddp-run" and header["pid"] != os.getpid() and header["total_steps"] == 20
    assert [r["step"] for r in records if r["kind"] == "metrics" and "pretrain/loss" in r["metrics"]] == [5, 10, 15, 20]
    assert records[-1] == {**records[-1], "kind": "end", "status": "completed"}
    replayed = [e.step for e in rec.events if e.kind == "metrics" and "pretrain/loss" in e.payload]
    history = store.read_json("pretrain", "key", "history.json")
    assert replayed == [5, 10, 15, 20]
    assert [
        e.payload["pretrain/loss"] for e in rec.events if e.step in (5, 10, 15, 20) and "pretrain/loss" in e.payload
    ] == [history["step_loss"][i - 1] for i in (5, 10, 15, 20)]


# -- the CLI: progress lines, --quiet, a collapse's exit code ----------------------------------------
@pytest.mark.slow
def test_cli_shows_progress_lines_is_quiet_with_quiet_and_exits_2_on_a_collapse(tmp_path):
    ws = tmp_path / "ws"
    assert _cli("init", str(ws)).returncode == 0
    ingested = _cli("ingest", "sklearn:digits", "--format", "sklearn-digits", "--quiet", "--no-push", cwd=ws)
    assert ingested.returncode == 0, ingested.stderr
    assert "| progress |" not in ingested.stderr  # --quiet

    base = ["--set", "train.epochs=2", "--set", "monitor.every_epochs=0", "-w", str(ws)]
    trained = _cli("pretrain", str(CONFIG), *base)
    assert trained.returncode == 0, trained.stderr
    lines = [line for line in trained.stderr.splitlines() if "| progress | pretrain:" in line]
    assert lines and lines[-1].split("| progress | ")[1].startswith("pretrain: 20/20 steps (100%)")
    assert "\x1b[" not in trained.stderr

    collapse = [
        "--set", "train.epochs=3", "--set", "monitor.every_epochs=1", "--set", "monitor.stop_on_collapse=true",
        "--set", "monitor.collapse_rank=100000", "--set", "monitor.collapse_patience=2", "--quiet", "-w", str(ws),
    ]  # fmt: skip
    stopped = _cli("pretrain", str(CONFIG), *collapse)
    assert stopped.returncode == 2, stopped.stderr
    assert "the representation is collapsing" in stopped.stderr and "Traceback" not in stopped.stderr
    assert "last good checkpoint (step 10) is kept" in stopped.stderr
    assert "| progress |" not in stopped.stderr
    folders = [p for p in (ws / "artifacts" / "pretrain").iterdir() if (p / "checkpoint.safetensors").exists()]
    assert len(folders) == 1 and not (folders[0] / "_COMPLETE").exists()
    _, info = checkpoint.decode((folders[0] / "checkpoint.safetensors").read_bytes())
    assert info["step"] == 10  # epoch 1's: epoch 2's check (the second below the rank) stopped it first
    live = parse_live((folders[0] / LIVE).read_bytes())
    assert live.end["status"] == "failed" and "collapsing" in live.end["error"]


# -- DVC: params, metrics and plots; dvc metrics diff between two runs -------------------------------
def _dvc(ws, *args):
    dvc = str(Path(sys.executable).with_name("dvc"))
    out = subprocess.run(
        [dvc, *args], cwd=ws, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _run_all(ws, *overrides):
    from pretextflow.core.stages import run_freeze, run_probe, run_report

    ctx = _ctx(ws, "train.epochs=1", "monitor.every_epochs=0", *FAST_PROBE, *overrides)
    for stage in (run_pretrain, run_freeze, run_probe):
        stage(ctx)
    return run_report(ctx)


@pytest.mark.slow
def test_dvc_metrics_diff_shows_the_metric_a_setting_changed(tmp_path, monkeypatch):
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import git, init_workspace

    ws = init_workspace(tmp_path / "ws")
    ingest(ws, "sklearn:digits", "sklearn-digits", "digits", push=False)
    first = _run_all(ws, "probe.knn_k=[20]")
    run_dir = Path(first["run_uri"]) / "dvc"
    assert {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()} == {
        "params.yaml", "metrics.json", "plots/loss.csv", "plots/label_efficiency.csv",
    }  # fmt: skip
    metrics = json.loads((ws.root / "metrics" / "metrics.json").read_text())
    assert metrics == json.loads((run_dir / "metrics.json").read_text())
    assert metrics["probe/knn_top1"] == first["manifest"]["metrics"]["knn_top1"]
    assert "probe/ssl_linear_top1@10%" in metrics and "pretrain/final_loss" in metrics
    loss = (ws.root / "metrics" / "plots" / "loss.csv").read_text().splitlines()
    assert loss[0] == "step,epoch,loss" and len(loss) == 1 + 10
    shown = json.loads(_dvc(ws.root, "metrics", "show", "--json"))
    assert json.dumps(shown).count("probe/knn_top1") == 1

    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "pretextflow tests")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "tests@pretextflow.invalid")
    git(ws, "add", "dvc.yaml", "metrics", "data.dvc", ".gitignore", ".dvc")
    git(ws, "commit", "-q", "-m", "the first run")
    second = _run_all(ws, "probe.knn_k=[1]")  # a probe setting: the kNN accuracy changes
    assert second["manifest"]["metrics"]["knn_top1"] != first["manifest"]["metrics"]["knn_top1"]
    diff = json.loads(_dvc(ws.root, "metrics", "diff", "--json"))["metrics/metrics.json"]
    assert diff["probe/knn_top1"]["old"] == first["manifest"]["metrics"]["knn_top1"]
    assert diff["probe/knn_top1"]["new"] == second["manifest"]["metrics"]["knn_top1"]
    assert "probe/linear_top1" not in diff  # the same features and labels: the same linear probe
    params = json.loads(_dvc(ws.root, "params", "diff", "--json"))["metrics/params.yaml"]
    assert [str(params["probe.knn_k"][k]) for k in ("old", "new")] == ["[20]", "[1]"]  # DVC shows lists as text
    plots = _dvc(ws.root, "plots", "show", "--json")
    assert "metrics/plots/loss.csv" in plots and "metrics/plots/label_efficiency.csv" in plots
