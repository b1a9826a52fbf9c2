"""Reruns: restore a manifest's exact data version, rebuild its config, and compare the new run's
metrics with the recorded ones. The pipeline itself is run by the caller (``flows.rerun``): core
knows no orchestrator."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pretextflow.core.config import RunConfig, load_config
from pretextflow.core.errors import StageInputError, VersioningError
from pretextflow.core.runs.history import compare_metrics, environment_differences, load_manifest
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.model import select_device
from pretextflow.core.workspace import Workspace


# -- DVC remote, recorded in the manifest ------------------------------------------------------
def redact_url(url: str) -> str:
    from pretextflow.core.security.redaction import redact

    return redact(url)


def restore_data(ws: Workspace, manifest: dict[str, Any], remote: str | None = None) -> str:
    """Make ``ws`` hold exactly the manifest's data version: write its data.dvc, ``dvc pull``."""
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.data.versioning import data_version, dvc, init_workspace, workspace_lock

    remote = remote or manifest.get("dvc_remote")
    if not remote:
        raise StageInputError(
            "the manifest records no DVC remote, so its data cannot be restored. "
            "Pass --remote URL (the DVC remote holding that data version)."
        )
    if ws.data_dvc.exists():
        current = yaml.safe_load(ws.data_dvc.read_text())
        if current.get("outs", [{}])[0].get("md5") != manifest["data_version"]:
            raise StageInputError(
                f"{ws.root} already holds another data version; rerun into an empty folder "
                f"(the default) so nothing of that workspace is overwritten."
            )
    init_workspace(ws.root, remote)
    with workspace_lock(ws, f"rerun {manifest['run_id']}: dvc pull"):
        ws.data_dvc.write_text(yaml.safe_dump(manifest["data_dvc"], sort_keys=False))
        dvc(ws, "pull")
    version = data_version(ws)
    ds = load_dataset(str(ws.data_dir), manifest["dataset"]["name"])
    if version != manifest["data_version"] or ds.fingerprint != manifest["dataset"]["fingerprint"]:
        raise VersioningError(
            f"restored data version {version} (fingerprint {ds.fingerprint}) does not match the "
            f"manifest's {manifest['data_version']} ({manifest['dataset']['fingerprint']})."
        )
    return version


def store_root(manifest: dict[str, Any], ref: str | None = None) -> str:
    """The artifact store a run used, from the absolute URI of its pretrain artifact. A store whose
    credentials were written literally is recorded as ``scheme://***@...``: then the store is the one
    ``ref`` (the run folder the caller named, credentials included) lies in."""
    uri = manifest["artifacts"]["pretrain"]["uri"]
    root = uri[: uri.rindex("/pretrain/")]
    if "***@" not in root:
        return root
    run_folder = (ref or "").removesuffix("/manifest.json").rstrip("/")
    derived = run_folder.rpartition("/runs/")[0]
    if derived and redact_url(derived) == root:
        return derived
    raise StageInputError(
        f"the run's artifact store {root} needs credentials, which the manifest does not record. "
        f"Name the run by its full URI with credentials (.../runs/<run id>), or rerun with "
        f"--no-cache. Writing them as a reference in the config (store.uri: "
        f"s3://${{env:NAME}}@bucket/...) lets the manifest keep the reference."
    )


@dataclass
class RerunPlan:
    """What a rerun runs: the recorded manifest, the fresh workspace holding its data version, the
    recorded config (store and credentials adjusted) and the tolerance its metrics are held to."""

    before: dict[str, Any]
    root: Path
    cfg: RunConfig
    tolerance: float
    no_cache: bool


def prepare_rerun(
    ref: str,
    workspace: str | None = None,
    no_cache: bool = False,
    tolerance: float | None = None,
    remote: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> RerunPlan:
    """Restore a past run's data version into a fresh workspace and rebuild its config."""
    before = load_manifest(ref, storage_options)
    root = Path(workspace or tempfile.mkdtemp(prefix="pretextflow-rerun-")).resolve()
    ws = Workspace.at(root)
    restore_data(ws, before, remote)
    raw = json.loads(json.dumps(before["config"]))
    raw["data"]["source"] = None  # the data comes from DVC, exactly as recorded
    options = raw["store"].get("storage_options") or {}
    if '"***"' in json.dumps(options):  # literal secrets are never recorded: take them from the caller
        raw["store"]["storage_options"] = storage_options or {}
    raw["store"]["uri"] = str(root / "artifacts-rerun") if no_cache else store_root(before, ref)
    cfg = load_config(raw=raw)
    device = select_device(cfg.train.device)
    if tolerance is None:  # CPU runs are bit-identical; GPU kernels are not (cuDNN autotuning, atomics)
        tolerance = 0.0 if device.type == "cpu" and before.get("device") == "cpu" else 0.005
    return RerunPlan(before, root, cfg, tolerance, no_cache)


def compare_rerun(plan: RerunPlan, run_uri: str) -> dict[str, Any]:
    """The new run's metrics beside the recorded ones; ``identical`` is the verdict."""
    before = plan.before
    after = ArtifactStore(run_uri, plan.cfg.store.storage_options).read_json("manifest.json")
    rows = compare_metrics(before["metrics"], after["metrics"], plan.tolerance)
    return {
        "before": before["run_id"],
        "after": after["run_id"],
        "run_uri": run_uri,
        "workspace": str(plan.root),
        "tolerance": plan.tolerance,
        "identical": all(r["ok"] for r in rows),
        "rows": rows,
        "warnings": environment_differences(before, after),
        "no_cache": plan.no_cache,
        "stages": after.get("stages", {}),
    }
