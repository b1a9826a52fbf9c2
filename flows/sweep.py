"""A sweep: one pipeline per grid point, fanned out through a Prefect task runner, and one
comparison report. ``pretextflow sweep CONFIG --grid pretext=simclr,byol --grid seed=0,1``.

The flow ingests once per distinct data config, sequentially (DVC takes a workspace lock), then
submits one task per point: pretrain -> freeze -> probe -> report through ``core.stages``. Points
that share a pretrain key (they differ only in probe settings, say) run one after the other, so
the second finds the first's complete artifacts instead of training the same thing concurrently.
A failing point does not stop the others; the flow writes the comparison of those that finished,
then ends Failed naming the failed points.

What runs when (the points, the ingests, the pretrain-key queues) and the comparison are plain
Python in ``core.runs.sweep``; this module is the Prefect part: the flow, its tasks and task
runners, submitting the points and waiting for them.

Absolute imports only: a deployment may load this file as its entry point."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from pretextflow.core import stages
from pretextflow.core.errors import ConfigError, PretextflowError
from pretextflow.core.runs import sweep as sw
from pretextflow.flows.common import TASK_OPTIONS, context, timed
from pretextflow.flows.stages import ingest_task

RUNNERS = ("thread", "process", "dask")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def point_threads(runner: str, workers: int, dask_address: str | None = None) -> int | None:
    """torch threads per point: the cores shared by the concurrent points. None (all cores of the
    machine that runs the point) on a remote Dask cluster, whose machines we cannot see from here."""
    if runner == "dask" and dask_address:
        return None
    return max(1, cpu_cores() // max(1, workers))


def task_runner(runner: str = "thread", workers: int = 2, dask_address: str | None = None):
    """The Prefect task runner for ``--runner`` (thread, process, dask)."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: needs at least 1")
    if dask_address and runner != "dask":
        raise ConfigError(f"--dask-address needs --runner dask (got --runner {runner})")
    if runner == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if runner == "process":
        return ProcessPoolTaskRunner(max_workers=workers)
    if runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError(
                "--runner dask needs prefect-dask: pip install 'pretextflow[dask]' (make install includes it)"
            ) from None
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        # one single-threaded worker process per point: torch gets its threads from train.threads
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        )
    raise ConfigError(f"--runner {runner!r}: choose one of {', '.join(RUNNERS)}")


@contextmanager
def shared_temporary_server(runner: str, dask_address: str | None = None) -> Iterator[None]:
    """Without PREFECT_API_URL, Prefect runs a temporary server for this process, and every worker
    process (process pool, local Dask cluster) would start one of its own. Point them at ours."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if runner == "thread" or dask_address or PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL"):
        yield
        return
    with get_client(sync_client=True) as client:
        os.environ["PREFECT_API_URL"] = str(client.api_url).rstrip("/")
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@task(name="sweep-point", task_run_name="{name}", **TASK_OPTIONS)
def point_task(
    name: str, point: dict[str, Any], config: dict[str, Any], workspace: str | None, ingest: dict[str, Any]
) -> dict[str, Any]:
    """One grid point: pretrain -> freeze -> probe -> report; returns its row of the comparison.
    Watched as a run of its own (``core.runs.watch``: live history, loggers), its progress as plain
    lines (points run side by side: bars would fight)."""
    from pretextflow.core.data.versioning import data_version
    from pretextflow.core.runs.watch import watched_run

    logger = get_run_logger()
    ctx = context(config, workspace)
    here = data_version(ctx.ws)
    if here != ingest["data_version"]:  # a worker on another machine, with another checkout of the data
        raise PretextflowError(
            f"{name}: the workspace {ctx.ws.root} on this machine holds data version {here}, "
            f"the sweep ingested {ingest['data_version']}. Run `dvc pull` there (or use one "
            f"shared workspace folder) and rerun the sweep."
        )
    progress = "off" if ctx.cfg.progress.mode == "off" else "lines"
    with watched_run(ctx.cfg, ctx.registry, ctx.store, ctx.ws.root, progress=progress) as watch:
        ctx.events = watch.events
        report = _point_stages(ctx, ingest, logger)
        watch.metrics = report["final_metrics"]
        watch.extra.update(report_run_id=report["run_id"], run_uri=report["run_uri"])
    logger.info("%s: run %s, linear top-1 %.4f", name, report["run_id"], report["manifest"]["metrics"]["linear_top1"])
    return sw.result_row(point, report["manifest"], report["run_uri"])


def _point_stages(ctx, ingest: dict[str, Any], logger) -> dict[str, Any]:
    """A point's pretrain -> freeze -> probe -> report (its Prefect artifacts too); the report's result."""
    from pretextflow.flows.publish import publish_artifacts

    times: dict[str, dict[str, Any]] = {
        "ingest": {"seconds": ingest.get("seconds", 0.0), "cached": ingest.get("changed") is False}
    }
    for stage, fn in (("pretrain", stages.run_pretrain), ("freeze", stages.run_freeze), ("probe", stages.run_probe)):
        out, t = timed(fn, ctx, logger=logger)
        times[stage] = {
            "seconds": t,
            "cached": bool(out.get("cached")),
            "key": out.get("key"),
            "compute_seconds": out.get("compute_seconds"),
        }
    report, t = timed(stages.run_report, ctx, stage_times=times, logger=logger)
    publish_artifacts(report["manifest"], report["run_uri"])
    return report


def _ingest_once(points: list[sw.SweepPoint], workspace: str | None, push: bool) -> tuple[dict[str, Any], str]:
    """Ingest once per distinct data config, one after the other (DVC's workspace lock): each
    ingest's result by data key, and the data version after them."""
    ingested: dict[str, dict[str, Any]] = {}
    for p in sw.ingest_points(points):
        out, t = timed(ingest_task, p.config, workspace, push)
        ingested[sw.data_key(p)] = {**out, "seconds": t}
    return ingested, sw.stamp_data_version(ingested, workspace)


def _pretrain_key(workspace: str | None):
    def key(p: sw.SweepPoint) -> str:
        ctx = context(p.config, workspace)
        return ctx.keys(ctx.dataset())["pretrain"]

    return key


def _run_points(queue: sw.PointQueue, workspace: str | None, ingested: dict[str, Any], logger) -> None:
    """Submit the points to the flow's task runner as the queue releases them; wait for all."""

    def submit(p: sw.SweepPoint):
        return point_task.submit(p.name, p.as_dict(), p.config, workspace, ingested[sw.data_key(p)])

    running = {submit(p): p for p in queue.start()}
    while running:
        done = next(as_completed(list(running)))
        p = running.pop(done)
        try:
            row = done.result()  # raises the point's own error if it failed
        except Exception as exc:  # noqa: BLE001 - one failing point must not lose the others
            nxt = queue.failed(p, exc)
            logger.error("%s failed: %s", p.name, queue.rows[p.name]["error"])
        else:
            nxt = queue.finished(p, row)
        if nxt is not None:
            running[submit(nxt)] = nxt


def _publish(summary: dict[str, Any]) -> None:
    """The comparison as Prefect artifacts: its Markdown and its table."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from pretextflow.flows.publish import artifact_key

    header, cells = sw.table(summary)
    create_markdown_artifact(
        markdown=sw.render_markdown(summary) + f"\nReport folder: `{summary['uri']}`\n",
        key=artifact_key("sweep", summary["name"] or "sweep"),
        description=f"pretextflow sweep {summary['sweep_id']}",
    )
    create_table_artifact(
        table=[dict(zip(header, row, strict=False)) for row in cells],
        key=artifact_key("sweep-table", summary["name"] or "sweep"),
        description=f"every point of sweep {summary['sweep_id']}, best linear top-1 first",
    )


@flow(name="pretextflow-sweep", task_runner=ThreadPoolTaskRunner(max_workers=2))
def sweep_flow(
    config: dict[str, Any],
    grid: list[str],
    workspace: str | None = None,
    push: bool = True,
    threads: int | None = None,
    runner: str = "thread",
    workers: int | None = 2,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """``config``: the validated base config (``--set`` applied); ``grid``: ``KEY=v1,v2`` specs.
    ``threads``: train.threads of every point that does not set it. ``runner``, ``workers`` and
    ``dask_address`` describe the task runner (pick it with ``sweep_flow.with_options``)."""
    logger = get_run_logger()
    plan = sw.SweepPlan.build(config, grid, threads)  # every point validated before anything runs
    if runner == "thread" and (workers or 1) > 1:
        logger.warning(
            "--runner thread: concurrent points share torch's process-wide RNG while they build "
            "their models, so a point's numbers can differ from the same config run alone; "
            "--runner process or dask reproduces them exactly"
        )
    logger.info(
        "sweep %s: %d points (%s), train.threads %s",
        plan.sweep_id,
        len(plan.points),
        ", ".join(p.name for p in plan.points),
        threads or "as configured",
    )
    ingested, version = _ingest_once(plan.points, workspace, push)
    queue = sw.PointQueue(plan.points, _pretrain_key(workspace))  # same pretrain key: one after the other
    with shared_temporary_server(runner, dask_address):
        _run_points(queue, workspace, ingested, logger)
    summary = sw.compare(  # in the base config's artifact store
        plan,
        queue.results(),
        runner=runner + (f" at {dask_address}" if dask_address else ""),
        workers=workers,
        data_version=version,
        workspace=workspace,
    )
    logger.info("sweep report: %s/sweep.html", summary["uri"])
    _publish(summary)
    failure = sw.SweepFailed.of(summary)
    if failure is not None:
        raise failure
    return summary


@flow(name="pretextflow-sweep-config")
def sweep_from_config(
    config_path: str,
    grid: list[str],
    overrides: list[str] | None = None,
    workspace: str | None = None,
    runner: str = "thread",
    workers: int = 2,
    dask_address: str | None = None,
    push: bool = True,
) -> dict[str, Any]:
    """A sweep as a deployment runs it (``flows/sweep.py:sweep_from_config``): plain parameters
    (a config path, ``--set``-style overrides, ``--grid`` specs); the sweep itself is a subflow."""
    from pretextflow.core.config import load_config

    cfg = load_config(config_path, overrides or []).model_dump(mode="json")
    chosen = task_runner(runner, workers, dask_address)
    return sweep_flow.with_options(task_runner=chosen)(
        cfg,
        grid,
        workspace,
        push,
        point_threads(runner, workers, dask_address),
        runner,
        None if dask_address else workers,
        dask_address,
    )
