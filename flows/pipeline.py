"""The whole pipeline in one flow run: ingest -> pretrain -> freeze -> probe -> report, watched as
one run (``core.runs.watch``: progress, live history, logger plugins; ``run_start`` .. ``run_end``)."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from .common import timed, watched_flow
from .stages import freeze_task, ingest_task, pretrain_task, probe_task, report_task


@flow(name="pretextflow-pipeline")
def pipeline_flow(
    config: dict[str, Any], workspace: str | None = None, push: bool = True, refresh: bool = False
) -> dict[str, Any]:
    """``refresh`` (scheduled runs): re-ingest the configured source, or ``dvc pull`` when there is
    none, before anything else; unchanged data and code then recompute nothing."""
    with watched_flow(config, workspace) as watch:
        result = _pipeline(config, workspace, push, refresh, watch.events)
        watch.metrics = result.pop("final_metrics", {})
        watch.extra.update(report_run_id=result["run_id"], run_uri=result["run_uri"])
    return result


def _pipeline(config: dict[str, Any], workspace: str | None, push: bool, refresh: bool, events) -> dict[str, Any]:
    logger = get_run_logger()
    t_flow = time.perf_counter()
    times: dict[str, dict[str, Any]] = {}
    ingested, t = timed(ingest_task, config, workspace, push, refresh)
    times["ingest"] = {
        "seconds": t,
        "cached": ingested.get("changed") is False,
        "compute_seconds": ingested.get("compute_seconds"),
    }
    for name, stage_task in (("pretrain", pretrain_task), ("freeze", freeze_task), ("probe", probe_task)):
        times[name] = _stage(name, stage_task, config, workspace, events)
    if all(times[s]["cached"] for s in ("pretrain", "freeze", "probe")):
        logger.info(
            "nothing changed (data version %s, same stage keys): nothing was retrained", ingested.get("data_version")
        )
    report, t = timed(report_task, config, workspace, times)
    times["report"] = {"seconds": t, "cached": False, "compute_seconds": report.get("compute_seconds")}
    flow_seconds = time.perf_counter() - t_flow
    compute = sum(v.get("compute_seconds") or 0.0 for v in times.values())
    logger.info(
        "run %s written to %s (%.1fs, of which %.1fs in the stages: orchestration %.1f%%)",
        report["run_id"],
        report["run_uri"],
        flow_seconds,
        compute,
        100 * (flow_seconds - compute) / max(flow_seconds, 1e-9),
    )
    return {
        "run_id": report["run_id"],
        "run_uri": report["run_uri"],
        "metrics": report["manifest"]["metrics"],
        "data_version": report["manifest"]["data_version"],
        "stages": times,
        "flow_seconds": flow_seconds,
        "final_metrics": report.get("final_metrics", {}),
    }


def _stage(name: str, stage_task, config: dict[str, Any], workspace: str | None, events) -> dict[str, Any]:
    """Run one stage task; its timing record. A stage Prefect served from its cache ran no stage
    code (compute 0), so its start and end (``cached``) are told to ``events`` here."""
    state, t = timed(stage_task, config, workspace, return_state=True)
    out = state.result()  # raises the stage's own error if it failed
    from_prefect = state.name == "Cached"
    if from_prefect:
        events.emit("stage_start", name, total=None, unit=None)
        events.emit("stage_end", name, status="cached", key=out.get("key"))
    return {
        "seconds": t,
        "cached": bool(out.get("cached")) or from_prefect,  # served from the store or Prefect's cache
        "key": out.get("key"),
        "compute_seconds": 0.0 if from_prefect else out.get("compute_seconds"),
    }
