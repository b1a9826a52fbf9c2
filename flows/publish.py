"""Prefect artifacts for a finished run: the report as Markdown, the probe metrics and the
label-efficiency results as tables."""

from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pretextflow.core.evaluation.metrics import EFFICIENCY_COLUMNS, KNN_TOP1, LINEAR_TOP1
from pretextflow.core.runs.report import headline
from pretextflow.core.security.redaction import redact


def artifact_key(prefix: str, name: str) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes only
    return re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{name}".lower()).strip("-")


def publish_artifacts(manifest: dict[str, Any], run_uri: str) -> None:
    m = manifest["metrics"]
    rows = [{"features": "SSL (frozen)", LINEAR_TOP1: round(m[LINEAR_TOP1], 4), KNN_TOP1: round(m[KNN_TOP1], 4)}]
    for name, b in m.get("baselines", {}).items():
        rows.append({"features": name, LINEAR_TOP1: round(b[LINEAR_TOP1], 4), KNN_TOP1: round(b[KNN_TOP1], 4)})
    md = "\n".join(
        [
            f"# {manifest['name']}",
            "",
            headline(manifest),
            "",
            "| features | linear top-1 | kNN top-1 |",
            "|---|---|---|",
            *[f"| {r['features']} | {r[LINEAR_TOP1]:.4f} | {r[KNN_TOP1]:.4f} |" for r in rows],
            "",
            f"- data version: `{manifest['data_version']}`",
            f"- run folder: `{redact(run_uri)}` (report.html, report.md, manifest.json)",
            f"- code: pretextflow {manifest['code_version']['pretextflow']} @ {manifest['code_version'].get('commit')}",
        ]
    )
    create_markdown_artifact(
        markdown=md,
        key=artifact_key("report", manifest["name"]),
        description=f"pretextflow report {manifest['run_id']}",
    )
    create_table_artifact(
        table=rows,
        key=artifact_key("metrics", manifest["name"]),
        description=f"probe accuracies of {manifest['run_id']}",
    )
    efficiency = [
        {
            "fraction": r["fraction"],
            "labels": r["num_labels"],
            "seeds": r["seeds"],
            **{c.key: None if r.get(c.key) is None else round(r[c.key], 4) for c in EFFICIENCY_COLUMNS},
        }
        for r in m.get("label_efficiency", [])
    ]
    if efficiency:
        create_table_artifact(
            table=efficiency,
            key=artifact_key("label-efficiency", manifest["name"]),
            description=f"test top-1 by labelled fraction, {manifest['run_id']}",
        )
