"""A sweep: one pipeline per grid point, fanned out through a Prefect task runner, and one
comparison report. ``pretextflow sweep CONFIG --grid pretext=simclr,byol --grid seed=0,1``.

The flow ingests once per distinct data config, sequentially (DVC takes a workspace lock), then
submits one task per point: pretrain -> freeze -> probe -> report through ``core.stages``. Points
that share a pretrain key (they differ only in probe settings, say) run one after the other, so
the second finds the first's complete artifacts instead of training the same thing concurrently.
A failing point does not stop the others; the flow writes the comparison of those that finished,
then ends Failed naming the failed points.

Absolute imports only: a deployment may load this file as its entry point."""

from __future__ import annotations

import json
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


def _error_text(exc: BaseException | None) -> str:
    if exc is None:
        return "failed (no error recorded)"
    if isinstance(exc, PretextflowError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


@task(name="sweep-point", task_run_name="{name}", **TASK_OPTIONS)
def point_task(
    name: str, point: dict[str, Any], config: dict[str, Any], workspace: str | None, ingest: dict[str, Any]
) -> dict[str, Any]:
    """One grid point: pretrain -> freeze -> probe -> report; returns its row of the comparison."""
    from pretextflow.core.data.versioning import data_version
    from pretextflow.flows.publish import publish_artifacts

    logger = get_run_logger()
    ctx = context(config, workspace)
    here = data_version(ctx.ws)
    if here != ingest["data_version"]:  # a worker on another machine, with another checkout of the data
        raise PretextflowError(
            f"{name}: the workspace {ctx.ws.root} on this machine holds data version {here}, "
            f"the sweep ingested {ingest['data_version']}. Run `dvc pull` there (or use one "
            f"shared workspace folder) and rerun the sweep."
        )
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
    logger.info("%s: run %s, linear top-1 %.4f", name, report["run_id"], report["manifest"]["metrics"]["linear_top1"])
    return sw.result_row(point, report["manifest"], report["run_uri"])


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
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from pretextflow.core.data.versioning import data_version
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.workspace import Workspace
    from pretextflow.flows.publish import artifact_key

    logger = get_run_logger()
    axes, points = sw.plan_sweep(config, grid)  # every point validated before anything runs
    if runner == "thread" and (workers or 1) > 1:
        logger.warning(
            "--runner thread: concurrent points share torch's process-wide RNG while they build "
            "their models, so a point's numbers can differ from the same config run alone; "
            "--runner process or dask reproduces them exactly"
        )
    sw.with_threads(points, threads)
    sweep_id = sw.new_sweep_id(str(config.get("name") or "sweep"), points)
    logger.info(
        "sweep %s: %d points (%s), train.threads %s",
        sweep_id,
        len(points),
        ", ".join(p.name for p in points),
        threads or "as configured",
    )

    # 1. ingest, once per distinct data config, one after the other (DVC's workspace lock)
    ingested: dict[str, dict[str, Any]] = {}
    for p in points:
        data_key = json.dumps(p.config["data"], sort_keys=True)
        if data_key not in ingested:
            out, t = timed(ingest_task, p.config, workspace, push)
            ingested[data_key] = {**out, "seconds": t}
    # data.dvc tracks all of data/: after several ingests, the last version holds every dataset
    version = data_version(Workspace.at(workspace))
    for info in ingested.values():
        info["data_version"] = version

    # 2. stage keys: points with the same pretrain key run in sequence (same artifacts)
    rows: dict[str, dict[str, Any]] = {}
    queues: dict[str, list[sw.SweepPoint]] = {}
    for p in points:
        try:
            ctx = context(p.config, workspace)
            key = ctx.keys(ctx.dataset())["pretrain"]
        except Exception as exc:  # noqa: BLE001 - that point fails, the others run
            rows[p.name] = sw.failed_row(p, _error_text(exc))
            continue
        queues.setdefault(key, []).append(p)

    # 3. fan out; wait for all
    def submit(p: sw.SweepPoint):
        data_key = json.dumps(p.config["data"], sort_keys=True)
        return point_task.submit(p.name, p.as_dict(), p.config, workspace, ingested[data_key])

    with shared_temporary_server(runner, dask_address):
        running = {}
        for key, queue in queues.items():
            first = queue.pop(0)
            running[submit(first)] = (key, first)
        while running:
            done = next(as_completed(list(running)))
            key, p = running.pop(done)
            try:
                rows[p.name] = done.result()  # raises the point's own error if it failed
            except Exception as exc:  # noqa: BLE001 - one failing point must not lose the others
                rows[p.name] = sw.failed_row(p, _error_text(exc))
                logger.error("%s failed: %s", p.name, rows[p.name]["error"])
            if queues[key]:
                nxt = queues[key].pop(0)
                running[submit(nxt)] = (key, nxt)

    # 4. the comparison, in the base config's artifact store
    summary = sw.build_summary(
        sweep_id=sweep_id,
        base=config,
        axes=axes,
        points=points,
        rows=[rows[p.name] for p in points],
        workers=workers,
        runner=runner + (f" at {dask_address}" if dask_address else ""),
        data_versions=[version],
    )
    store = ArtifactStore(
        Workspace.at(workspace).store_uri(config["store"]["uri"]), config["store"].get("storage_options")
    )
    uri = sw.write_comparison(store, summary)
    logger.info("sweep report: %s/sweep.html", uri)
    header, cells = sw.table(summary)
    create_markdown_artifact(
        markdown=sw.render_markdown(summary) + f"\nReport folder: `{uri}`\n",
        key=artifact_key("sweep", summary["name"] or "sweep"),
        description=f"pretextflow sweep {sweep_id}",
    )
    create_table_artifact(
        table=[dict(zip(header, row, strict=False)) for row in cells],
        key=artifact_key("sweep-table", summary["name"] or "sweep"),
        description=f"every point of sweep {sweep_id}, best linear top-1 first",
    )
    if summary["failed"]:
        raise sw.SweepFailed(
            "\n".join(
                [
                    f"{len(summary['failed'])} of {len(points)} sweep points failed:",
                    *(f"  {f['point']}: {f['error']}" for f in summary["failed"]),
                    f"The comparison of the others: {uri}/sweep.html",
                ]
            ),
            summary,
        )
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
