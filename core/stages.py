"""The stages as plain functions with small, JSON-serialisable inputs and outputs. The Prefect
flows in ``pretextflow.flows`` wrap exactly these; so can any other orchestrator, or a script.

Each stage's key hashes what determines its output (see ``core.keys``); the key names the
artifact's folder in the store, and a stage whose complete artifact exists is not recomputed."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pretextflow.core.config import RunConfig
from pretextflow.core.data.dataset import Dataset, load_dataset
from pretextflow.core.keys import code_digest, stage_key
from pretextflow.core.registry.preflight import resolved_pretext_params
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.events import EventBus, progress_callback
from pretextflow.core.training.weights import weights_sha256
from pretextflow.core.workspace import Workspace

log = logging.getLogger("pretextflow")

# Training settings that do not change what is learned (only how it is logged or checkpointed).
_TRAIN_FIELDS_NOT_IN_KEY = {"log_every", "checkpoint_every", "checkpoint_every_steps", "threads", "device"} | {
    # where the processes meet and how often they may restart: not what they learn (nodes is in the key:
    # the world size decides how sums are rounded)
    "rdzv_endpoint",
    "rdzv_timeout",
    "max_restarts",
    "local_addr",
}
# ...except after a non-finite loss with train.on_nonfinite=rollback: then the checkpoint schedule decides
# which state is "the last good one", and the factor and the limit decide the rest of the run.
_ROLLBACK_FIELDS = {"checkpoint_every", "checkpoint_every_steps", "rollback_lr_factor", "max_rollbacks"}


def _train_fields_not_in_key(cfg: RunConfig) -> set[str]:
    if cfg.train.on_nonfinite == "rollback":
        return _TRAIN_FIELDS_NOT_IN_KEY - _ROLLBACK_FIELDS
    return _TRAIN_FIELDS_NOT_IN_KEY | _ROLLBACK_FIELDS  # "stop": a diverged run leaves no artifact


@dataclass
class StageContext:
    ws: Workspace
    cfg: RunConfig
    registry: Registry
    store: ArtifactStore
    events: EventBus = field(default_factory=EventBus, repr=False)  # who watches (core.runs.watch); none by default
    _probe_datasets: dict[str, Dataset] = field(default_factory=dict, repr=False)  # probe.data, resized once

    @classmethod
    def create(cls, cfg: RunConfig, workspace: str | None = None, registry: Registry | None = None) -> StageContext:
        ws = Workspace.at(workspace)
        store = ArtifactStore(ws.store_uri(cfg.store.uri), cfg.store.storage_options)
        return cls(ws, cfg, registry or get_registry(), store)

    def dataset(self) -> Dataset:
        """The dataset the stages read: the workspace's, or the one at ``data.uri`` (on a node
        without the data: each rank then reads only the rows of its batches)."""
        if not self.cfg.data.uri:
            from pretextflow.core.data.ingest import ensure_consistent

            ensure_consistent(self.ws)  # an ingest that died half-way is rolled back before anyone reads
        return self.load(self.cfg.data)

    def load(self, d) -> Dataset:
        """Dataset ``d`` (``data`` or ``probe.data``): at ``d.uri`` (resolved when the config was
        validated; read with ``store.storage_options``), else in the workspace's data/ folder."""
        if d.uri:
            return load_dataset(d.uri, d.name, self.cfg.store.storage_options)
        return load_dataset(str(self.ws.data_dir), d.name)

    def probe_dataset(self, ds: Dataset) -> Dataset:
        """What the probe stage evaluates on: ``probe.data`` brought to the backbone's input shape
        (the pretraining data's channels at ``train.image_size``, else at its stored size), or the
        pretraining dataset itself."""
        if self.cfg.probe.data is None:
            return ds
        from pretextflow.core.training.model import input_size

        size = input_size(self.cfg, ds.meta)
        shape = [ds.in_chans, size, size]
        probe_ds = self.load(self.cfg.probe.data)  # memory-mapped or read by row ranges: cheap
        memo = f"{probe_ds.fingerprint}->{shape}"
        if memo not in self._probe_datasets:  # resizing is not: keys, the probe and the report all ask
            from pretextflow.core.data.adapt import adapt_dataset

            self._probe_datasets[memo] = adapt_dataset(probe_ds, shape)
        return self._probe_datasets[memo]

    def plugin_versions(self) -> dict[str, dict[str, str]]:
        out = {}
        for kind, name in (("pretext", self.cfg.pretext.name), ("backbone", self.cfg.backbone.name)):
            info = self.registry.describe(kind, name)
            out[kind] = {"name": name, "package": info.package, "version": info.version}
        return out

    # -- keys ----------------------------------------------------------------------------------
    def code_version(self, stage: str) -> str:
        """Content hash of the code a stage runs: the stage's entry module and the plugins it calls,
        with everything they import, transitively (``core.keys.code_digest``)."""
        from pretextflow.core.evaluation import probe
        from pretextflow.core.training import freeze, loop

        backbone = self.registry.backbone(self.cfg.backbone.name).build
        entry_points = {
            "pretrain": [loop, backbone, self.registry.pretext_task(self.cfg.pretext.name)],
            "freeze": [freeze],
            "probe": [probe, backbone],
        }[stage]
        return code_digest(*entry_points)

    def pretrain_key(self, ds: Dataset) -> str:
        cfg = self.cfg
        train = cfg.train.model_dump(mode="json", exclude=_train_fields_not_in_key(cfg))
        return stage_key(
            "pretrain",
            {
                "data": ds.fingerprint,
                "seed": cfg.seed,
                "train": train,
                "backbone": cfg.backbone.model_dump(mode="json"),
                "weights": weights_sha256(cfg.backbone.weights),  # the content, not only the URI
                "pretext": {"name": cfg.pretext.name, "params": resolved_pretext_params(cfg, self.registry)},
                "plugins": self.plugin_versions(),
                "code": self.code_version("pretrain"),
            },
        )

    def freeze_key(self, pretrain_key: str) -> str:
        return stage_key("freeze", {"pretrain": pretrain_key, "code": self.code_version("freeze")})

    def probe_key(self, ds: Dataset, freeze_key: str) -> str:
        cfg = self.cfg
        return stage_key(
            "probe",
            {
                "freeze": freeze_key,
                "data": ds.fingerprint,
                "seed": cfg.seed,
                "probe": cfg.probe.model_dump(mode="json", exclude={"device"}),  # like train.device
                "backbone": cfg.backbone.model_dump(mode="json"),  # the random-init baseline depends on it
                "weights": weights_sha256(cfg.backbone.weights),
                "plugins": self.plugin_versions()["backbone"],
                "code": self.code_version("probe"),
            },
        )

    def keys(self, ds: Dataset) -> dict[str, str]:
        pk = self.pretrain_key(ds)
        fk = self.freeze_key(pk)
        return {"pretrain": pk, "freeze": fk, "probe": self.probe_key(self.probe_dataset(ds), fk)}


def store_preflight(ctx: StageContext, stage: str, key: str | None = None, logger=log) -> None:
    """Before a stage that writes starts work: the store takes a write (and its removal) and, if it
    is a local folder, has ``store.min_free_mb`` free. A full, read-only or unreachable store stops
    the stage here with a StoreError naming the store and the fix, before any training is lost.
    Temporary files that a killed earlier attempt left in the stage's folder are removed."""
    from pretextflow.core.store import StoreError

    try:
        ctx.store.check_writable(int(ctx.cfg.store.min_free_mb * 1e6))
        if key is not None:
            removed = ctx.store.remove_stale_temp_files(stage, key)
            if removed:
                logger.info(
                    "%s %s: removed %d temporary file(s) left by an interrupted writer: %s",
                    stage,
                    key,
                    len(removed),
                    ", ".join(removed),
                )
    except StoreError as exc:
        raise StoreError(f"{stage} cannot start: {exc}", transient=exc.transient) from exc.__cause__


def _timed_stage(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Adds ``compute_seconds``, the time spent inside the stage itself: what an orchestrator's
    overhead is measured against (the flow's wall time minus the stages' compute time); and tells
    ``ctx.events`` the stage started and how it ended (``completed``; ``cached`` when its artifact
    was there, or an ingest changed nothing; ``failed``, with the error)."""
    stage = fn.__name__.removeprefix("run_")

    @functools.wraps(fn)
    def wrapper(ctx: StageContext, *args, **kwargs) -> dict[str, Any]:
        ctx.events.emit("stage_start", stage, total=None, unit=None)
        t = time.perf_counter()
        try:
            out = fn(ctx, *args, **kwargs)
        except BaseException as exc:
            from pretextflow.core.security.redaction import redact

            ctx.events.emit("stage_end", stage, status="failed", error=redact(f"{type(exc).__name__}: {exc}"))
            raise
        out["compute_seconds"] = time.perf_counter() - t
        cached = bool(out.get("cached")) or out.get("changed") is False
        ctx.events.emit("stage_end", stage, status="cached" if cached else "completed", key=out.get("key"))
        return out

    return wrapper


@_timed_stage
def run_ingest(ctx: StageContext, push: bool = True, logger=log, refresh: bool = False) -> dict[str, Any]:
    """Ingest the config's source if it names one; otherwise describe the dataset already there
    (after ``dvc pull`` when ``refresh``: a scheduled run takes the version data.dvc names). A
    transfer probe's ``probe.data.source`` is ingested after it, into the same data version."""
    out = _ingest_or_describe(ctx, ctx.cfg.data, push, logger, refresh)
    pd = ctx.cfg.probe.data
    if pd is not None and pd.source:
        probe_out = _ingest_or_describe(ctx, pd, push, logger, refresh=False)
        changed = bool(out.get("changed")) or bool(probe_out.get("changed"))
        out = {**out, "data_version": probe_out["data_version"], "changed": changed, "probe_data": probe_out}
    return out


def _ingest_or_describe(ctx: StageContext, d, push: bool, logger, refresh: bool) -> dict[str, Any]:
    from pretextflow.core.data.ingest import IngestSettings, ingest, recover_interrupted_ingest, summary
    from pretextflow.core.data.versioning import data_version, dvc, workspace_lock

    if d.uri:  # published elsewhere (data.uri): nothing to ingest here; its version is its content hash
        ds = ctx.load(d)
        return summary(ds, f"fingerprint:{ds.fingerprint}", changed=False)
    if d.source:
        if not d.format:
            from pretextflow.core.errors import ConfigError

            raise ConfigError(f"a format is required when {d.name!r} has a source (e.g. idx, imagefolder).")
        return ingest(
            ctx.ws,
            d.source,
            d.format,
            d.name,
            d.options,
            ctx.cfg.store.storage_options,
            push=push,
            registry=ctx.registry,
            logger=logger,
            settings=IngestSettings(**d.ingest.model_dump(), progress=_ingest_progress(ctx.events)),
        )
    if refresh:
        from pretextflow.core.data.ingest import ensure_consistent

        ensure_consistent(ctx.ws, logger)
        before = data_version(ctx.ws) if ctx.ws.data_dvc.exists() else None
        with workspace_lock(ctx.ws, "refresh: dvc pull"):
            recover_interrupted_ingest(ctx.ws, logger)
            dvc(ctx.ws, "pull")
        version = data_version(ctx.ws)
        logger.info("refresh: dvc pull; data version %s", version)
        return summary(ctx.dataset(), version, changed=version != before)
    ds = ctx.dataset() if d is ctx.cfg.data else ctx.load(d)
    return summary(ds, data_version(ctx.ws))


def _ingest_progress(events: EventBus):
    """IngestSettings.progress: one bar per part of the ingest (images decoded, shards written)."""
    if not events.sinks:
        return None
    parts = {
        "decode": progress_callback(events, "ingest", "images", "decode"),
        "shards": progress_callback(events, "ingest", "shards", "shards"),
    }

    def report(part: str, done: int, total: int) -> None:
        callback = parts.get(part)
        if callback is not None:
            callback(done, total)

    return report


@_timed_stage
def run_pretrain(ctx: StageContext, logger=log, on_epoch_end=None, on_step=None) -> dict[str, Any]:
    from pretextflow.core.training.loop import pretrain

    ds = ctx.dataset()
    key = ctx.pretrain_key(ds)
    store_preflight(ctx, "pretrain", key, logger)
    outcome = pretrain(
        ctx.cfg,
        ds,
        ctx.store,
        key,
        ctx.registry,
        logger=logger,
        on_epoch_end=on_epoch_end,
        on_step=on_step,
        events=ctx.events,
    )
    return outcome.__dict__


@_timed_stage
def run_freeze(ctx: StageContext, logger=log) -> dict[str, Any]:
    from pretextflow.core.training.freeze import freeze

    ds = ctx.dataset()
    pk = ctx.pretrain_key(ds)
    fk = ctx.freeze_key(pk)
    store_preflight(ctx, "freeze", fk, logger)
    cached = ctx.store.is_complete("freeze", fk)
    uri = freeze(ctx.cfg, ds.meta, ctx.store, pk, fk, logger=logger)
    return {"key": fk, "uri": uri, "cached": cached}


@_timed_stage
def run_probe(ctx: StageContext, logger=log) -> dict[str, Any]:
    from pretextflow.core.evaluation.probe import probe

    ds = ctx.dataset()
    keys = ctx.keys(ds)
    store_preflight(ctx, "probe", keys["probe"], logger)
    cached = ctx.store.is_complete("probe", keys["probe"])
    metrics = probe(
        ctx.cfg,
        ctx.probe_dataset(ds),
        ctx.store,
        keys["freeze"],
        keys["probe"],
        ctx.registry,
        logger=logger,
        events=ctx.events,
    )
    from pretextflow.core.evaluation.metrics import flat_accuracies

    ctx.events.emit("metrics", "probe", None, **flat_accuracies(metrics))  # the final accuracies, cached or not
    return {"key": keys["probe"], "uri": ctx.store.uri_of("probe", keys["probe"]), "cached": cached, "metrics": metrics}


@_timed_stage
def run_report(ctx: StageContext, stage_times: dict[str, dict[str, Any]] | None = None, logger=log) -> dict[str, Any]:
    """Write the run folder (manifest.json, report.md, report.html, figures, and the files DVC reads:
    ``core.runs.experiments``) from stored artifacts; tell ``ctx.events`` about the files."""
    from pretextflow.core.errors import StageInputError
    from pretextflow.core.runs.history import RegressionError
    from pretextflow.core.runs.manifest import new_run_id
    from pretextflow.core.runs.report import write_report

    ds = ctx.dataset()
    keys = ctx.keys(ds)
    store_preflight(ctx, "report")
    for stage in ("pretrain", "freeze", "probe"):
        if not ctx.store.is_complete(stage, keys[stage]):
            raise StageInputError(
                f"report needs {stage}/{keys[stage]} in {ctx.store.uri}, which does not exist. "
                f"Run `pretextflow {stage} CONFIG` first (or `pretextflow run CONFIG`)."
            )
    metrics = ctx.store.read_json("probe", keys["probe"], "metrics.json")
    history = ctx.store.read_json("pretrain", keys["pretrain"], "history.json")
    run_id = new_run_id(ctx.cfg.name, keys["probe"])
    manifest = _report_manifest(ctx, ds, keys, run_id, metrics, history, stage_times or {})
    final = _write_experiment_files(ctx, run_id, manifest, history, logger)
    run_uri = write_report(ctx.store, run_id, manifest, history, metrics, dataset=ctx.probe_dataset(ds))
    logger.info("report: %s", run_uri)
    _emit_artifacts(ctx, run_id, keys["freeze"])
    if manifest["regression"]:
        raise RegressionError(manifest["regression"] + f" Report: {run_uri}")
    return {"run_id": run_id, "run_uri": run_uri, "manifest": manifest, "final_metrics": final}


def _report_manifest(
    ctx: StageContext,
    ds: Dataset,
    keys: dict[str, str],
    run_id: str,
    metrics: dict[str, Any],
    history: dict[str, Any],
    stage_times: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The run's manifest, with the comparison to the previous run of the config's name and the
    regression verdict."""
    from pretextflow.core.data.versioning import data_version, default_remote_url, read_data_dvc
    from pretextflow.core.runs.history import check_regression, compare_metrics, previous_run
    from pretextflow.core.runs.manifest import build_manifest, dataset_record

    previous = previous_run(ctx.store, ctx.cfg.name)
    manifest = build_manifest(
        run_id=run_id,
        cfg=ctx.cfg,
        registry=ctx.registry,
        dataset=ds,
        data_version=data_version(ctx.ws),
        data_dvc=read_data_dvc(ctx.ws),
        keys=keys,
        store=ctx.store,
        metrics=metrics,
        history=history,
        stage_times=stage_times,
        dvc_remote=default_remote_url(ctx.ws),
    )
    if previous is not None:
        manifest["previous_run"] = {
            "run_id": previous["run_id"],
            "created_at": previous["created_at"],
            "data_version": previous["data_version"],
            "same_keys": previous["artifacts"].get("probe", {}).get("key") == keys["probe"],
            "comparison": compare_metrics(previous["metrics"], metrics),
        }
    if ctx.cfg.probe.data is not None:  # a transfer probe: both datasets recorded
        manifest["probe_dataset"] = dataset_record(ctx.probe_dataset(ds))
    manifest["regression"] = check_regression(manifest, previous, ctx.cfg.report.regression_threshold)
    return manifest


def _write_experiment_files(ctx: StageContext, run_id: str, manifest: dict, history: dict, logger) -> dict:
    """The params, metrics and plots DVC reads: in the run folder (before its manifest, which marks
    it complete) and, in a DVC workspace, in its ``metrics/`` folder declared by its ``dvc.yaml``.
    Returns the final metrics (flat: ``core.runs.experiments.final_metrics``)."""
    from pretextflow.core.runs.experiments import dvc_files, final_metrics, write_run_files, write_workspace_files

    files = dvc_files(manifest, history)
    write_run_files(ctx.store, run_id, files)
    try:
        folder = write_workspace_files(ctx.ws.root, files)
    except OSError as exc:  # a read-only workspace: the run folder has them; the run goes on
        logger.warning("report: could not write the DVC metrics into %s (%s)", ctx.ws.root, exc)
    else:
        if folder is not None:
            logger.info("report: params, metrics and plots for DVC in %s (dvc metrics diff compares runs)", folder)
    return final_metrics(manifest, history)


def _emit_artifacts(ctx: StageContext, run_id: str, freeze_key: str) -> None:
    """An ``artifact`` event per file of the run folder (report, figures, manifest) and for the frozen
    backbone's weights. A logger uploads local files, so from a remote store (s3://, memory://) the
    files are first copied into the workspace's machine-local cache, ``.pretextflow-cache/artifacts/<run_id>/``."""
    from pretextflow.core.runs.history import RUNS

    if not ctx.events.sinks:
        return
    files = [((RUNS, run_id, name), name) for name in ctx.store.listdir(RUNS, run_id)]
    files.append((("freeze", freeze_key, "backbone.safetensors"), "backbone.safetensors"))
    for parts, name in files:
        path = _local_file(ctx, parts, run_id, name)
        if path is not None:
            ctx.events.emit("artifact", "report", path=path, name=name)


def _local_file(ctx: StageContext, parts: tuple[str, ...], run_id: str, name: str) -> str | None:
    """A local path to the store's file ``parts`` (None when it is not a file): the file itself on a
    local store, else a copy in the workspace's cache."""
    from fsspec.implementations.local import LocalFileSystem

    from pretextflow.core.data.incremental import CACHE_DIR

    source = ctx.store.path(*parts)
    if isinstance(ctx.store.fs, LocalFileSystem):
        return source if os.path.isfile(source) else None
    if not ctx.store.fs.isfile(source):
        return None
    target = ctx.ws.root / CACHE_DIR / "artifacts" / run_id / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(ctx.store.read_bytes(*parts))
    return str(target)
