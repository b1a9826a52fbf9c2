"""``pretextflow export``: a run's frozen backbone as a folder another tool reads — timm's Hugging
Face layout, TorchScript, ONNX, or safetensors + spec — each checked against the PyTorch backbone on
the same batch before it is written, with a model card and the marker ``load_backbone`` reads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import fsspec
import torch
from torch import nn

from pretextflow.core.errors import StageInputError
from pretextflow.core.export.card import model_card
from pretextflow.core.export.loading import MARKER, backbone_of_run, describe, load_export
from pretextflow.core.registry.registry import Registry
from pretextflow.core.security.credentials import resolve, resolve_options
from pretextflow.core.security.redaction import redact

ATOL = 1e-4
"""How far an export's features may be from the PyTorch backbone's on the same batch."""


def export_backbone(
    where: str,
    fmt: str,
    out: str,
    storage_options: dict[str, Any] | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Write the backbone of run ``where`` to the folder ``out`` (any fsspec URI) as ``fmt``. Refuses a
    non-empty ``out`` (nothing is overwritten). Returns the marker: format, files, info, max error."""
    if fmt not in WRITERS:
        raise StageInputError(f"unknown export format {fmt!r}: use one of {', '.join(WRITERS)}")
    options = resolve_options(storage_options or {})
    ofs, opath = fsspec.core.url_to_fs(resolve(out), **options)
    if ofs.exists(opath) and (not ofs.isdir(opath) or ofs.ls(opath)):
        raise StageInputError(f"{redact(out)} exists and is not empty: choose another --out, or remove it first")
    backbone, spec, data, manifest = backbone_of_run(where, options, registry)
    info = describe(spec, manifest, backbone.num_features)
    with tempfile.TemporaryDirectory(prefix="pretextflow-export-") as tmp:
        files = WRITERS[fmt](backbone, spec, data, tmp)
        marker = {"format": fmt, "files": sorted(files), "info": info}
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(marker, f, indent=2, sort_keys=True)
        marker["max_abs_error"] = _verify(backbone, tmp, info, registry)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(model_card(marker, manifest))
        ofs.makedirs(opath, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            ofs.put_file(os.path.join(tmp, name), posixpath.join(opath, name))
    return marker


def sample_batch(info: dict, n: int = 3, seed: int = 0) -> torch.Tensor:
    c, h, w = info["image_shape"]
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


def _verify(backbone: nn.Module, folder: str, info: dict, registry: Registry | None) -> float:
    """Load the export as a user would and compare its features with the backbone's (batch sizes 3 and
    1: the batch dimension is dynamic)."""
    loaded = load_export(fsspec.filesystem("file"), folder, registry, trust_torchscript=True)  # written just now
    worst = 0.0
    for n in (3, 1):
        x = sample_batch(info, n)
        with torch.no_grad():
            want, got = backbone(x), loaded(x)
        if got.shape != want.shape:
            raise StageInputError(
                f"the export gives features of shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}; nothing "
                f"was written. Export as safetensors, or report this with the backbone's name."
            )
        worst = max(worst, float((got - want).abs().max()))
    if worst > ATOL:
        raise StageInputError(
            f"the exported backbone's features differ from PyTorch's by {worst:.2e} (> {ATOL:g}) on the same "
            f"batch; nothing was written. Export as safetensors, or report this with the backbone's name."
        )
    return worst


# -- the formats ------------------------------------------------------------------------------
def _write_safetensors(backbone: nn.Module, spec: dict, data: bytes, tmp: str) -> list[str]:
    with open(os.path.join(tmp, "backbone.safetensors"), "wb") as f:
        f.write(data)
    with open(os.path.join(tmp, "spec.json"), "w") as f:
        json.dump(spec, f, indent=2, sort_keys=True)
    return ["backbone.safetensors", "spec.json"]


def _write_timm(backbone: nn.Module, spec: dict, data: bytes, tmp: str) -> list[str]:
    from timm.models import save_for_hf

    name = spec["backbone"]["name"]
    if not name.startswith("timm/"):
        raise StageInputError(
            f"backbone {name!r} is pretextflow's own network: stock timm cannot build it. Export it as "
            f"--format safetensors (load_backbone), torchscript or onnx, or pretrain a timm/<model> backbone."
        )
    if _has_small_image_stem(backbone.net):
        raise StageInputError(
            f"backbone {name!r} was trained with backbone.small_image_stem: true (a 3x3 stride-1 first conv "
            f"and no max-pool), which timm's model arguments cannot express, so timm.create_model would build a "
            f"different network. Export as --format safetensors, torchscript or onnx, or pretrain with "
            f"backbone.small_image_stem=false."
        )
    c, h, w = spec["image_shape"]
    save_for_hf(
        backbone.net,
        tmp,
        safe_serialization=True,
        data_config={"mean": tuple(spec["mean"]), "std": tuple(spec["std"]), "input_size": (c, h, w)},
    )
    return ["config.json", "model.safetensors"]


def _has_small_image_stem(net: nn.Module) -> bool:
    conv, pool = getattr(net, "conv1", None), getattr(net, "maxpool", None)
    return isinstance(pool, nn.Identity) and isinstance(conv, nn.Conv2d) and tuple(conv.stride) == (1, 1)


def _write_torchscript(backbone: nn.Module, spec: dict, data: bytes, tmp: str) -> list[str]:
    example = sample_batch({"image_shape": spec["image_shape"]}, 2, seed=1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript: docs/export.md
        traced = torch.jit.trace(backbone.eval(), example, check_trace=False)
    traced.save(os.path.join(tmp, "backbone.pt"))
    return ["backbone.pt"]


def _write_onnx(backbone: nn.Module, spec: dict, data: bytes, tmp: str) -> list[str]:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it, and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise StageInputError('--format onnx needs onnx and onnxscript: pip install "pretextflow[onnx]"') from None
    example = sample_batch({"image_shape": spec["image_shape"]}, 2, seed=1)
    path = os.path.join(tmp, "backbone.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(  # the torch.export-based exporter (onnxscript), dynamic batch dimension
            backbone.eval(),
            (example,),
            path,
            input_names=["images"],
            output_names=["features"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=False,  # one self-contained file (weights inside; the format's limit is 2 GB)
            verbose=False,
        )
    return ["backbone.onnx"]


WRITERS: dict[str, Callable[[nn.Module, dict, bytes, str], list[str]]] = {
    "timm": _write_timm,
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
    "safetensors": _write_safetensors,
}
