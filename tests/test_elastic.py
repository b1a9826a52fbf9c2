"""Pretraining on PyTorch's elastic agent (core.training.launch): two "nodes" (two agents on
127.0.0.1, the second in its own process) follow the 1-process trajectory; a SIGKILLed worker
makes the group restart from the last checkpoint and end with the uninterrupted run's weights, bit
for bit; an unreachable rendezvous is a clear error naming it, exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import torch

from pretextflow.core.data.dataset import load_dataset
from pretextflow.core.errors import ConfigError, LaunchError, TrainingDiverged
from pretextflow.core.registry.registry import get_registry
from pretextflow.core.stages import StageContext
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training import launch
from pretextflow.core.training.loop import pretrain

from .conftest import REPO
from .test_distributed import LOSS_RTOL, WEIGHT_ATOL

BASE = ("train.epochs=2", "train.batch_size=128", "train.threads=1")

# the second node: the same config, data, store and key, in a process of its own
NODE = """
import json, sys
from pretextflow.core.config import load_config
from pretextflow.core.data.dataset import load_dataset
from pretextflow.core.registry.registry import get_registry
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.loop import pretrain
cfg_json, data_dir, store_dir = sys.argv[1:4]
cfg = load_config(raw=json.loads(cfg_json))
pretrain(cfg, load_dataset(data_dir, "digits"), ArtifactStore(store_dir), "key", get_registry())
"""


def _run(ws, store_dir, cfg):
    store = ArtifactStore(str(store_dir))
    outcome = pretrain(cfg, load_dataset(str(ws.data_dir), "digits"), store, "key", get_registry())
    return outcome, store


def _weights(store):
    from safetensors.torch import load

    return load(store.read_bytes("pretrain", "key", "task.safetensors"))


def _sha256(store) -> str:
    return hashlib.sha256(store.read_bytes("pretrain", "key", "task.safetensors")).hexdigest()


def test_two_nodes_follow_the_single_process_trajectory(digits_workspace, tmp_path, digits_config):
    """Two elastic agents on 127.0.0.1 (node 1 in a process of its own), one process each, meet at
    the rendezvous and train SimCLR with 2 x 64 images per step == 128 images on 1 process, and
    exactly what 2 processes on one node train."""
    one = digits_config(*BASE)
    _, store1 = _run(digits_workspace, tmp_path / "one", one)
    endpoint = f"127.0.0.1:{launch.free_port()}"
    two = digits_config(
        *BASE,
        "train.nodes=2",
        f"train.rdzv_endpoint={endpoint}",
        "train.local_addr=127.0.0.1",
        "train.rdzv_timeout=120",
    )
    store_dir = tmp_path / "two"
    node1 = subprocess.Popen(
        [
            sys.executable,
            "-c",
            NODE,
            json.dumps(two.model_dump(mode="json")),
            str(digits_workspace.data_dir),
            str(store_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _, store2 = _run(digits_workspace, store_dir, two)
        out, _ = node1.communicate(timeout=120)
    finally:
        node1.kill()
    assert node1.returncode == 0, out[-3000:]
    h1, h2 = (s.read_json("pretrain", "key", "history.json") for s in (store1, store2))
    assert h1["devices"] == 1 and h2["devices"] == 2 and len(h2["step_loss"]) == len(h1["step_loss"]) == 20
    np.testing.assert_allclose(h2["step_loss"], h1["step_loss"], rtol=LOSS_RTOL)
    w1, w2 = _weights(store1), _weights(store2)
    backbone = [name for name in w1 if name.startswith("model/backbone.")]
    assert len(backbone) > 10
    for name in backbone:  # as in test_distributed: the backbone is what is kept
        torch.testing.assert_close(w2[name], w1[name], atol=WEIGHT_ATOL, rtol=1e-3, msg=name)
    # and what 2 processes on one node give, bit for bit: the nodes change where ranks run, not what they sum
    _, one_node = _run(digits_workspace, tmp_path / "one-node", digits_config(*BASE, "train.devices=2"))
    assert _sha256(store2) == _sha256(one_node)


def _rank_pid(rank: int) -> int | None:
    for child in psutil.Process().children(recursive=True):
        try:
            if "pretextflow.core.training.rank" in " ".join(child.cmdline()) and child.environ().get("RANK") == str(
                rank
            ):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_a_killed_worker_restarts_the_group_from_the_checkpoint(digits_workspace, tmp_path, digits_config, capfd):
    """SIGKILL rank 1 just after the mid-epoch checkpoint at step 4: the agent restarts both ranks,
    they resume from that checkpoint, and the final weights are the uninterrupted run's, bit for bit."""
    cfg = digits_config(*BASE, "train.epochs=3", "train.devices=2", "train.checkpoint_every_steps=4")
    _, whole = _run(digits_workspace, tmp_path / "whole", cfg)
    store = ArtifactStore(str(tmp_path / "killed"))
    result: dict = {}

    def train() -> None:
        try:
            _run(digits_workspace, tmp_path / "killed", cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        if store.exists("pretrain", "key", "checkpoint.safetensors"):
            pid = _rank_pid(1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.02)
    thread.join(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    assert "error" not in result, result.get("error")
    history = store.read_json("pretrain", "key", "history.json")
    assert len(history["step_loss"]) == 30 and history["devices"] == 2
    assert _sha256(store) == _sha256(whole)
    assert "resuming from the checkpoint at step" in capfd.readouterr().err


def test_a_worker_that_keeps_dying_ends_in_a_clear_error(digits_workspace, tmp_path, digits_config, monkeypatch):
    """No restarts left: the launcher names the rank, its exit code and that the checkpoint is kept."""
    cfg = digits_config(*BASE, "train.devices=2", "train.max_restarts=0", "train.checkpoint_every_steps=2")
    store = ArtifactStore(str(tmp_path / "s"))
    failure = {}

    def kill_rank_1() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if store.exists("pretrain", "key", "checkpoint.safetensors") and (pid := _rank_pid(1)):
                os.kill(pid, signal.SIGKILL)
                failure["pid"] = pid
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    with pytest.raises(LaunchError, match=r"rank \d of 2 exited with code -9.*checkpoint is kept"):
        _run(digits_workspace, tmp_path / "s", cfg)
    killer.join()
    assert failure and store.exists("pretrain", "key", "checkpoint.safetensors")


def test_an_unreachable_rendezvous_names_the_endpoint(digits_workspace, tmp_path, digits_config):
    cfg = digits_config(*BASE, "train.nodes=2", "train.rdzv_endpoint=192.0.2.1:29400", "train.rdzv_timeout=2")
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match=r"cannot reach the rendezvous at 192\.0\.2\.1:29400 \(train\.rdzv_endpoint"):
        _run(digits_workspace, tmp_path / "s", cfg)
    assert time.monotonic() - t0 < 60


def test_an_unreachable_rendezvous_exits_2_from_the_cli(digits_workspace, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    out = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "pretextflow"),
            "pretrain",
            str(REPO / "configs" / "digits_smoke.yaml"),
            "--set",
            "train.nodes=2",
            "--set",
            "train.rdzv_endpoint=192.0.2.1:29400",
            "--set",
            "train.rdzv_timeout=2",
        ],
        cwd=digits_workspace.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "192.0.2.1:29400" in out.stderr and "Traceback" not in out.stderr


def test_the_topology_settings_are_checked(digits_config):
    with pytest.raises(ConfigError, match="nodes=2 needs rdzv_endpoint"):
        digits_config("train.nodes=2")
    with pytest.raises(ConfigError, match="is not host:port"):
        digits_config("train.nodes=2", "train.rdzv_endpoint=node0")
    with pytest.raises(ConfigError, match=r"divisible by nodes x devices = 6"):
        digits_config("train.nodes=3", "train.devices=2", "train.batch_size=128", "train.rdzv_endpoint=h:1")


def test_where_nodes_meet_is_not_in_the_key_but_how_many_is(digits_workspace, digits_config):
    ds = load_dataset(str(digits_workspace.data_dir), "digits")

    def key(*overrides: str) -> str:
        return StageContext.create(digits_config(*overrides), str(digits_workspace.root)).pretrain_key(ds)

    base = key("train.nodes=2", "train.rdzv_endpoint=a:1")
    assert key("train.nodes=2", "train.rdzv_endpoint=b:2", "train.max_restarts=0", "train.rdzv_timeout=5") == base
    assert key("train.nodes=1") != base
    assert launch.run_id_for(base) == launch.run_id_for(base) and base[:24] in launch.run_id_for(base)


def test_an_error_a_restart_would_repeat_is_not_retried(digits_workspace, tmp_path, digits_config, capfd):
    """A diverged loss is raised as TrainingDiverged after one attempt: the restarted ranks find
    fatal.json and stop at once instead of training again max_restarts (3) times."""
    cfg = digits_config(
        *BASE, "train.devices=2", "train.lr=1e30", "train.warmup_epochs=0", "pretext.name=rotation", "pretext.params={}"
    )
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        _run(digits_workspace, tmp_path / "s", cfg)
    assert capfd.readouterr().err.count("pretrain key: rotation on") == 1  # rank 0's start line, once


def test_the_agent_leaves_this_process_its_signal_handlers():
    def mine(*_):
        pass

    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, mine)
    try:
        with launch._signal_handlers_kept():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what the agent does in its start()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_node_deployments_load_and_share_one_config():
    """prefect-nodes.yaml: one deployment per node (its own work queue), the same parameters."""
    import inspect

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from pretextflow.core.config import load_config

    spec = yaml.safe_load((REPO / "prefect-nodes.yaml").read_text())
    deps = spec["deployments"]
    assert len(deps) == 2 and deps[0]["parameters"] == deps[1]["parameters"]
    assert len({d["work_pool"]["work_queue_name"] for d in deps}) == 2
    for dep in deps:
        path, func = dep["entrypoint"].split(":")
        loaded = load_flow_from_entrypoint(f"{REPO / path}:{func}")
        assert set(dep["parameters"]) <= set(inspect.signature(loaded.fn).parameters)
        cfg = load_config(REPO / dep["parameters"]["config_path"], dep["parameters"]["overrides"])
        assert cfg.train.nodes == 2 and cfg.train.rdzv_endpoint and cfg.data.uri and cfg.store.uri.startswith("s3://")


def test_two_nodes_through_the_prefect_entry_point(digits_workspace, tmp_path):
    """The deployments' flow on two "nodes" (node 1 in its own process, its own Prefect home): one
    pretraining, its artifact complete in the shared store and found cached by a later run."""
    from pretextflow.flows.entrypoint import node_pretrain

    config = str(REPO / "configs" / "digits_smoke.yaml")
    overrides = [
        *BASE,
        "train.nodes=2",
        f"train.rdzv_endpoint=127.0.0.1:{launch.free_port()}",
        "train.local_addr=127.0.0.1",
        f"store.uri={tmp_path / 'store'}",
    ]
    code = "import sys, json; from pretextflow.flows.entrypoint import node_pretrain; node_pretrain(*json.loads(sys.argv[1]))"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-node1")}
    args = json.dumps([config, overrides, str(digits_workspace.root)])
    node1 = subprocess.Popen([sys.executable, "-c", code, args], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        out = node_pretrain(config, overrides, str(digits_workspace.root))
        _, err = node1.communicate(timeout=180)
    finally:
        node1.kill()
    assert node1.returncode == 0, err[-3000:]
    assert not out["cached"]
    assert ArtifactStore(str(tmp_path / "store")).is_complete("pretrain", out["key"])
    assert node_pretrain(config, overrides, str(digits_workspace.root))["cached"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_agent_is_this_process_s_own(monkeypatch, sig):
    """Ctrl-C stays a KeyboardInterrupt; a SIGTERM (a scheduler's preemption) is a LaunchError that
    says the checkpoint is kept, not the agent's SignalException traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def agent(topo, tmp):
        def run(*_):
            raise SignalException(f"got signal {sig}", sigval=sig)

        return run

    monkeypatch.setattr(launch, "_agent", agent)
    topo = launch.Topology(1, 2, "127.0.0.1:1", "pretextflow-x", 0, 5, "127.0.0.1")
    expected = KeyboardInterrupt if sig == signal.SIGINT else LaunchError
    with pytest.raises(expected, match="" if sig == signal.SIGINT else "stopped by SIGTERM.*checkpoint is kept"):
        launch.launch(topo, "cpu", {})
