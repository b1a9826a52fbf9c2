"""The entry point that ``prefect.yaml`` deployments name (``flows/entrypoint.py:scheduled_pipeline``).

Prefect loads a deployment's entry point as a file, so this module uses absolute imports only.
Its parameters are plain values a deployment can hold: a config path and ``--set``-style overrides."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretextflow.core.config import load_config
from pretextflow.flows.pipeline import pipeline_flow


@flow(name="pretextflow-scheduled")
def scheduled_pipeline(
    config_path: str,
    overrides: list[str] | None = None,
    workspace: str | None = None,
    refresh: bool = True,
    push: bool = True,
) -> dict[str, Any]:
    """Refresh the data, then run the pipeline; unchanged data and code recompute nothing."""
    cfg = load_config(config_path, overrides or []).model_dump(mode="json")
    return pipeline_flow(cfg, workspace, push, refresh)
