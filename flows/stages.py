"""One Prefect task per stage (used by the pipeline) and one flow per stage (to run it alone). A
stage run alone shows its progress and writes its live history; the logger plugins hear only of
whole runs (``flows.pipeline``)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from pretextflow.core import stages

from .common import TASK_OPTIONS, context, stage_task_options, watched_flow


@task(name="ingest", **TASK_OPTIONS)
def ingest_task(
    config: dict[str, Any], workspace: str | None = None, push: bool = True, refresh: bool = False
) -> dict[str, Any]:
    return stages.run_ingest(context(config, workspace), push=push, logger=get_run_logger(), refresh=refresh)


@task(name="pretrain", task_run_name="pretrain", **stage_task_options("pretrain"))
def pretrain_task(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    return stages.run_pretrain(context(config, workspace), logger=get_run_logger())


@task(name="freeze", task_run_name="freeze", **stage_task_options("freeze"))
def freeze_task(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    return stages.run_freeze(context(config, workspace), logger=get_run_logger())


@task(name="probe", task_run_name="probe", **stage_task_options("probe"))
def probe_task(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    return stages.run_probe(context(config, workspace), logger=get_run_logger())


@task(name="report", **TASK_OPTIONS)
def report_task(
    config: dict[str, Any], workspace: str | None = None, stage_times: dict[str, Any] | None = None
) -> dict[str, Any]:
    from .publish import publish_artifacts

    result = stages.run_report(context(config, workspace), stage_times=stage_times, logger=get_run_logger())
    publish_artifacts(result["manifest"], result["run_uri"])
    return result


@flow(name="ingest")
def ingest_flow(config: dict[str, Any], workspace: str | None = None, push: bool = True) -> dict[str, Any]:
    with watched_flow(config, workspace, loggers=False):
        return ingest_task(config, workspace, push)


@flow(name="pretrain")
def pretrain_flow(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    with watched_flow(config, workspace, loggers=False):
        return pretrain_task(config, workspace)


@flow(name="freeze")
def freeze_flow(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    with watched_flow(config, workspace, loggers=False):
        return freeze_task(config, workspace)


@flow(name="probe")
def probe_flow(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    with watched_flow(config, workspace, loggers=False):
        return probe_task(config, workspace)


@flow(name="report")
def report_flow(config: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
    with watched_flow(config, workspace, loggers=False):
        return report_task(config, workspace)
