"""The launcher of a multi-process pretraining (``train.devices`` processes on each of ``train.nodes``
nodes): PyTorch's own elastic agent (``torch.distributed.launcher.api.elastic_launch``, the agent
``torchrun`` runs), a c10d rendezvous, restarts of the whole group from the last checkpoint.

Each rank is ``python -m pretextflow.core.training.rank PAYLOAD.json``: the payload stays JSON (no
pickling) and the caller's ``__main__`` is never re-imported. A rank's own error (its
``error<rank>.json``) is re-raised here as that class with its message. Errors a restart cannot mend
(ours, a plugin's bug) are written as ``fatal.json`` too: a restarted rank that finds it stops at once,
so ``max_restarts`` is spent on faults a restart can mend (a killed worker, a lost connection)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from pretextflow.core import errors
from pretextflow.core.errors import LaunchError, PretextflowError

FATAL = "fatal.json"  # in the error dir: an error a restart would only repeat


@dataclass(frozen=True)
class Topology:
    """Where the ranks run and how they meet: from ``train.*`` and the stage key."""

    nodes: int
    procs_per_node: int
    endpoint: str  # host:port of the c10d rendezvous
    run_id: str  # the same on every node: derived from the stage key
    max_restarts: int
    join_timeout: int  # seconds to wait for every node
    local_addr: str | None  # this node's address as the others reach it (None: its hostname)

    @property
    def world(self) -> int:
        return self.nodes * self.procs_per_node


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def run_id_for(key: str) -> str:
    """The rendezvous id of a stage key: every node running the same pretraining (same data, config
    and code) meets under it, and a node with other code or data never joins by mistake."""
    return f"pretextflow-{key[:24]}"


def topology(tc, key: str) -> Topology:
    """The launch of ``train`` settings ``tc``: on one node a rendezvous on a free local port, on
    several the one at ``train.rdzv_endpoint``."""
    if tc.nodes == 1 and not tc.rdzv_endpoint:
        endpoint, local_addr = f"127.0.0.1:{free_port()}", tc.local_addr or "127.0.0.1"
    else:
        endpoint, local_addr = tc.rdzv_endpoint, tc.local_addr
    return Topology(tc.nodes, tc.devices, endpoint, run_id_for(key), tc.max_restarts, tc.rdzv_timeout, local_addr)


def launch(topo: Topology, device_type: str, payload: dict[str, Any]) -> None:
    """Run the pretraining loop in ``topo.procs_per_node`` new processes here, as this node's part of
    ``topo``, and wait for the group. A rank that fails makes the agent restart the group (every node)
    up to ``topo.max_restarts`` times; the ranks resume from the store's last checkpoint. Then the
    failure is raised here: the rank's own error, or :class:`LaunchError`."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    with tempfile.TemporaryDirectory(prefix="pretextflow-ddp-") as tmp:
        payload_path = os.path.join(tmp, "payload.json")
        with open(payload_path, "w") as f:
            json.dump({**payload, "backend": backend_for(device_type), "error_dir": tmp}, f)
        try:
            with _signal_handlers_kept(), _fresh_worker_store():
                _agent(topo, tmp)("-m", "pretextflow.core.training.rank", payload_path)
        except ChildFailedError as exc:
            _raise_rank_error(tmp, exc, topo)
        except RendezvousError as exc:
            raise _rendezvous_error(topo, exc) from None
        except SignalException as exc:  # the agent stopped the ranks; say it as this process would
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise LaunchError(
                f"pretraining stopped by {signal.Signals(exc.sigval).name}; its ranks are stopped and the last "
                f"checkpoint is kept: a rerun resumes from it."
            ) from None


def _agent(topo: Topology, tmp: str):
    """The elastic agent for ``topo``: a fixed-size c10d rendezvous, the ranks started as commands
    (this Python with the arguments the returned launcher is called with).
    Local rank 0 keeps this process's terminal (progress bars); the others write to log files."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logs = DefaultLogsSpecs(
        log_dir=os.path.join(tmp, "logs"), redirects={r: Std.ALL for r in range(1, topo.procs_per_node)}
    )
    config = LaunchConfig(
        min_nodes=topo.nodes,
        max_nodes=topo.nodes,
        nproc_per_node=topo.procs_per_node,
        run_id=topo.run_id,
        role="pretrain",
        rdzv_backend="c10d",
        rdzv_endpoint=topo.endpoint,
        # read_timeout: how long connecting to the rendezvous store may take
        rdzv_configs={"timeout": topo.join_timeout, "read_timeout": max(1, min(60, topo.join_timeout))},
        max_restarts=topo.max_restarts,
        monitor_interval=0.1,
        local_addr=topo.local_addr,
        logs_specs=logs,
    )
    return elastic_launch(config, sys.executable)


@contextlib.contextmanager
def _fresh_worker_store():
    """A new process-group store for every attempt. By default the agent lends its rendezvous store
    to the ranks, and the process group's keys (each rank's gloo address) outlive an attempt there:
    after a restart a rank can read a dead peer's address and fail to connect or hang (the SIGKILL
    test: 2 runs in 6 without this, 0 in 12 with it). Not sharing it, rank 0 hosts a store on a
    fresh port per attempt."""
    name = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def _signal_handlers_kept():
    """The agent installs its own SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers (main thread only) and
    leaves them: put this process's back afterwards, so Ctrl-C is a KeyboardInterrupt again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
    saved = {sig: signal.getsignal(sig) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _raise_rank_error(tmp: str, exc, topo: Topology) -> None:
    """Raise the failed rank's own error: ``fatal.json`` or ``error<rank>.json`` (the same class when
    it is one of ours, with its message); when no rank left one (killed), its exit code and log tail."""
    rank, failure = exc.get_first_failure()
    for path in (os.path.join(tmp, FATAL), os.path.join(tmp, f"error{rank}.json")):
        if os.path.exists(path):
            with open(path) as f:
                err = json.load(f)
            cls = getattr(errors, err["type"], None)
            if isinstance(cls, type) and issubclass(cls, PretextflowError):
                raise cls(err["message"])
            raise PretextflowError(
                f"pretraining rank {err.get('rank', rank)} of {topo.world} failed: {err['type']}: {err['message']}"
            )
    restarts = f" after {topo.max_restarts} restart(s) (train.max_restarts)" if topo.max_restarts else ""
    raise LaunchError(
        f"pretraining rank {rank} of {topo.world} exited with code {failure.exitcode}{restarts}; "
        f"the last checkpoint is kept and a rerun resumes from it.{_log_tail(tmp, failure.local_rank)}"
    )


def _log_tail(tmp: str, local_rank: int) -> str:
    """The last lines a rank wrote (its newest attempt's log), or nothing when it wrote to our terminal."""
    logs = sorted(glob.glob(os.path.join(tmp, "logs", "*", "attempt_*", str(local_rank), "stderr.log")))
    if not logs:
        return ""
    with open(logs[-1], errors="replace") as f:
        tail = "".join(f.readlines()[-15:])
    return f"\n{tail}" if tail else ""


def _rendezvous_error(topo: Topology, exc: Exception) -> LaunchError:
    """What a failed rendezvous means for the user, naming the endpoint and the fix."""
    from torch.distributed.elastic.rendezvous import RendezvousClosedError, RendezvousTimeoutError

    if isinstance(exc, RendezvousClosedError):
        return LaunchError(
            f"the rendezvous at {topo.endpoint} (run {topo.run_id}) was closed by another node: its "
            f"pretraining failed or ended; its log names the error. Rerun on every node: the ranks "
            f"resume from the last checkpoint."
        )
    if isinstance(exc, RendezvousTimeoutError):
        return LaunchError(
            f"train.nodes={topo.nodes}: not every node joined the rendezvous at {topo.endpoint} "
            f"(run {topo.run_id}) within train.rdzv_timeout={topo.join_timeout} s. Start the pretraining "
            f"on every node with the same config, data and code (they meet under the stage key), "
            f"or lower train.nodes."
        )
    cause = str(exc.__cause__ or exc).rstrip(".")
    return LaunchError(
        f"cannot reach the rendezvous at {topo.endpoint} (train.rdzv_endpoint, run {topo.run_id}): {cause}. "
        f"Check that the host resolves and that the port is open from this node (the first node "
        f"hosts it when its address matches), or fix train.rdzv_endpoint."
    )
