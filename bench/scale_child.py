"""What bench/scale.py runs in child processes (so that each measurement starts from a fresh
interpreter, and the parent can watch the child's memory from outside):

    python bench/scale_child.py ingest JSON_ARGS   # init a workspace, ingest, write the result JSON
    python bench/scale_child.py train JSON_ARGS    # pretrain a fixed number of steps, timed

JSON_ARGS is one JSON object (see ``ingest`` and ``train`` below); each writes its result as JSON to
``args["out"]``. Not meant to be run by hand.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path


def ingest(args: dict) -> dict:
    """``args``: ws, src, format, name, shard_mb, workers, push, runner. Times ``ingest()`` alone
    (not ``init_workspace``)."""
    from pretextflow.core.data.ingest import IngestSettings, ingest
    from pretextflow.core.data.versioning import init_workspace

    t0 = time.perf_counter()
    ws = init_workspace(Path(args["ws"]))
    t1 = time.perf_counter()
    settings = IngestSettings(
        shard_mb=args["shard_mb"], workers=args.get("workers"), runner=args.get("runner", "local")
    )
    out = ingest(ws, args["src"], args["format"], args["name"], push=args.get("push", True), settings=settings)
    t2 = time.perf_counter()
    return {"pid": os.getpid(), "init_s": t1 - t0, "wall_s": t2 - t1, "result": out}


class _Stop(Exception):
    """Raised from ``on_step`` once the step budget is spent."""


def _timed_gathers(loop_module, seconds: list[float]) -> None:
    """Wrap ``_Batches.get`` (the batch gather: from a tensor, a memory map or a ShardedArray) so
    that each call's duration is appended to ``seconds``."""
    original = loop_module._Batches.get

    def get(self, perm, i):
        t = time.perf_counter()
        batch = original(self, perm, i)
        seconds.append(time.perf_counter() - t)
        return batch

    loop_module._Batches.get = get


def train(args: dict) -> dict:
    """``args``: config, overrides, ws, warmup, steps. Runs ``run_pretrain`` and stops it after
    warmup + steps optimizer steps; returns the timed steps' images/s and the gather share."""
    from pretextflow.core.config import load_config
    from pretextflow.core.stages import StageContext, run_pretrain
    from pretextflow.core.training import loop

    gathers: list[float] = []
    _timed_gathers(loop, gathers)
    stamps: list[float] = []
    warmup, steps = int(args["warmup"]), int(args["steps"])

    def on_step(step: int) -> None:
        stamps.append(time.perf_counter())
        if step >= warmup + steps:
            raise _Stop

    cfg = load_config(args["config"], args["overrides"])
    ctx = StageContext.create(cfg, args["ws"])
    ds = ctx.dataset()
    images = ds.train_images
    try:
        run_pretrain(ctx, on_step=on_step)
    except _Stop:
        pass
    if len(stamps) < warmup + steps:
        raise RuntimeError(f"only {len(stamps)} steps ran; the epoch is shorter than {warmup + steps}")
    span = stamps[warmup + steps - 1] - stamps[warmup - 1]  # steps warmup+1 .. warmup+steps
    gather = sum(gathers[warmup : warmup + steps])
    return {
        "images_per_s": steps * cfg.train.batch_size / span,
        "step_s": span / steps,
        "gather_s_per_step": gather / steps,
        "gather_share": gather / span,
        "train_images_type": type(images).__name__,
        "train_shards": len(getattr(images, "parts", [images])),
        "train_images": len(images),
        "image_shape": list(ds.meta["image_shape"]),
        "batch_size": cfg.train.batch_size,
        "threads": __import__("torch").get_num_threads(),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    command, args = sys.argv[1], json.loads(sys.argv[2])
    result = {"ingest": ingest, "train": train}[command](args)
    Path(args["out"]).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
