"""The whole pipeline in one flow run: ingest -> pretrain -> freeze -> probe -> report."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from .common import timed
from .stages import freeze_task, ingest_task, pretrain_task, probe_task, report_task


@flow(name="pretextflow-pipeline")
def pipeline_flow(config: dict[str, Any], workspace: str | None = None, push: bool = True,
                  refresh: bool = False) -> dict[str, Any]:
    """``refresh`` (scheduled runs): re-ingest the configured source, or ``dvc pull`` when there is
    none, before anything else; unchanged data and code then recompute nothing."""
    logger = get_run_logger()
    times: dict[str, dict[str, Any]] = {}
    ingested, t = timed(ingest_task, config, workspace, push, refresh)
    times["ingest"] = {"seconds": t, "cached": ingested.get("changed") is False}
    for name, stage_task in (("pretrain", pretrain_task), ("freeze", freeze_task), ("probe", probe_task)):
        state, t = timed(stage_task, config, workspace, return_state=True)
        out = state.result()  # raises the stage's own error if it failed
        cached = bool(out.get("cached")) or state.name == "Cached"  # served from the store or Prefect's cache
        times[name] = {"seconds": t, "cached": cached, "key": out.get("key")}
    if all(times[s]["cached"] for s in ("pretrain", "freeze", "probe")):
        logger.info("nothing changed (data version %s, same stage keys): nothing was retrained",
                    ingested.get("data_version"))
    report, t = timed(report_task, config, workspace, times)
    logger.info("run %s written to %s", report["run_id"], report["run_uri"])
    return {"run_id": report["run_id"], "run_uri": report["run_uri"], "metrics": report["manifest"]["metrics"],
            "data_version": report["manifest"]["data_version"]}
