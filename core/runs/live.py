"""The pretrainings of a store that are running, or that died: ``pretextflow runs --live``.

Read from each ``pretrain/<key>/history.live.jsonl`` (``core.training.live``) whose stage has no
``_COMPLETE`` marker: its last header says which process trains it (pid, host, when it started),
its last lines how far it got. On this host a pretraining is ``running`` while that process lives
(the same process: one started after the header is another that reused the pid), ``died`` when it
is gone without the marker (killed, crashed, out of memory) and ``failed`` when it ended with an
error. On another host the pid cannot be checked: ``running`` while lines keep coming, ``stalled``
after ``STALLED_S`` seconds without one."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.live import LIVE, STAGE, LiveHistory, parse_live

STALLED_S = 600.0
_SAME_PROCESS_SLACK_S = 2.0


def _process_alive(pid: int, started: float | None) -> bool:
    """Whether ``pid`` runs and started no later than the header that names it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or proc.create_time() <= started + _SAME_PROCESS_SLACK_S
    except ImportError:
        return True
    except psutil.Error:
        return False


def status_of(live: LiveHistory, now: float | None = None) -> str:
    """``running``, ``died``, ``failed``, ``completed`` or ``stalled`` (see the module)."""
    h = live.header or {}
    if live.end is not None:
        return "completed" if live.end.get("status") == "completed" else "failed"
    if h.get("host") == socket.gethostname() and h.get("pid"):
        return "running" if _process_alive(int(h["pid"]), h.get("started")) else "died"
    updated = live.updated or 0.0
    return "running" if (now or time.time()) - updated < STALLED_S else "stalled"


def live_row(store: ArtifactStore, key: str, live: LiveHistory) -> dict[str, Any]:
    """One pretraining as ``runs --live`` shows it."""
    h = live.header or {}
    _, loss = live.last("pretrain/loss")
    if loss is None:
        _, loss = live.last("pretrain/epoch_loss")
    _, speed = live.last("pretrain/images_per_s")
    status = status_of(live)
    return {
        "key": key,
        "status": status,
        "run_id": h.get("run_id"),
        "pid": h.get("pid"),
        "host": h.get("host"),
        "started": h.get("started"),
        "updated": live.updated,
        "step": live.step,
        "total_steps": h.get("total_steps"),
        "epoch": (live.step // h["steps_per_epoch"]) if live.step is not None and h.get("steps_per_epoch") else None,
        "epochs": h.get("epochs"),
        "loss": loss,
        "images_per_s": speed,
        "eta_s": live.eta_s() if status == "running" else None,
        "resumes": max(0, live.segments - 1),
        "uri": store.uri_of(STAGE, key, LIVE),
    }


def live_pretrainings(store: ArtifactStore, include_finished: bool = False) -> list[dict[str, Any]]:
    """The store's pretrainings with a live history and no ``_COMPLETE`` marker (all of them with
    ``include_finished``), most recently updated first."""
    rows = []
    for key in store.listdir(STAGE):
        if not store.exists(STAGE, key, LIVE):
            continue
        if not include_finished and store.is_complete(STAGE, key):
            continue
        live = parse_live(store.read_bytes(STAGE, key, LIVE))
        if live.header is None:
            continue
        rows.append(live_row(store, key, live))
    return sorted(rows, key=lambda r: -(r["updated"] or 0.0))
