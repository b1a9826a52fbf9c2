"""Checkpoints as safetensors: tensors in the file, everything else as JSON in its metadata.
Nothing is pickled, so loading a checkpoint can never execute code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

if TYPE_CHECKING:
    from pretextflow.core.toolkit.augment import Augmenter

META_KEY = "pretextflow"


def encode(groups: dict[str, dict[str, torch.Tensor]], info: dict[str, Any]) -> bytes:
    """``groups`` maps a prefix (``model``, ``rng``...) to tensors; ``info`` is JSON metadata."""
    flat = {f"{g}/{k}": v.detach().to("cpu").contiguous().clone() for g, ts in groups.items() for k, v in ts.items()}
    return st_save(flat, metadata={META_KEY: json.dumps(info, sort_keys=True)})


def decode(data: bytes) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    try:
        flat = st_load(data)
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in flat.items():
            g, k = name.split("/", 1)
            groups.setdefault(g, {})[k] = tensor
        info = json.loads(_metadata(data).get(META_KEY, "{}"))
    except Exception as exc:  # safetensors' own error type, a bad header, a name without a group...
        from pretextflow.core.errors import StageInputError

        raise StageInputError(
            f"a checkpoint in the artifact store is corrupt ({exc.__class__.__name__}: {exc}). "
            f"Delete its folder (pretrain/<key> or freeze/<key>) to recompute it."
        ) from None
    return groups, info


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then a JSON header with __metadata__
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {}) or {}


def optimizer_to_groups(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_groups(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(info["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


@dataclass
class TrainingState:
    """The live objects a pretraining checkpoint holds: the task's weights and buffers, the optimizer,
    the AMP scaler and the three generators (torch's, the data order's, the augmenter's)."""

    task: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data_gen: torch.Generator
    aug: Augmenter
    device: torch.device

    def to_bytes(self, data_state: torch.Tensor, progress: dict[str, Any]) -> bytes:
        """Encode the state with ``progress`` (the loop's JSON part); ``data_state`` is the data
        generator's state to save (the one from before the current epoch's permutation)."""
        opt_tensors, opt_info = optimizer_to_groups(self.opt)
        rng = {
            "torch": torch.get_rng_state(),
            "data": data_state,
            **{f"aug.{k}": v for k, v in self.aug.state_dict().items()},
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        info = {**progress, "optimizer": opt_info, "scaler": self.scaler.state_dict()}
        return encode({"model": self.task.state_dict(), "optim": opt_tensors, "rng": rng}, info)

    def restore(self, data: bytes) -> dict[str, Any]:
        """Load a checkpoint written by ``to_bytes`` into the live objects; return its JSON part."""
        groups, info = decode(data)
        self.task.load_state_dict(groups["model"])
        optimizer_from_groups(self.opt, groups.get("optim", {}), info["optimizer"])
        if info.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(info["scaler"])
        torch.set_rng_state(groups["rng"]["torch"])
        self.data_gen.set_state(groups["rng"]["data"])  # from before the epoch's permutation: redrawn identically
        self.aug.load_state_dict({"generator": groups["rng"]["aug.generator"]})
        if self.device.type == "cuda" and "cuda" in groups["rng"]:
            torch.cuda.set_rng_state(groups["rng"]["cuda"], self.device)
        return info
