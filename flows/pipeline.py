"""The whole pipeline in one flow run: ingest -> pretrain -> freeze -> probe -> report."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from .common import timed
from .stages import freeze_task, ingest_task, pretrain_task, probe_task, report_task


@flow(name="pretextflow-pipeline")
def pipeline_flow(config: dict[str, Any], workspace: str | None = None, push: bool = True) -> dict[str, Any]:
    logger = get_run_logger()
    times: dict[str, dict[str, Any]] = {}
    ingested, t = timed(ingest_task, config, workspace, push)
    times["ingest"] = {"seconds": t, "cached": ingested.get("changed") is False}
    for name, stage_task in (("pretrain", pretrain_task), ("freeze", freeze_task), ("probe", probe_task)):
        out, t = timed(stage_task, config, workspace)
        times[name] = {"seconds": t, "cached": bool(out.get("cached")), "key": out.get("key")}
    report, t = timed(report_task, config, workspace, times)
    logger.info("run %s written to %s", report["run_id"], report["run_uri"])
    return {"run_id": report["run_id"], "run_uri": report["run_uri"], "metrics": report["manifest"]["metrics"],
            "data_version": report["manifest"]["data_version"]}
