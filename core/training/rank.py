"""One rank's process (``python -m pretextflow.core.training.rank PAYLOAD.json``, started by the
elastic agent of ``core.training.launch``, with the torchrun environment: RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_RESTART_COUNT): join the process group, run the training
loop on its shard (resuming from the store's checkpoint after a restart), leave. A failure is written
as ``error<rank>.json`` for the launcher to re-raise, and as ``fatal.json`` too when a restart would
only repeat it. Rank 0 shows the progress and appends the live history itself (its own bus: the
launching process hears only the finished history)."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from pretextflow.core.toolkit.collectives import Shard
from pretextflow.core.training.events import EventBus
from pretextflow.core.training.launch import FATAL
from pretextflow.core.training.loop import rank_main


def _rank_events(payload: dict, rank: int) -> EventBus:
    """Rank 0's bus when the launching run is watched: progress (``progress.mode`` of the config)
    and the live history in the run's store, under the launching run's id. Empty otherwise."""
    watch = payload.get("events") or {}
    if rank != 0 or not watch.get("watched"):
        return EventBus()
    from pretextflow.core.config import load_config
    from pretextflow.core.security import credentials
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.live import LiveHistorySink
    from pretextflow.core.training.progress import ProgressSink

    progress = load_config(raw=payload["config"]).progress
    store_uri, store_options = payload["store"]
    store = ArtifactStore(credentials.resolve(store_uri), credentials.resolve_options(store_options))
    sinks = [LiveHistorySink(store, watch.get("run_id"))]
    if progress.mode != "off":
        sinks.append(ProgressSink(progress.mode, progress.every_s))
    return EventBus(sinks)


def restartable(exc: BaseException) -> bool:
    """Whether a restart of the group can mend ``exc``: a lost peer or connection, a device or I/O
    fault (RuntimeError, OSError). Not ours (a diverged loss, a collapse, a bad config) nor a
    plugin's bug (ValueError, TypeError, ...): those would only happen again."""
    from pretextflow.core.errors import PretextflowError

    return isinstance(exc, (RuntimeError, OSError)) and not isinstance(exc, PretextflowError)


def _write_error(payload: dict, rank: int, exc: BaseException) -> None:
    import json

    err = {"type": type(exc).__name__, "message": str(exc), "rank": rank}
    names = [f"error{rank}.json"] if restartable(exc) else [f"error{rank}.json", FATAL]
    for name in names:
        with open(os.path.join(payload["error_dir"], name), "w") as f:
            json.dump(err, f)


def _rank_entry(payload_path: str) -> int:
    """A rank's process: join the process group, train, leave."""
    import json
    import traceback

    with open(payload_path) as f:
        payload = json.load(f)
    r, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if os.path.exists(os.path.join(payload["error_dir"], FATAL)):
        return 1  # a restart after an error that restarting cannot mend: stop at once
    with contextlib.suppress(FileNotFoundError):  # a restart: the last attempt's error is not this one's
        os.remove(os.path.join(payload["error_dir"], f"error{r}.json"))
    if payload["backend"] == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(payload["backend"], rank=r, world_size=world)
    events = _rank_events(payload, r)
    try:
        rank_main(Shard(r, world), payload, events)
        events.emit("stage_end", "pretrain", status="completed")
        dist.barrier()
        return 0
    except KeyboardInterrupt:  # Ctrl-C reaches every rank of the terminal's process group: stop quietly
        events.emit("stage_end", "pretrain", status="failed", error="interrupted")
        return 130
    except Exception as exc:
        events.emit("stage_end", "pretrain", status="failed", error=str(exc))
        _write_error(payload, r, exc)
        traceback.print_exc()
        return 1
    finally:
        events.close()
        dist.destroy_process_group()


if __name__ == "__main__":
    import sys

    sys.exit(_rank_entry(sys.argv[1]))
