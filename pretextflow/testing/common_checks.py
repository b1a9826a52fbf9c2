"""Checks that more than one kind of plugin runs: registered, params (options), and the state dict
through the safetensors checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from pretextflow.core.registry.registry import Registry
from pretextflow.core.training import checkpoint as ckpt
from pretextflow.testing.fixtures import _skipped_note, _table
from pretextflow.testing.results import _Fail

_UNKNOWN_KEY = "pretextflow_kit_unknown_key"


def _registered_check(registry: Registry, kind: str, obj: Any) -> Callable[[], str]:
    def check() -> str:
        name = obj.name
        row = next((i for i in registry.info if i.kind == kind and i.name == name), None)
        held = _table(registry, kind).get(name)
        listed = any(r["name"] == name and r["kind"] == kind for r in registry.as_rows())
        if held is obj and row is not None and listed:
            family = f", {row.family}" if row.family else ""
            return f"listed as {name!r} ({kind}{family}) from {row.package} {row.version}"
        if held is not None and row is not None:
            raise _Fail(
                f"the name {name!r} is provided by {row.package} ({row.plugin}), not by this plugin: "
                f"choose another name.{_skipped_note(registry, name)}"
            )
        raise _Fail(
            f"no installed plugin provides {kind} {name!r}: declare the entry point "
            f'([project.entry-points.pretextflow] {name} = "your_package.module"), install the package '
            f"(pip install -e .) and return it from the @hookimpl hook.{_skipped_note(registry, name)}"
        )

    return check


def _params_check(model: Any, values: dict, what: str) -> Callable[[], str]:
    def check() -> str:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise _Fail(f"{what} must be a pydantic model (subclass pretextflow.api.Params), got {model!r}")
        try:
            p = model.model_validate(values)
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise _Fail(
                f"{what}({values or ''}) does not validate ({fields}): give every field a default "
                f"(the published recipe)"
                if not values
                else f"{what} rejects {values}: {fields}"
            ) from None
        try:
            model.model_validate({**values, _UNKNOWN_KEY: 1})
        except ValidationError:
            pass
        else:
            raise _Fail(
                f"{what} accepts an unknown key ({_UNKNOWN_KEY}): a typo in a config would be silently "
                f"ignored. Subclass pretextflow.api.Params (extra='forbid')."
            )
        dumped = p.model_dump(mode="json")
        try:
            again = model.model_validate(json.loads(json.dumps(dumped)))
        except (TypeError, ValueError) as exc:
            raise _Fail(
                f"{what} does not round-trip through JSON (the manifest and stage keys record it): {exc}"
            ) from exc
        if again != p:
            raise _Fail(f"{what} does not round-trip through JSON: {dumped} reads back as {again!r}")
        return f"{len(model.model_fields)} field(s): defaults valid, unknown keys rejected, JSON round-trip"

    return check


def _through_checkpoint(module: nn.Module, prefix_required: str | None) -> dict[str, torch.Tensor]:
    sd = module.state_dict()
    odd = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise _Fail(f"state dict entries must be tensors (checkpoints are safetensors, nothing is pickled): {odd[:5]}")
    if prefix_required and not any(k.startswith(prefix_required) for k in sd):
        raise _Fail(
            f"the state dict holds no `{prefix_required}*` weights: keep the backbone you were given as "
            f"`self.backbone` (freeze exports exactly those weights)"
        )
    groups, _ = ckpt.decode(ckpt.encode({"model": sd}, {}))
    return groups.get("model", {})


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.detach().cpu(), b.detach().cpu()))
