"""Whole runs from Python: ``pretextflow.run(config)`` runs the pipeline flow (the same Prefect flow
as ``pretextflow run``, so it shows in the Prefect UI) and returns a :class:`Run`;
``pretextflow.runs(workspace)`` lists the past ones."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Run:
    """A finished run: its id, folder, manifest and metrics, and its frozen backbone on demand."""

    run_id: str
    uri: str
    manifest: dict[str, Any] = field(repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest["metrics"]

    @property
    def data_version(self) -> str:
        return self.manifest["data_version"]

    @property
    def report_html(self) -> str:
        return f"{self.uri}/report.html"

    @property
    def report_md(self) -> str:
        return f"{self.uri}/report.md"

    def backbone(self):
        """The frozen backbone (``pretextflow.load_backbone`` of this run)."""
        from pretextflow.core.export.loading import load_backbone

        return load_backbone(self.uri, self.storage_options)


def _config_dict(config: Any, overrides: list[str] | None) -> dict[str, Any]:
    """A path, a dict or a RunConfig, plus ``--set`` style overrides, validated against the config
    schema and the installed plugins."""
    from pretextflow.core.config import RunConfig, load_config
    from pretextflow.core.registry.preflight import check_plugins

    if isinstance(config, RunConfig):
        cfg = load_config(raw=config.model_dump(mode="json"), overrides=overrides)
    elif isinstance(config, dict):
        cfg = load_config(raw=config, overrides=overrides)
    else:
        cfg = load_config(Path(config), overrides)
    check_plugins(cfg)
    return cfg.model_dump(mode="json")


def run(
    config: Any,
    overrides: list[str] | None = None,
    workspace: str | os.PathLike = ".",
    push: bool = True,
    quiet: bool = False,
) -> Run:
    """Run ingest → pretrain → freeze → probe → report for ``config`` (a YAML path, a dict or a
    ``RunConfig``; ``overrides`` like ``["train.epochs=3"]``) in ``workspace``. Cached stages are not
    recomputed. ``quiet``: no progress bars or lines (``progress.mode=off``, the CLI's ``--quiet``);
    the logs and the loggers stay. Raises the pipeline's own errors
    (``pretextflow.core.errors.PretextflowError``)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from pretextflow.core.store import ArtifactStore
    from pretextflow.flows.pipeline import pipeline_flow

    cfg = _config_dict(config, [*(overrides or []), *(["progress.mode=off"] if quiet else [])])
    result = pipeline_flow(cfg, str(Path(workspace).resolve()), push)
    options = cfg["store"]["storage_options"]
    manifest = ArtifactStore(result["run_uri"], options).read_json("manifest.json")
    return Run(run_id=result["run_id"], uri=result["run_uri"], manifest=manifest, storage_options=options)


def runs(workspace: str | os.PathLike = ".", store: str | None = None) -> list[Run]:
    """The complete runs of a workspace's artifact store (or of ``store``, any fsspec URI), oldest first."""
    from pretextflow.core.runs.history import RUNS, list_runs
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.workspace import Workspace

    artifacts = ArtifactStore(store or Workspace.at(str(Path(workspace).resolve())).store_uri("artifacts"))
    return [
        Run(run_id=r["run_id"], uri=r["uri"], manifest=artifacts.read_json(RUNS, r["run_id"], "manifest.json"))
        for r in list_runs(artifacts)
    ]
