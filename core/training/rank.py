"""One rank's process (``python -m pretextflow.core.training.rank PAYLOAD.json``, started by
``core.training.launch``): join the process group, run the training loop on its shard, leave.
A failure is written as ``error<rank>.json`` for the launcher to re-raise."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from pretextflow.core.toolkit.collectives import Shard
from pretextflow.core.training.loop import rank_main


def _rank_entry(payload_path: str) -> int:
    """A rank's process: join the process group, train, leave."""
    import json
    import traceback

    with open(payload_path) as f:
        payload = json.load(f)
    r, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if payload["backend"] == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(payload["backend"], rank=r, world_size=world)
    try:
        rank_main(Shard(r, world), payload)
        dist.barrier()
        return 0
    except Exception as exc:
        with open(os.path.join(payload["error_dir"], f"error{r}.json"), "w") as f:
            json.dump({"type": type(exc).__name__, "message": str(exc)}, f)
        traceback.print_exc()
        return 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import sys

    sys.exit(_rank_entry(sys.argv[1]))
