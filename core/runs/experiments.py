"""A run's params, metrics and plots in the files DVC reads, so two runs compare with DVC's own
commands (``dvc metrics show / diff``, ``dvc params diff``, ``dvc plots show / diff``) and in DVC's
VS Code extension.

Every run writes them into its run folder, ``runs/<run id>/dvc/``:

  params.yaml                  the recorded config (no secrets; the pretext task's resolved params)
  metrics.json                 the final metrics, flat: ``probe/linear_top1``, ``probe/ssl_linear_top1@10%``,
                               ``probe/supervised_top1@1%``, ``pretrain/final_loss``, ``monitor/rankme``...
  plots/loss.csv               step, epoch, loss: the pretraining loss of every step
  plots/label_efficiency.csv   labels_percent, num_labels and one column per method

In a workspace that is a DVC repository the run also writes the same files to the workspace's
``metrics/`` folder (small text files, meant to be committed with git: the latest run's), and makes
sure the workspace's ``dvc.yaml`` declares them as top-level ``metrics``, ``params`` and ``plots``
(no pipeline stage is needed for DVC to read them). So after a run is committed, the next run's
``dvc metrics diff`` (and ``dvc params diff``, ``dvc plots diff``) shows what changed against it,
and ``dvc metrics diff REV_A REV_B`` compares any two committed runs."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from pretextflow.core.evaluation.metrics import EFFICIENCY_COLUMNS, OPTIONAL_COLUMNS, flat_accuracies
from pretextflow.core.runs.history import RUNS
from pretextflow.core.store import ArtifactStore

RUN_DIR = "dvc"  # in the run folder
WORKSPACE_DIR = "metrics"  # in the workspace, next to dvc.yaml
PARAMS, METRICS = "params.yaml", "metrics.json"
LOSS_PLOT, EFFICIENCY_PLOT = "plots/loss.csv", "plots/label_efficiency.csv"
EFFICIENCY_KEYS = tuple(c.key for c in EFFICIENCY_COLUMNS if c not in OPTIONAL_COLUMNS)


def final_metrics(manifest: dict[str, Any], history: dict[str, Any] | None = None) -> dict[str, float]:
    """The run's final numbers, flat: every probe accuracy (``flat_accuracies``), the final
    pretraining loss and the last online-monitor check. Only what the run computes: no seconds, no
    images/s, so two identical runs have identical metrics."""
    out = flat_accuracies(manifest["metrics"])
    loss = (manifest.get("pretrain") or {}).get("final_loss")
    if loss is not None and math.isfinite(loss):
        out["pretrain/final_loss"] = float(loss)
    checks = (history or {}).get("monitor") or []
    if checks:
        for name in ("knn_top1", "rankme"):
            value = checks[-1].get(name)
            if value is not None:
                out[f"monitor/{name}"] = float(value)
    return out


def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue().encode()


def loss_csv(history: dict[str, Any]) -> bytes:
    """step, epoch, loss for every pretraining step."""
    losses = history.get("step_loss") or []
    per_epoch = len(losses) // max(1, len(history.get("epoch_loss") or [])) or 1
    return _csv(["step", "epoch", "loss"], [[i, (i - 1) // per_epoch + 1, v] for i, v in enumerate(losses, 1)])


def efficiency_csv(metrics: dict[str, Any]) -> bytes:
    """One row per label fraction: the percent of the training labels, their number, and the test
    top-1 of every method (empty where a baseline did not run)."""
    keys = list(EFFICIENCY_KEYS) + [
        c.key for c in OPTIONAL_COLUMNS if any(r.get(c.key) is not None for r in metrics.get("label_efficiency", []))
    ]
    rows = [
        [f"{r['fraction'] * 100:g}", r["num_labels"], *(r.get(k) for k in keys)]
        for r in metrics.get("label_efficiency", [])
    ]
    return _csv(["labels_percent", "num_labels", *keys], rows)


def dvc_files(manifest: dict[str, Any], history: dict[str, Any]) -> dict[str, bytes]:
    """The four files, by their path under ``dvc/`` (or the workspace's ``metrics/``)."""
    return {
        PARAMS: yaml.safe_dump(manifest["config"], sort_keys=True).encode(),
        METRICS: (json.dumps(final_metrics(manifest, history), indent=2, sort_keys=True) + "\n").encode(),
        LOSS_PLOT: loss_csv(history),
        EFFICIENCY_PLOT: efficiency_csv(manifest["metrics"]),
    }


def write_run_files(store: ArtifactStore, run_id: str, files: dict[str, bytes]) -> list[str]:
    """Into the run folder (``runs/<id>/dvc/...``); returns their URIs."""
    return [store.write_bytes(data, RUNS, run_id, RUN_DIR, *name.split("/")) for name, data in files.items()]


def dvc_yaml_sections(folder: str = WORKSPACE_DIR) -> dict[str, list]:
    """What ``dvc.yaml`` declares for the workspace's files (top level, no stage)."""
    return {
        "metrics": [f"{folder}/{METRICS}"],
        "params": [f"{folder}/{PARAMS}"],
        "plots": [
            {f"{folder}/{LOSS_PLOT}": {"x": "step", "y": "loss", "title": "pretraining loss"}},
            {
                f"{folder}/{EFFICIENCY_PLOT}": {
                    "x": "labels_percent",
                    "y": list(EFFICIENCY_KEYS),
                    "title": "label efficiency: test top-1",
                    "x_label": "% of the training labels",
                    "y_label": "test top-1",
                }
            },
        ],
    }


def _declared(entry: Any) -> str:
    return entry if isinstance(entry, str) else next(iter(entry), "") if isinstance(entry, dict) else ""


def ensure_dvc_yaml(root: Path, folder: str = WORKSPACE_DIR) -> bool:
    """Add the workspace files to ``root/dvc.yaml``'s top-level sections where they are missing
    (stages and other entries are kept); True if it was written."""
    path = root / "dvc.yaml"
    doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    changed = False
    for section, entries in dvc_yaml_sections(folder).items():
        have = doc.setdefault(section, [])
        names = {_declared(e) for e in have}
        for entry in entries:
            if _declared(entry) not in names:
                have.append(entry)
                changed = True
    if changed:
        _atomic_write(path, yaml.safe_dump(doc, sort_keys=False).encode())
    return changed


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_workspace_files(root: Path, files: dict[str, bytes]) -> Path | None:
    """Into ``root/metrics/`` and declared in ``root/dvc.yaml``, when ``root`` is a DVC repository
    (else nothing: returns None)."""
    if not (root / ".dvc").is_dir():
        return None
    folder = root / WORKSPACE_DIR
    for name, data in files.items():
        _atomic_write(folder / name, data)
    ensure_dvc_yaml(root)
    return folder
