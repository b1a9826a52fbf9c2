"""Past runs: list them, load a manifest, compare two runs' metrics, and rerun one exactly.

A rerun needs only the manifest: it holds the data version (the content of ``data.dvc``), the DVC
remote that has the data, the validated config with every default filled in, and the seed. The
data is restored into a fresh workspace with ``dvc pull`` (no git checkout of the original
workspace is needed), the pipeline runs with the recorded config, and every metric is compared."""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec

from pretextflow.core.errors import PretextflowError, StageInputError
from pretextflow.core.evaluation.metrics import (
    EFFICIENCY_COLUMNS,
    HEADLINE,
    KNN_TOP1,
    LINEAR_TOP1,
    SSL_LINEAR,
    SUPERVISED,
)
from pretextflow.core.store import ArtifactStore

log = logging.getLogger("pretextflow.runs")


RUNS = "runs"


METRIC_KEYS = tuple(column.key for column in EFFICIENCY_COLUMNS)


class RegressionError(PretextflowError):
    """The probe accuracy dropped by more than the configured threshold against the previous run."""


# -- reading runs ------------------------------------------------------------------------------
def load_manifest(ref: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``ref``: a run folder (``artifacts/runs/<id>``) or its ``manifest.json``, any fsspec URI."""
    from pretextflow.core.security.credentials import resolve

    try:
        ref = resolve(ref)  # memory://${env:USERINFO}@bucket/runs/<id>, as a manifest records it
    except ValueError as exc:
        raise StageInputError(f"{ref}: {exc}") from None
    uri = ref if ref.endswith(".json") else ref.rstrip("/") + "/manifest.json"
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not fs.exists(path):
        raise StageInputError(
            f"no manifest at {uri}. Pass a run folder (artifacts/runs/<run id>) or its "
            f"manifest.json; `pretextflow runs` lists the runs of a store."
        )
    try:
        manifest = json.loads(fs.cat_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageInputError(
            f"{uri} is not valid JSON ({exc}); it is not a pretextflow manifest. Pass the "
            f"manifest.json of a run (`pretextflow runs` lists them)."
        ) from None
    return check_manifest(manifest, uri)


# The manifest schema this version writes (core.manifest) and reads; defined here so that reading
# runs does not import torch.
MANIFEST_SCHEMA = 1


_REQUIRED = ("run_id", "config", "metrics", "data_version", "data_dvc", "dataset", "artifacts")


def check_manifest(manifest: Any, uri: str) -> dict[str, Any]:
    """Refuse what this version cannot rerun: another program's JSON, or a newer schema."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("schema_version"), int):
        raise StageInputError(
            f"{uri} is not a pretextflow manifest (no schema_version). Pass the manifest.json "
            f"of a run (`pretextflow runs` lists them)."
        )
    if manifest["schema_version"] > MANIFEST_SCHEMA:
        raise StageInputError(
            f"{uri} was written by a newer pretextflow (manifest schema "
            f"{manifest['schema_version']}; this version reads up to {MANIFEST_SCHEMA}). "
            f"Upgrade pretextflow (pip install -U pretextflow) to rerun it."
        )
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise StageInputError(
            f"{uri} is incomplete: it lacks {', '.join(missing)}. Pass the manifest.json of a "
            f"complete run (`pretextflow runs` lists them)."
        )
    return manifest


def list_runs(store: ArtifactStore) -> list[dict[str, Any]]:
    """Every complete run in the store (a run is complete once its manifest.json exists), oldest first."""
    out = []
    for run_id in store.listdir(RUNS):
        if not store.exists(RUNS, run_id, "manifest.json"):
            continue
        try:
            m = check_manifest(store.read_json(RUNS, run_id, "manifest.json"), store.uri_of(RUNS, run_id))
        except (StageInputError, ValueError) as exc:  # a newer or foreign manifest: list the others
            log.warning("skipping run %s: %s", run_id, exc)
            continue
        eff = [r for r in m["metrics"].get("label_efficiency", []) if r["fraction"] < 1]
        out.append(
            {
                "run_id": m["run_id"],
                "created_at": m["created_at"],
                "name": m["name"],
                "data_version": m["data_version"],
                "pretext": m["config"]["pretext"]["name"],
                "backbone": m["config"]["backbone"]["name"],
                LINEAR_TOP1: m["metrics"][LINEAR_TOP1],
                KNN_TOP1: m["metrics"][KNN_TOP1],
                "low_label": (
                    {
                        "fraction": eff[0]["fraction"],
                        SSL_LINEAR.key: eff[0][SSL_LINEAR.key],
                        SUPERVISED.key: eff[0].get(SUPERVISED.key),
                    }
                    if eff
                    else None
                ),
                "uri": store.uri_of(RUNS, run_id),
            }
        )
    return sorted(out, key=lambda r: (r["created_at"], r["run_id"]))


def previous_run(store: ArtifactStore, name: str, before_run_id: str | None = None) -> dict[str, Any] | None:
    """The latest earlier run of the same config name in this store, as its manifest."""
    runs = [r for r in list_runs(store) if r["name"] == name and r["run_id"] != before_run_id]
    return store.read_json(RUNS, runs[-1]["run_id"], "manifest.json") if runs else None


# -- comparing ---------------------------------------------------------------------------------
def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Every accuracy of a run under a stable name: ``linear_top1``, ``baselines.pixels.knn_top1``,
    ``label_efficiency.1%.supervised_top1`` ..."""
    flat = {k: metrics[k] for k in HEADLINE if metrics.get(k) is not None}
    for name, b in sorted(metrics.get("baselines", {}).items()):
        for k, v in sorted(b.items()):
            flat[f"baselines.{name}.{k}"] = v
    for row in metrics.get("label_efficiency", []):
        for k in METRIC_KEYS:
            if row.get(k) is not None:
                flat[f"label_efficiency.{row['fraction'] * 100:g}%.{k}"] = row[k]
    return flat


def compare_metrics(before: dict[str, Any], after: dict[str, Any], tolerance: float = 0.0) -> list[dict[str, Any]]:
    a, b = flatten_metrics(before), flatten_metrics(after)
    rows = []
    for name in list(a) + [n for n in b if n not in a]:
        x, y = a.get(name), b.get(name)
        diff = None if x is None or y is None else y - x
        rows.append(
            {"metric": name, "before": x, "after": y, "diff": diff, "ok": diff is not None and abs(diff) <= tolerance}
        )
    return rows


def environment_differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Package, code and device differences between two manifests (warnings, not failures)."""
    out = []
    for pkg in sorted(set(before.get("packages", {})) | set(after.get("packages", {}))):
        x, y = before.get("packages", {}).get(pkg), after.get("packages", {}).get(pkg)
        if x != y:
            out.append(f"package {pkg}: {x} -> {y}")
    cb, ca = before.get("code_version", {}), after.get("code_version", {})
    if (cb.get("pretextflow"), cb.get("commit")) != (ca.get("pretextflow"), ca.get("commit")):
        out.append(
            f"code: pretextflow {cb.get('pretextflow')} @ {cb.get('commit')} -> "
            f"{ca.get('pretextflow')} @ {ca.get('commit')}"
        )
    if before.get("device") != after.get("device"):
        out.append(f"device: {before.get('device')} -> {after.get('device')}")
    return out


def check_regression(manifest: dict[str, Any], previous: dict[str, Any] | None, threshold: float | None) -> str | None:
    """A message when linear top-1 dropped by more than ``threshold`` (a fraction, 0.01 = 1 point)."""
    if previous is None or threshold is None:
        return None
    drop = previous["metrics"]["linear_top1"] - manifest["metrics"]["linear_top1"]
    if drop > threshold:
        return (
            f"linear-probe top-1 fell from {previous['metrics']['linear_top1']:.4f} (run {previous['run_id']}, "
            f"data {previous['data_version']}) to {manifest['metrics']['linear_top1']:.4f} (data "
            f"{manifest['data_version']}): a drop of {drop * 100:.2f} points, more than the allowed "
            f"report.regression_threshold={threshold * 100:g} points. The report is written; inspect it, then "
            f"fix the data or raise the threshold."
        )
    return None
