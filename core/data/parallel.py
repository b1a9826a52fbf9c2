"""Running a format's ``read`` over chunks of entries: in this process, in worker processes on
this machine, or on a Dask cluster. Every runner yields the same :class:`ChunkResult` for the same
chunk (the images do not depend on where they were decoded); results come in any order and the
caller places them by chunk index. At most ``2 x workers`` chunks are in flight, so memory stays
bounded whatever the number of images."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretextflow.core.data.decode import ChunkResult, read_chunk
from pretextflow.core.errors import ConfigError
from pretextflow.core.registry.contracts import DatasetFormat, SourceEntry

CHUNK = 256  # entries per read() call
# Starting a pool of spawned workers costs ~3 s (each imports the plugin API, hence torch) before
# the first image is decoded; below this many chunks decoding in this process finishes sooner
# (bench/SCALE.md, section b: a 5 % append of a small collection).
IN_PROCESS_BELOW = 12
RUNNERS = ("local", "dask")


@dataclass
class ReadPlan:
    """What to decode and how: the format, the source, its options and the runner's settings."""

    fmt_cls: type[DatasetFormat]
    fmt: DatasetFormat  # the scanning instance (reused in this process for non-parallel formats)
    source: str
    options: dict[str, Any]
    storage_options: dict[str, Any]
    workers: int | None = None  # None = every core
    runner: str = "local"
    dask_address: str | None = None


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_chunks(plan: ReadPlan, entries: Sequence[SourceEntry], pool: Path) -> Iterator[ChunkResult]:
    """Decode ``entries`` chunk by chunk; each result's pixels are in a ``.npy`` under ``pool``."""
    chunks = [entries[i : i + CHUNK] for i in range(0, len(entries), CHUNK)]
    if not chunks:
        return iter(())
    pool.mkdir(parents=True, exist_ok=True)
    workers = plan.workers or default_workers()
    if plan.runner == "dask":
        return _on_dask(plan, chunks, pool)
    if plan.runner != "local":
        raise ConfigError(f"unknown ingest runner {plan.runner!r}; use one of {', '.join(RUNNERS)}.")
    if not plan.fmt_cls.parallel or workers <= 1 or len(chunks) < IN_PROCESS_BELOW:
        return _in_process(plan, chunks, pool)
    return _in_processes(plan, chunks, pool, workers)


def _pool_file(pool: Path, i: int) -> str:
    return str(pool / f"chunk-{i:07d}.npy")


def _chunk_args(plan: ReadPlan, chunk: Sequence[SourceEntry], i: int, pool_file: str | None) -> tuple:
    """read_chunk's arguments for chunk ``i`` (plain data: they cross to another process)."""
    return plan.fmt_cls, plan.source, list(chunk), plan.options, plan.storage_options, i, pool_file


def _in_process(plan: ReadPlan, chunks: list, pool: Path) -> Iterator[ChunkResult]:
    fmt = plan.fmt if not plan.fmt_cls.parallel else None
    for i, chunk in enumerate(chunks):
        yield read_chunk(
            plan.fmt_cls, plan.source, chunk, plan.options, plan.storage_options, i, _pool_file(pool, i), fmt=fmt
        )


def _in_processes(plan: ReadPlan, chunks: list, pool: Path, workers: int) -> Iterator[ChunkResult]:
    # spawn: the ingesting process has threads (Prefect, torch); forking it is not safe
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as ex:
        pending: set[Future] = set()
        todo = iter(enumerate(chunks))
        try:
            while True:
                for i, chunk in todo:
                    pending.add(ex.submit(read_chunk, *_chunk_args(plan, chunk, i, _pool_file(pool, i))))
                    if len(pending) >= 2 * workers:
                        break
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()  # a worker's DataError is raised here, as itself
        finally:
            for fut in pending:
                fut.cancel()


def _on_dask(plan: ReadPlan, chunks: list, pool: Path) -> Iterator[ChunkResult]:
    """On a Dask cluster (``dask_address``, else a LocalCluster of ``workers`` processes). Workers
    may be other machines: they return the pixels, written into the pool here."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if plan.dask_address:
        client = Client(plan.dask_address, timeout="30s")
    else:
        cluster = LocalCluster(
            n_workers=plan.workers or default_workers(), threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    try:
        window = 2 * max(1, len(client.scheduler_info().get("workers", {})))
        todo = iter(enumerate(chunks))
        futures = as_completed()
        for i, chunk in todo:
            futures.add(client.submit(read_chunk, *_chunk_args(plan, chunk, i, None), pure=False))
            if futures.count() >= window:
                break
        for fut in futures:
            res = fut.result()
            np.save(_pool_file(pool, res.index), res.images, allow_pickle=False)
            yield ChunkResult(
                res.index, res.shape, res.sha256, res.seconds, path=_pool_file(pool, res.index), extents=res.extents
            )
            nxt = next(todo, None)
            if nxt is not None:
                futures.add(client.submit(read_chunk, *_chunk_args(plan, nxt[1], nxt[0], None), pure=False))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
