"""Rerun orchestration: restore a past run's data and config (``core.runs.rerun``), run the
pipeline flow on them, and compare the metrics."""

from __future__ import annotations

from typing import Any

from pretextflow.core.runs.rerun import compare_rerun, prepare_rerun
from pretextflow.flows.pipeline import pipeline_flow


def rerun(
    ref: str,
    workspace: str | None = None,
    no_cache: bool = False,
    tolerance: float | None = None,
    remote: str | None = None,
    storage_options: dict[str, Any] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Rerun a past run from its manifest; returns the comparison (``identical`` is the verdict).
    ``quiet``: no progress bars or lines (whatever the recorded ``progress.mode``: it changes no number)."""
    plan = prepare_rerun(ref, workspace, no_cache, tolerance, remote, storage_options)
    config = plan.cfg.model_dump(mode="json")
    if quiet:
        config["progress"]["mode"] = "off"
    result = pipeline_flow(config, str(plan.root), False)
    return compare_rerun(plan, result["run_uri"])
