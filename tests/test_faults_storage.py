"""Storage faults (issue 8): transient store errors are retried and change nothing; an ingest is
atomic under any failure, including SIGKILL; a full or unwritable store stops a stage before it
starts, with a clear error and no half-written artifact."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pretextflow.core.errors import DataError, VersioningError
from pretextflow.core.store import ArtifactStore, StoreError
from pretextflow.flows.common import TASK_OPTIONS, is_transient, retry_transient

from . import faultfs
from .conftest import REPO
from .test_reruns import write_digits_idx

# a small config: the fault tests run stages again (retries) or twice at once
SMALL = [
    "train.epochs=2",
    "train.max_train_samples=640",
    "probe.label_fractions=[0.1,1.0]",
    "probe.baselines=[supervised]",
    "probe.supervised.min_steps=30",
    "probe.linear_max_iter=50",
    "probe.linear_weight_decays=[0.0001,0.001]",
    "probe.knn_k=[20]",
    "probe.supervised.epochs=2",
]
DRIVER = Path(__file__).with_name("ingest_kill_driver.py")


@pytest.fixture(autouse=True)
def _flaky_protocol():
    faultfs.register()
    faultfs.FlakyFileSystem.reset()
    yield
    faultfs.FlakyFileSystem.enabled = False


def files_under(root: Path) -> dict[str, bytes] | None:
    """Every file below ``root`` with its bytes (None if ``root`` does not exist)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(ws) -> dict:
    return {"data": files_under(ws.data_dir), "data.dvc": ws.data_dvc.read_bytes() if ws.data_dvc.exists() else None}


def remote(ws) -> dict[str, bytes]:
    return files_under(ws.root / ".dvc-remote") or {}


def tmp_leftovers(ws) -> list[str]:
    tmp = ws.root / ".pretextflow-tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def dvc_status_clean(ws) -> bool:
    from pretextflow.core.data.versioning import dvc

    out = dvc(ws, "status")
    return "up to date" in out and "modified" not in out


def timeless(metrics: dict) -> dict:
    """Metrics without wall-clock seconds (the only thing two identical runs may differ in)."""

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "seconds"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(metrics)


# -- 1. the store's errors: transient or not, clear either way ---------------------------------
def test_store_faults_become_store_errors_marked_transient_or_not(tmp_path, monkeypatch):
    flaky = ArtifactStore(f"flaky://{tmp_path}/s", {"every": 1, "max_per_task": 3})
    for call in (
        lambda: flaky.write_json({"a": 1}, "x", "a.json"),
        lambda: flaky.exists("x"),
        lambda: flaky.listdir("x"),
    ):
        with pytest.raises(StoreError, match=r"transient storage error .*retried") as err:
            call()
        assert err.value.transient and is_transient(err.value) and isinstance(err.value.__cause__, OSError)
        # Prefect may pickle a failed task's exception: the verdict must survive that
        assert is_transient(pickle.loads(pickle.dumps(err.value)))
    assert len(faultfs.FlakyFileSystem.failures) == 3
    assert not [p for p in (tmp_path / "s").rglob("*") if p.is_file()]  # nothing half-written

    store = ArtifactStore(str(tmp_path / "local"))
    for code, pattern in (
        (errno.ENOSPC, r"no space left on .*local"),
        (errno.EACCES, r"not\s+writable"),
        (errno.EROFS, r"not\s+writable"),
    ):

        def refuse(*a, code=code, **k):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(store.fs, "pipe_file", refuse)
        with pytest.raises(StoreError, match=pattern) as err:
            store.write_bytes(b"x", "pretrain", "k", "task.safetensors")
        assert err.value.transient is False and not is_transient(err.value)
        assert not is_transient(pickle.loads(pickle.dumps(err.value)))
        assert str(store.uri) in str(err.value) and "store.uri" in str(err.value)  # names the store and the fix
    # bare OS errors, as other code meets them: a retry helps a hiccup, not a full disk or a permission
    assert is_transient(OSError(errno.EIO, "I/O error")) and is_transient(ConnectionResetError())
    assert is_transient(TimeoutError()) and is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(OSError(errno.ENOSPC, "full")) and not is_transient(PermissionError("denied"))
    assert not is_transient(OSError(errno.EROFS, "read-only")) and not is_transient(ValueError("bad"))
    assert not is_transient(DataError("bad data"))


def test_disk_full_mid_write_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path / "s"))
    store.write_bytes(b"version 1", "pretrain", "k", "task.safetensors")
    real_pipe = store.fs.pipe_file

    def half_then_full(path, value, *a, **k):
        real_pipe(path, value[: len(value) // 2])  # the disk fills up half-way through the file
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(store.fs, "pipe_file", half_then_full)
    with pytest.raises(StoreError, match=f"no space left on {re.escape(store.uri)}") as err:
        store.write_bytes(b"version 2, longer" * 100, "pretrain", "k", "task.safetensors")
    assert "nothing was written under that name" in str(err.value) and not is_transient(err.value)
    assert store.read_bytes("pretrain", "k", "task.safetensors") == b"version 1"  # not half of version 2
    assert store.listdir("pretrain", "k") == ["task.safetensors"]  # no .tmp-* file left behind


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_stage(
    kind, tmp_path, digits_workspace, digits_config, monkeypatch
):
    """A writer SIGKILLed mid-write leaves its .tmp-* file; the next stage in that folder removes it,
    and the temporary files of a live writer (another run of the same key) are left alone."""
    from pretextflow.core import store as store_module
    from pretextflow.core.stages import StageContext, store_preflight

    uri = str(tmp_path / "s") if kind == "local" else f"memory://stale-{os.getpid()}-{time.time_ns()}/s"
    ctx = StageContext.create(digits_config(f"store.uri={uri}"), str(digits_workspace.root))
    store = ctx.store
    # a real writer, killed in the middle of pipe_file: its temporary file stays
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    real_prefix = store_module.temp_prefix
    fs_class = type(store.fs)  # patched on the class: fsspec shares filesystem instances between tests
    real_pipe = fs_class.pipe_file

    def killed_half_way(self, path, value, *a, **k):
        real_pipe(self, path, value[:10])
        child.send_signal(signal.SIGKILL)
        child.wait()
        raise KeyboardInterrupt  # what the killed process would never get to handle

    with monkeypatch.context() as patch:
        patch.setattr(fs_class, "pipe_file", killed_half_way)
        patch.setattr(store_module, "temp_prefix", lambda: real_prefix().replace(f"-{os.getpid()}.", f"-{child.pid}."))
        with pytest.raises(KeyboardInterrupt):
            store.write_bytes(b"x" * 100, "pretrain", "k1", "checkpoint.safetensors")
    dead = [n for n in store.listdir("pretrain", "k1") if n.startswith(".tmp-")]
    assert len(dead) == 1 and f"-{child.pid}." in dead[0]
    # a live writer on this host (this very process), a legacy name, and a day-old foreign one
    live = store_module.temp_prefix() + "history.json"
    store.write_bytes(b"in flight", "pretrain", "k1", live)
    store.write_bytes(b"legacy", "pretrain", "k1", ".tmp-" + "0" * 32 + "-history.json")
    foreign = ".tmp-" + "1" * 32 + "-4242.deadbeef-history.json"
    store.write_bytes(b"another host", "pretrain", "k1", foreign)
    store.write_bytes(b"real", "pretrain", "k1", "history.json")

    store_preflight(ctx, "pretrain", "k1")
    left = set(store.listdir("pretrain", "k1"))
    assert dead[0] not in left
    assert {live, ".tmp-" + "0" * 32 + "-history.json", foreign, "history.json"} <= left

    if kind == "local":  # a day later, files of writers elsewhere are stale too
        old = time.time() - store_module.STALE_TEMP_SECONDS - 60
        os.utime(store.path("pretrain", "k1", foreign), (old, old))
        assert store.remove_stale_temp_files("pretrain", "k1") == [foreign]
    assert store.read_bytes("pretrain", "k1", "history.json") == b"real"


def test_retry_policy_backs_off_and_only_for_transient_faults():
    from pretextflow.flows import stages

    delays = TASK_OPTIONS["retry_delay_seconds"]
    assert TASK_OPTIONS["retries"] >= 2 and len(delays) == TASK_OPTIONS["retries"]
    assert delays[0] >= 1 and all(
        b > a for a, b in zip(delays, delays[1:], strict=False)
    )  # growing waits, not a hammer
    for t in (stages.ingest_task, stages.pretrain_task, stages.freeze_task, stages.probe_task, stages.report_task):
        assert t.retries == TASK_OPTIONS["retries"] and list(t.retry_delay_seconds) == list(delays)
        assert t.retry_condition_fn is retry_transient


# -- 1b. a whole Prefect pipeline over a flaky store -------------------------------------------
def _task_run_states(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {
                r.name: (
                    r.run_count,
                    [s.name for s in await client.read_task_run_states(r.id)],
                    r.state.name if r.state else None,
                )
                for r in runs
            }

    return asyncio.run(read())


@pytest.fixture
def quick_retries(monkeypatch):
    """The stage tasks' own retry policy, with the back-off shortened so the test does not sleep
    12 s per stage (the delays themselves are checked above)."""
    from pretextflow.flows import stages

    for t in (stages.ingest_task, stages.pretrain_task, stages.freeze_task, stages.probe_task, stages.report_task):
        monkeypatch.setattr(t, "retry_delay_seconds", [0.05] * len(t.retry_delay_seconds))


@pytest.mark.slow
def test_pipeline_over_a_flaky_store_retries_and_gives_the_clean_runs_metrics(
    digits_workspace, digits_config, tmp_path, quick_retries
):
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe
    from pretextflow.flows.pipeline import pipeline_flow

    ws = str(digits_workspace.root)
    flaky_cfg = digits_config(
        *SMALL, f"store.uri=flaky://{tmp_path}/flaky-store", "store.storage_options={every: 11, max_per_task: 1}"
    ).model_dump(mode="json")
    state = pipeline_flow(flaky_cfg, ws, return_state=True)
    assert state.is_completed(), state.message
    flaky = state.result()
    faultfs.FlakyFileSystem.enabled = False
    failures = faultfs.FlakyFileSystem.failures
    print("injected faults (call, operation, path, task run):", *failures, sep="\n  ")
    stages_hit = {f[3] for f in failures}  # task run names: pretrain, freeze, probe, report-<n>
    assert {"pretrain", "freeze", "probe", "report"} <= {str(n).split("-")[0] for n in stages_hit}, failures

    # Prefect retried: every stage that met a fault went through AwaitingRetry and still completed
    runs = _task_run_states(state.state_details.flow_run_id)
    retried = {name for name, (count, history, final) in runs.items() if "AwaitingRetry" in history}
    assert "pretrain" in retried and len(retried) >= 2 and retried <= stages_hit, runs
    assert all(runs[n][0] >= 2 for n in retried), runs  # run_count: the task ran again
    assert all(final == "Completed" for _, _, final in runs.values()), runs

    # the same config on a healthy local store, stage by stage (the metrics come from probe alone)
    ctx = StageContext.create(digits_config(*SMALL, f"store.uri={tmp_path}/clean-store"), ws)
    clean = {"pretrain": run_pretrain(ctx), "freeze": run_freeze(ctx), "probe": run_probe(ctx)}
    assert not any(clean[s]["cached"] for s in clean)  # really computed again
    flaky_probe = ArtifactStore(f"{tmp_path}/flaky-store").read_json("probe", clean["probe"]["key"], "metrics.json")
    assert timeless(flaky_probe) == timeless(clean["probe"]["metrics"])  # every number, to the last bit
    assert flaky["metrics"] == {k: flaky_probe[k] for k in flaky["metrics"]}  # and the manifest's are those
    assert {s: flaky["stages"][s]["key"] for s in clean} == {s: clean[s]["key"] for s in clean}
    leftovers = [p for p in (tmp_path / "flaky-store").rglob("*") if p.name.startswith((".tmp-", ".pretextflow-"))]
    assert leftovers == []  # no temp file or write check left by an interrupted write


# -- 3. pre-flight: a full or read-only store stops a stage before it starts -------------------
def _refuse_writes_under(monkeypatch, root: Path) -> None:
    """Make a local folder read-only: chmod when that works, or (as root, who ignores modes) a
    patched filesystem that answers EACCES for writes below it, as the kernel would."""
    from fsspec.implementations.local import LocalFileSystem

    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        root.chmod(0o555)  # the caller restores 0o755
        return
    real_pipe, real_makedirs = LocalFileSystem.pipe_file, LocalFileSystem.makedirs

    def pipe_file(self, path, *a, **k):
        if str(path).startswith(str(root)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_pipe(self, path, *a, **k)

    def makedirs(self, path, exist_ok=False):
        if str(path).startswith(str(root)) and str(path) != str(root):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_makedirs(self, path, exist_ok=exist_ok)

    monkeypatch.setattr(LocalFileSystem, "pipe_file", pipe_file)
    monkeypatch.setattr(LocalFileSystem, "makedirs", makedirs)


@pytest.fixture
def no_training(monkeypatch):
    """Records whether training started (it must not, when the store is unusable)."""
    from pretextflow.core.training import loop as train

    calls = []
    real = train.pretrain
    monkeypatch.setattr(train, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_read_only_store_stops_pretrain_before_training(
    digits_workspace, digits_config, tmp_path, monkeypatch, no_training
):
    from pretextflow.core.stages import StageContext, run_pretrain

    ro = tmp_path / "read-only-store"
    _refuse_writes_under(monkeypatch, ro)
    try:
        ctx = StageContext.create(digits_config(f"store.uri={ro}"), str(digits_workspace.root))
        with pytest.raises(
            StoreError,
            match=r"pretrain cannot start: the artifact store .*read-only-store.* not "
            r"writable.*store\.uri",
        ) as err:
            run_pretrain(ctx)
        assert not is_transient(err.value) and no_training == []
        assert not [p for p in ro.rglob("*")]  # not even a folder
    finally:
        ro.chmod(0o755)


def test_too_little_free_space_stops_the_stage_with_the_numbers_and_the_fix(
    digits_workspace, digits_config, tmp_path, monkeypatch, no_training
):
    import shutil

    from pretextflow.core import store as store_mod
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain

    real_usage = shutil.disk_usage
    monkeypatch.setattr(store_mod.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=40 * 10**6))
    ctx = StageContext.create(digits_config(f"store.uri={tmp_path}/store"), str(digits_workspace.root))
    with pytest.raises(
        StoreError,
        match=r"pretrain cannot start: only 40 MB free on the artifact store "
        r".*at least 100 MB.*store\.min_free_mb",
    ) as err:
        run_pretrain(ctx)
    assert not is_transient(err.value) and no_training == []
    with pytest.raises(StoreError, match="freeze cannot start: only 40 MB free"):
        run_freeze(ctx)
    assert ArtifactStore(f"{tmp_path}/store").listdir() == []  # nothing written, the write check removed
    # the threshold is the config's: 30 MB needed, 40 free -> the stage starts
    ctx = StageContext.create(
        digits_config(f"store.uri={tmp_path}/store", "store.min_free_mb=30", "train.epochs=1"),
        str(digits_workspace.root),
    )
    assert run_pretrain(ctx)["key"] and no_training == [1]


@pytest.mark.slow
def test_a_permanent_store_error_fails_the_task_at_once_without_retries(
    digits_workspace, digits_config, tmp_path, monkeypatch, no_training
):
    from pretextflow.flows.stages import pretrain_flow

    ro = tmp_path / "ro"
    _refuse_writes_under(monkeypatch, ro)
    try:
        t = time.perf_counter()
        state = pretrain_flow(
            digits_config(f"store.uri={ro}").model_dump(mode="json"), str(digits_workspace.root), return_state=True
        )
        assert state.is_failed() and no_training == []
        with pytest.raises(StoreError, match="pretrain cannot start"):
            state.result()
        runs = _task_run_states(state.state_details.flow_run_id)
        assert [(count, "AwaitingRetry" in history) for count, history, _ in runs.values()] == [(1, False)], runs
        assert time.perf_counter() - t < TASK_OPTIONS["retry_delay_seconds"][0] + 30  # no back-off waited
    finally:
        ro.chmod(0o755)


_READ_ONLY_CLI = """
import errno, sys
from fsspec.implementations.local import LocalFileSystem
root = sys.argv.pop(1)
real_pipe = LocalFileSystem.pipe_file
def pipe_file(self, path, *a, **k):  # as root chmod does not stop writes: answer as the kernel would
    if str(path).startswith(root):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return real_pipe(self, path, *a, **k)
LocalFileSystem.pipe_file = pipe_file
from pretextflow.cli import main
sys.argv[0] = "pretextflow"
main()
"""


@pytest.mark.slow
def test_cli_pretrain_with_an_unwritable_store_exits_2_with_the_message_and_no_traceback(digits_workspace, tmp_path):
    ro = tmp_path / "ro-store"
    ro.mkdir()
    args = [
        "pretrain",
        str(REPO / "configs" / "digits_smoke.yaml"),
        "--set",
        f"store.uri={ro}",
        "-w",
        str(digits_workspace.root),
    ]
    env = {**os.environ, "PREFECT_HOME": tempfile.mkdtemp(prefix="pf-cli-")}
    if os.geteuid() != 0:
        ro.chmod(0o555)
        cmd = [sys.executable, "-m", "pretextflow", *args]
    else:
        cmd = [sys.executable, "-c", _READ_ONLY_CLI, str(ro), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: pretrain cannot start: the artifact store {ro} refused to write" in proc.stderr
    assert "store.uri" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert "epoch" not in proc.stderr + proc.stdout  # no training started
    assert list(ro.iterdir()) == []


# -- 2. atomic ingest --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v1_workspace(tmp_path_factory):
    """A workspace holding version 1 of an IDX dataset (pushed), and the source of a version 2."""
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace

    root = tmp_path_factory.mktemp("atomic")
    write_digits_idx(root / "v1")
    write_digits_idx(root / "v2", drop=150)
    ws = init_workspace(root / "ws")
    ingest(ws, str(root / "v1"), "idx", "digits-idx")
    return root, ws


def _inject(step: str, monkeypatch, root: Path):
    """Make ingest fail at ``step``; returns (source to ingest, expected error, whether the remote
    may have gained objects)."""
    import pathlib

    from pretextflow.core.data import ingest as ingest_mod
    from pretextflow.core.data import versioning

    source = str(root / "v2")
    if step == "read-bad-file":
        bad = root / "v2-truncated"
        if not bad.exists():
            write_digits_idx(bad, drop=150)
            gz = bad / "train-images-idx3-ubyte.gz"
            gz.write_bytes(gz.read_bytes()[:200])  # a truncated download
        return str(bad), DataError, False
    if step == "encode":
        from pretextflow.core.data import build as build_mod

        monkeypatch.setattr(build_mod, "plan_shards", lambda *a: (_ for _ in ()).throw(MemoryError("injected")))
        return source, MemoryError, False
    if step == "no-room":
        import shutil

        real = shutil.disk_usage
        monkeypatch.setattr(ingest_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=2 * 2**20))
        return source, DataError, False
    if step == "write-staging":
        real_write, seen = pathlib.Path.write_bytes, []

        def write_bytes(self, data):
            if ".pretextflow-tmp" in str(self) and "write-check" not in self.name:
                seen.append(self)
                if len(seen) == 3:  # the disk fills up in the third file
                    real_write(self, data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real_write(self, data)

        monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
        return source, DataError, False
    if step == "rename":
        real_rename, seen = pathlib.Path.rename, []

        def rename(self, target):
            seen.append(self)
            if len(seen) == 2:  # the old version is already moved aside; the new one fails to move in
                raise OSError(errno.EIO, "Input/output error", str(self))
            return real_rename(self, target)

        monkeypatch.setattr(pathlib.Path, "rename", rename)
        return source, DataError, False
    real_dvc = versioning.dvc
    if step == "dvc-add":  # fails after DVC rewrote data.dvc and filled its cache

        def dvc(ws, *args):
            out = real_dvc(ws, *args)
            if args[0] == "add":
                raise VersioningError("dvc add failed: injected")
            return out
    elif step == "dvc-push":  # the remote is unreachable

        def dvc(ws, *args):
            if args[0] == "push":
                raise VersioningError("dvc push failed: injected (unreachable remote)")
            return real_dvc(ws, *args)
    elif step == "dvc-push-partial":  # the objects went up, then the connection dropped

        def dvc(ws, *args):
            out = real_dvc(ws, *args)
            if args[0] == "push":
                raise VersioningError("dvc push failed: injected after the upload")
            return out
    elif step == "ctrl-c":

        def dvc(ws, *args):
            if args[0] == "push":
                raise KeyboardInterrupt
            return real_dvc(ws, *args)
    else:
        raise AssertionError(step)
    monkeypatch.setattr(versioning, "dvc", dvc)
    return source, (KeyboardInterrupt if step == "ctrl-c" else VersioningError), step == "dvc-push-partial"


@pytest.mark.slow
@pytest.mark.parametrize(
    "step",
    [
        "read-bad-file",
        "encode",
        "no-room",
        "write-staging",
        "rename",
        "dvc-add",
        "dvc-push",
        "dvc-push-partial",
        "ctrl-c",
    ],
)
def test_a_failed_ingest_leaves_data_data_dvc_and_the_remote_as_they_were(step, v1_workspace, monkeypatch):
    from pretextflow.core.data.ingest import ingest

    root, ws = v1_workspace
    before, remote_before = snapshot(ws), remote(ws)
    source, error, remote_may_grow = _inject(step, monkeypatch, root)
    with pytest.raises(error) as err:
        ingest(ws, source, "idx", "digits-idx")
    monkeypatch.undo()
    assert snapshot(ws) == before  # every byte of data/ and data.dvc
    after = remote(ws)
    if remote_may_grow:  # never loses or changes an object; may hold the unreferenced new ones
        assert {k: after[k] for k in remote_before} == remote_before and len(after) > len(remote_before)
    else:
        assert after == remote_before
    assert tmp_leftovers(ws) == []
    if error is DataError and step != "read-bad-file":
        assert "ingest again" in str(err.value)
        assert ("no space left" in str(err.value) or "MiB free" in str(err.value)) == (step != "rename")


@pytest.mark.slow
def test_after_the_failures_the_workspace_is_clean_and_the_next_ingest_succeeds(v1_workspace):
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import data_version

    root, ws = v1_workspace
    assert dvc_status_clean(ws)  # data/ matches data.dvc
    v1 = data_version(ws)
    out = ingest(ws, str(root / "v2"), "idx", "digits-idx")
    assert out["changed"] and out["data_version"] != v1 and dvc_status_clean(ws)
    md5 = out["data_version"]
    assert (ws.root / ".dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).is_file()  # pushed
    assert tmp_leftovers(ws) == []
    ingest(ws, str(root / "v1"), "idx", "digits-idx")  # back to version 1 for the other tests
    assert data_version(ws) == v1


def test_a_failed_first_ingest_leaves_no_data_folder_and_no_data_dvc(workspace, tmp_path, monkeypatch):
    from pretextflow.core.data import versioning
    from pretextflow.core.data.ingest import ingest

    write_digits_idx(tmp_path / "src")
    real = versioning.dvc
    monkeypatch.setattr(
        versioning,
        "dvc",
        lambda ws, *a: (_ for _ in ()).throw(VersioningError("push: injected")) if a[0] == "push" else real(ws, *a),
    )
    with pytest.raises(VersioningError):
        ingest(workspace, str(tmp_path / "src"), "idx", "digits-idx")
    assert not workspace.data_dir.exists() and not workspace.data_dvc.exists() and remote(workspace) == {}
    assert tmp_leftovers(workspace) == []


# -- 2b. a killed ingest -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def kill_workspace(tmp_path_factory):
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace

    root = tmp_path_factory.mktemp("killed")
    write_digits_idx(root / "v1")
    write_digits_idx(root / "v2", drop=300)
    ws = init_workspace(root / "ws")
    ingest(ws, str(root / "v1"), "idx", "digits-idx")
    return root, ws


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed; its new parent may not reap it
    except psutil.NoSuchProcess:
        return True


# (point, seconds after the DVC child started). The DVC points kill this process while its
# `dvc add` / `dvc push` child is running: right at its start, and into its work.
KILL_POINTS = [
    ("staging", 0),
    ("swap", 0),
    ("dvc-add", 0),
    ("dvc-add", 0.8),
    ("after-add", 0),
    ("dvc-push", 0),
    ("dvc-push", 0.8),
    ("after-push", 0),
]


@pytest.mark.slow
@pytest.mark.parametrize("point,delay", KILL_POINTS, ids=[f"{p}-{d}" for p, d in KILL_POINTS])
def test_an_ingest_killed_at_any_point_is_rolled_back_by_the_next_reader(point, delay, kill_workspace, tmp_path):
    from pretextflow.core.config import load_config
    from pretextflow.core.stages import StageContext

    root, ws = kill_workspace
    before, remote_before = snapshot(ws), remote(ws)
    marker = tmp_path / "reached"
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(ws.root), str(root / "v2"), "digits-idx", point, str(delay), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the driver did not reach {point}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    info = json.loads(marker.read_text())
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup handler runs: as the OOM killer or a power cut of the process
    proc.wait(timeout=30)
    if point.startswith("dvc-") and delay == 0:
        assert info["children"], "the DVC child was already gone: this kill point tests nothing"
    # the DVC child dies with its parent (PR_SET_PDEATHSIG), so it cannot write data.dvc after the rollback
    deadline = time.monotonic() + 10
    while not all(_dead(c) for c in info["children"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_dead(c) for c in info["children"]), info
    if point == "dvc-add" and delay == 0:  # killed as it started: an orphaned `dvc add` would have
        time.sleep(2)  # finished by now (~1 s) and rewritten data.dvc
        assert ws.data_dvc.read_bytes() == before["data.dvc"]

    assert (ws.root / ".pretextflow-tmp" / "ingest-journal.json").exists()  # the journal says what to undo
    # the next reader of the data (any stage, via StageContext.dataset) rolls the ingest back first
    cfg = load_config(REPO / "configs" / "digits_smoke.yaml", ["data.name=digits-idx"])
    ds = StageContext.create(cfg, str(ws.root)).dataset()
    assert snapshot(ws) == before and tmp_leftovers(ws) == []
    assert ds.meta["counts"]["train"] == 1400  # version 1, whole
    assert dvc_status_clean(ws)
    after = remote(ws)
    if point in ("dvc-push", "after-push"):  # objects may have gone up; none of the old ones changed
        assert {k: after[k] for k in remote_before} == remote_before
    else:
        assert after == remote_before


@pytest.mark.slow
def test_an_ingest_after_a_killed_one_recovers_and_completes(kill_workspace, tmp_path):
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import data_version

    root, ws = kill_workspace
    marker = tmp_path / "reached"
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), str(ws.root), str(root / "v2"), "digits-idx", "swap", "0", str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else "timeout"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (ws.data_dir / "digits-idx").exists()  # killed between the two renames: torn, until recovered
    out = ingest(ws, str(root / "v2"), "idx", "digits-idx")
    assert out["changed"] and out["counts"]["train"] == 1100 and dvc_status_clean(ws)
    assert data_version(ws) == out["data_version"] and tmp_leftovers(ws) == []
    ingest(ws, str(root / "v1"), "idx", "digits-idx")


# -- 2c. two pipeline runs of one config at once -----------------------------------------------
@pytest.mark.slow
def test_two_pipeline_runs_of_one_config_at_once_both_complete_with_whole_artifacts(digits_workspace, tmp_path):
    from pretextflow.core.training import checkpoint as ckpt

    store = tmp_path / "shared-store"
    args = [
        sys.executable,
        "-m",
        "pretextflow",
        "run",
        str(REPO / "configs" / "digits_smoke.yaml"),
        "-w",
        str(digits_workspace.root),
        "--set",
        f"store.uri={store}",
        *[x for o in SMALL for x in ("--set", o)],
    ]
    procs = [
        subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PREFECT_HOME": tempfile.mkdtemp(prefix=f"pf-run{i}-")},
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]

    s = ArtifactStore(str(store))
    runs = s.listdir("runs")
    assert len(runs) == 2  # two run folders, not one written by both
    manifests = [s.read_json("runs", r, "manifest.json") for r in runs]
    assert manifests[0]["artifacts"]["probe"] == manifests[1]["artifacts"]["probe"]
    assert timeless(manifests[0]["metrics"]) == timeless(manifests[1]["metrics"])
    for m in manifests:
        assert {"report.md", "report.html", "manifest.json"} <= set(s.listdir("runs", m["run_id"]))
        for stage in ("pretrain", "freeze", "probe"):
            assert s.is_complete(stage, m["artifacts"][stage]["key"])
    pk, fk = manifests[0]["artifacts"]["pretrain"]["key"], manifests[0]["artifacts"]["freeze"]["key"]
    ckpt.decode(s.read_bytes("pretrain", pk, "task.safetensors"))  # whole safetensors files
    ckpt.decode(s.read_bytes("freeze", fk, "backbone.safetensors"))
    for p in store.rglob("*"):
        assert not p.name.startswith((".tmp-", ".pretextflow-")), p  # no temp file or write check left
        if p.suffix == ".json" or p.name == "_COMPLETE":
            json.loads(p.read_text())  # every JSON whole


def test_two_runs_of_one_config_in_the_same_second_get_their_own_run_folders():
    from pretextflow.core.runs.manifest import new_run_id

    ids = {new_run_id("digits-smoke", "0123456789abcdef") for _ in range(50)}  # all within one second or two
    assert len(ids) == 50 and all("-digits-smoke-01234567-" in i for i in ids)
