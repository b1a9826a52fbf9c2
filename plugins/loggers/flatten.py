"""The resolved config as flat ``dot.key -> str`` pairs: MLflow's params, TensorBoard's hparams text."""

from __future__ import annotations

import json
from typing import Any

from pretextflow.api import redact


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``. Lists are written as JSON, an empty
    mapping as ``{}``; every value goes through ``redact`` (a credential never becomes a param)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = redact(_text(value))
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def markdown_table(pairs: dict[str, str]) -> str:
    """``| key | value |`` rows (TensorBoard renders text summaries as Markdown)."""
    rows = ["| " + k + " | " + v.replace("|", "\\|") + " |" for k, v in sorted(pairs.items())]
    return "\n".join(["| key | value |", "|---|---|", *rows])
