"""The multi-process launcher of ``train.devices: N``: N rank processes on this machine (the
torchrun environment, a JSON payload, no pickling), waited on together; a failing rank's own
error is re-raised here. Each rank runs ``core.training.rank``."""

from __future__ import annotations

import os
import socket
from typing import Any

from pretextflow.core import errors
from pretextflow.core.errors import PretextflowError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def launch(world: int, device_type: str, payload: dict[str, Any], timeout: float | None = None) -> None:
    """Run the pretraining loop in ``world`` new processes on this machine and wait for all.

    Each rank is ``python -m pretextflow.core.training.rank PAYLOAD.json`` with the torchrun
    environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): no pickling, and no
    re-import of the caller's ``__main__`` (which ``multiprocessing`` spawn would do). If any rank
    fails, the others are stopped and the rank's own error is raised here with its message."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pretextflow-ddp-") as tmp:
        payload_path = os.path.join(tmp, "payload.json")
        with open(payload_path, "w") as f:
            json.dump({**payload, "backend": backend_for(device_type), "error_dir": tmp}, f)
        procs, logs = _start_ranks(world, payload_path, tmp)
        try:
            failed = _wait_all(procs, timeout)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for f in logs:
                f.close()
        if failed is None:
            return
        _raise_rank_error(tmp, failed, world, procs[failed].returncode)


def _start_ranks(world: int, payload_path: str, tmp: str) -> tuple[list, list]:
    """Start the ``world`` rank processes (the torchrun environment, one free port): the started
    processes, and the log files of their output (rank 0's goes to this process's own)."""
    import subprocess
    import sys

    port = str(free_port())
    procs, logs = [], []
    for r in range(world):
        env = {
            **os.environ,
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        log_file = open(os.path.join(tmp, f"rank{r}.log"), "w+")
        logs.append(log_file)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pretextflow.core.training.rank", payload_path],
                env=env,
                stdout=log_file if r else None,
                stderr=log_file if r else None,
            )
        )
    return procs, logs


def _raise_rank_error(tmp: str, failed: int, world: int, returncode: int | None) -> None:
    """Raise the failed rank's own error (its ``error<rank>.json``: the same class when it is one of
    ours, with its message), or, when it left none, its exit code and the tail of its log."""
    import json

    err_path = os.path.join(tmp, f"error{failed}.json")
    if os.path.exists(err_path):
        with open(err_path) as f:
            err = json.load(f)
        cls = getattr(errors, err["type"], None)
        if isinstance(cls, type) and issubclass(cls, PretextflowError):
            raise cls(err["message"])
        raise PretextflowError(f"pretraining rank {failed} of {world} failed: {err['type']}: {err['message']}")
    with open(os.path.join(tmp, f"rank{failed}.log")) as f:
        tail = "".join(f.readlines()[-15:])
    raise PretextflowError(f"pretraining rank {failed} of {world} exited with code {returncode}:\n{tail}")


def _wait_all(procs, timeout: float | None) -> int | None:
    """Index of the first rank that failed (the others are then killed), or None if all succeeded."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        for r, code in enumerate(codes):
            if code not in (None, 0):
                return r
        if all(c == 0 for c in codes):
            return None
        if deadline is not None and time.monotonic() > deadline:
            return 0
        time.sleep(0.05)
