"""The entry points that deployments name: ``flows/entrypoint.py:scheduled_pipeline`` (prefect.yaml)
and ``flows/entrypoint.py:node_pretrain`` (prefect-nodes.yaml: one node's part of a multi-node pretraining).

Prefect loads a deployment's entry point as a file, so this module uses absolute imports only.
Its parameters are plain values a deployment can hold: a config path and ``--set``-style overrides."""

from __future__ import annotations

from typing import Any

from prefect import flow

from pretextflow.core.config import load_config
from pretextflow.flows.pipeline import pipeline_flow
from pretextflow.flows.stages import pretrain_flow


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


@flow(name="pretextflow-pretrain-node")
def node_pretrain(config_path: str, overrides: list[str] | None = None, workspace: str | None = None) -> dict[str, Any]:
    """This node's part of a pretraining on ``train.nodes`` machines: the pretrain stage alone, its
    ranks meeting the other nodes' at ``train.rdzv_endpoint`` (docs/distributed.md). Every node gets
    the same config; the one whose address the endpoint names hosts the rendezvous."""
    cfg = load_config(config_path, overrides or []).model_dump(mode="json")
    return pretrain_flow(cfg, workspace)
