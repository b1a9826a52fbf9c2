"""The manifest: what a run used and produced, enough to rerun it and get the same numbers."""

from __future__ import annotations

import re
import time
import uuid
from importlib import metadata
from typing import Any

from pretextflow.core.config import RunConfig
from pretextflow.core.data.dataset import Dataset
from pretextflow.core.data.versioning import git_commit
from pretextflow.core.errors import StageInputError
from pretextflow.core.registry.preflight import resolved_pretext_params
from pretextflow.core.registry.registry import Registry
from pretextflow.core.runs.history import MANIFEST_SCHEMA, load_manifest
from pretextflow.core.security import credentials
from pretextflow.core.security.redaction import redact
from pretextflow.core.store import ArtifactStore

SCHEMA_VERSION = MANIFEST_SCHEMA  # one number: written here, checked by core.runs when a manifest is read
PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "prefect",
    "dvc",
    "pluggy",
    "fsspec",
    "pydantic",
    "safetensors",
    "scikit-learn",
    "matplotlib",
)


def new_run_id(name: str, probe_key: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run"
    # + a random tag: two runs of one config finishing in the same second (a scheduled and a manual
    # one) must not write their reports into one folder, each file overwriting the other's
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{slug}-{probe_key[:8]}-{uuid.uuid4().hex[:8]}"


def package_versions(extra: list[str] | None = None) -> dict[str, str]:
    out = {}
    for name in ("pretextflow", *PACKAGES, *(extra or [])):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return dict(sorted(out.items()))


def code_version() -> dict[str, Any]:
    from pretextflow.core.version import SOURCE_DIR, __version__

    return {"pretextflow": __version__, **git_commit(SOURCE_DIR)}


def build_manifest(
    *,
    run_id: str,
    cfg: RunConfig,
    registry: Registry,
    dataset: Dataset,
    data_version: str,
    data_dvc: dict,
    keys: dict[str, str],
    store: ArtifactStore,
    metrics: dict,
    history: dict,
    stage_times: dict[str, dict[str, Any]],
    dvc_remote: str | None = None,
) -> dict[str, Any]:
    """The run's manifest: its config (no secrets), data, code, packages and plugins, the stored
    artifacts it used, how pretraining went, and the probe's metrics."""
    config = recorded_config(cfg, registry)
    plugins = plugin_record(cfg, registry, dataset)
    third_party = sorted({p["package"] for p in plugins.values() if p["package"] != "pretextflow"})
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "name": cfg.name,
        "seed": cfg.seed,
        "data_version": data_version,
        "data_dvc": data_dvc,
        "dvc_remote": dvc_remote,  # credentials redacted; what `pretextflow rerun` pulls the data from
        "dataset": dataset_record(dataset),
        "config": config,
        "code_version": code_version(),
        "packages": package_versions(third_party),
        "plugins": plugins,
        "device": history.get("device"),
        "threads": history.get("threads"),
        "artifacts": {
            stage: {"key": key, "uri": redact(credentials.for_record(store.uri_of(stage, key)))}
            for stage, key in keys.items()
        },
        "stages": stage_times,
        "pretrain": pretrain_summary(history),
        "metrics": {k: v for k, v in metrics.items() if k not in ("detail",)},
        "metrics_detail": metrics.get("detail", {}),
        "teacher": teacher_record(config["pretext"]["params"]),
    }


def teacher_record(params: dict[str, Any]) -> dict[str, Any] | None:
    """What a distillation run learned from: for a pretext task whose params name a ``teacher`` (a run
    folder, its manifest or an export folder, as ``pretextflow.api.teachers`` loads them), its URI and
    content digest and, when it is a run, that run's backbone and accuracies, so the report puts the
    student beside its teacher. None for every other task."""
    uri = params.get("teacher")
    if not isinstance(uri, str):
        return None
    record: dict[str, Any] = {"uri": redact(credentials.for_record(uri)), "sha256": params.get("teacher_sha256")}
    try:
        teacher = load_manifest(uri)  # a run folder or its manifest.json, credentials resolved, schema checked
    except (StageInputError, OSError):
        return record  # an export folder (or a manifest no longer there): its URI and digest only
    backbone = teacher["config"]["backbone"]
    record.update(
        run_id=teacher.get("run_id"),
        pretext=teacher["config"]["pretext"]["name"],
        backbone={"name": backbone["name"], "kwargs": backbone.get("kwargs", {})},
        metrics={k: teacher["metrics"].get(k) for k in ("linear_top1", "knn_top1")},
        label_efficiency=[
            {k: r.get(k) for k in ("fraction", "num_labels", "ssl_linear_top1", "ssl_knn_top1")}
            for r in teacher["metrics"].get("label_efficiency", [])
        ],
    )
    return record


def last_change(dataset: Dataset) -> dict[str, Any] | None:
    """What the ingest that wrote this version changed, when it ran in this workspace."""
    from pathlib import Path

    from pretextflow.core.data.dataset import meta_bytes
    from pretextflow.core.data.incremental import read_change, version_digest

    if not dataset.location or "://" in dataset.location[0]:
        return None
    return read_change(Path(dataset.location[0]).parent, dataset.name, version_digest(meta_bytes(dataset.meta)))


def describe_change(change: dict[str, Any]) -> str:
    from pretextflow.core.data.layout import Changes

    known = {k: v for k, v in change.items() if k in Changes.__dataclass_fields__}
    return Changes(**known).describe()


def dataset_record(dataset: Dataset) -> dict[str, Any]:
    """A dataset as the manifest names it (the pretraining one, and a transfer probe's)."""
    record = {
        "name": dataset.name,
        "fingerprint": dataset.fingerprint,
        "counts": dataset.meta["counts"],
        "image_shape": dataset.meta["image_shape"],
        "format": dataset.meta["format"],
    }
    if dataset.meta.get("shards") is not None:
        record["shards"] = len(dataset.meta["shards"])
    change = last_change(dataset)
    if change:  # what the ingest that wrote this version changed
        record["last_change"] = describe_change(change)
    if "adapted_from" in dataset.meta:  # resized to the backbone's input for probing
        record["source_image_shape"] = dataset.meta["adapted_from"]["image_shape"]
    return record


def recorded_config(cfg: RunConfig, registry: Registry) -> dict[str, Any]:
    """The config as the manifest records it: the pretext task's resolved parameters, and never a
    secret in the store's options or URI or the data source."""
    config = cfg.model_dump(mode="json")
    config["pretext"]["params"] = resolved_pretext_params(cfg, registry)
    # never a secret: references the user wrote (${env:NAME}) stay, so a rerun can resolve them again
    config["store"]["storage_options"] = credentials.for_record(cfg.store.storage_options)
    config["store"]["uri"] = redact(credentials.for_record(cfg.store.uri))
    if config["data"].get("source"):
        config["data"]["source"] = redact(credentials.for_record(cfg.data.source))
    if config["backbone"].get("weights"):
        config["backbone"]["weights"] = redact(credentials.for_record(cfg.backbone.weights))
    return config


def plugin_record(cfg: RunConfig, registry: Registry, dataset: Dataset) -> dict[str, dict[str, str]]:
    """Name, distribution package and version of the pretext task, backbone and dataset format used."""
    plugins = {}
    for kind, name in (
        ("pretext", cfg.pretext.name),
        ("backbone", cfg.backbone.name),
        ("dataset", dataset.meta["format"]),
    ):
        info = registry.describe(kind, name)
        plugins[kind] = {"name": name, "package": info.package, "version": info.version}
    return plugins


def pretrain_summary(history: dict) -> dict[str, Any]:
    """How pretraining went, from its ``history.json``."""
    return {
        "epochs": len(history.get("epoch_loss", [])),
        "final_loss": (history.get("epoch_loss") or [None])[-1],
        "images_per_second": history.get("images_per_second"),
        "seconds": sum(history.get("epoch_seconds", [])),
        # train.on_nonfinite: rollback: each time the loss went non-finite and training went back
        "rollbacks": history.get("rollbacks", []),
    }
