"""``load_backbone(where)``: the frozen backbone of a run folder, a ``manifest.json`` or an export
folder (any fsspec URI), as a :class:`FeatureExtractor`."""

from __future__ import annotations

import io
import json
import posixpath
import tempfile
import warnings
from typing import Any

import fsspec

from pretextflow.core.errors import StageInputError
from pretextflow.core.evaluation.metrics import HEADLINE
from pretextflow.core.export.extractor import FeatureExtractor, Normalize
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.core.runs.history import load_manifest
from pretextflow.core.security.credentials import resolve, resolve_options
from pretextflow.core.security.redaction import redact
from pretextflow.core.training.freeze import rebuild_backbone

MARKER = "pretextflow-export.json"
"""The file that makes a folder an export: its format, files and description."""


def load_backbone(
    where: str,
    storage_options: dict[str, Any] | None = None,
    registry: Registry | None = None,
    trust_torchscript: bool = False,
) -> FeatureExtractor:
    """The frozen backbone of ``where``: a run folder (``artifacts/runs/<id>``), its ``manifest.json``,
    or a folder written by ``pretextflow export`` (timm, torchscript, onnx or safetensors). Eval mode,
    ``requires_grad`` off, on the CPU (``.to("cuda")`` moves it, except ONNX). Loading a TorchScript
    file runs the code in it, so a torchscript export loads only with ``trust_torchscript=True``."""
    fs, path, options = _locate(where, storage_options)
    if not path.endswith(".json") and fs.exists(posixpath.join(path, MARKER)):
        return load_export(fs, path, registry, trust_torchscript)
    manifest_path = _manifest_path(path)
    if not fs.exists(manifest_path):
        raise StageInputError(
            f"{redact(str(where))} is not a run folder, a manifest.json or an export folder (no manifest.json, "
            f"no {MARKER}). Pass artifacts/runs/<run id> (`pretextflow runs` lists them) or a folder "
            f"written by `pretextflow export`."
        )
    return _from_run(fs, manifest_path, options, registry)


def backbone_of_run(
    where: str, storage_options: dict[str, Any] | None = None, registry: Registry | None = None
) -> tuple[Any, dict, bytes, dict]:
    """The run's frozen ``Backbone`` (float input), its spec, the backbone.safetensors bytes and the
    manifest: what an export is made from."""
    fs, path, options = _locate(where, storage_options)
    manifest_path = _manifest_path(path)
    if not fs.exists(manifest_path):
        raise StageInputError(
            f"{redact(str(where))}: no manifest.json. Export needs a run: pass artifacts/runs/<run id> "
            f"(`pretextflow runs` lists them) or its manifest.json."
        )
    return _run_backbone(fs, manifest_path, options, registry)


def _locate(where: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, dict[str, Any]]:
    """``(filesystem, path without a trailing slash, resolved storage options)`` of ``where``."""
    options = resolve_options(storage_options or {})
    try:
        fs, path = fsspec.core.url_to_fs(resolve(str(where)), **options)
    except ValueError as exc:
        raise StageInputError(f"{redact(str(where))}: {exc}") from None
    return fs, path.rstrip("/"), options


def _manifest_path(path: str) -> str:
    return path if path.endswith(".json") else posixpath.join(path, "manifest.json")


def _run_backbone(fs, manifest_path: str, options: dict, registry: Registry | None) -> tuple[Any, dict, bytes, dict]:
    manifest = load_manifest(fs.unstrip_protocol(manifest_path), options)
    data = _frozen_bytes(fs, manifest_path, manifest, options)
    backbone, spec = rebuild_backbone(data, registry or get_registry())
    return backbone, spec, data, manifest


def _from_run(fs, manifest_path: str, options: dict, registry: Registry | None) -> FeatureExtractor:
    backbone, spec, _, manifest = _run_backbone(fs, manifest_path, options, registry)
    return FeatureExtractor(
        backbone,
        in_chans=spec["image_shape"][0],
        image_size=spec["image_shape"][1],
        num_features=backbone.num_features,
        info=describe(spec, manifest, backbone.num_features),
    )


def _frozen_bytes(fs, manifest_path: str, manifest: dict, options: dict) -> bytes:
    """The run's backbone.safetensors (where :func:`frozen_location` finds it)."""
    rfs, rpath = frozen_location(fs, manifest_path, manifest, options)
    return rfs.cat_file(rpath)


def frozen_location(fs, manifest_path: str, manifest: dict, options: dict) -> tuple[Any, str]:
    """``(filesystem, path)`` of the run's backbone.safetensors: beside the run in its store
    (``<store>/runs/<id>`` → ``<store>/freeze/<key>``, so a copied store still works), else where the
    manifest recorded it."""
    key = manifest["artifacts"].get("freeze", {}).get("key")
    if not key:
        raise StageInputError(f"{redact(manifest_path)} records no freeze stage: this run has no backbone")
    store_root = posixpath.dirname(posixpath.dirname(posixpath.dirname(manifest_path)))
    beside = posixpath.join(store_root, "freeze", key, "backbone.safetensors")
    if fs.exists(beside):
        return fs, beside
    recorded = manifest["artifacts"]["freeze"]["uri"].rstrip("/") + "/backbone.safetensors"
    try:
        rfs, rpath = fsspec.core.url_to_fs(resolve(recorded), **options)
        if rfs.exists(rpath):
            return rfs, rpath
    except (ValueError, OSError):
        pass
    raise StageInputError(
        f"the frozen backbone of run {manifest['run_id']} is neither at {redact(beside)} nor at "
        f"{redact(recorded)}. Copy the store's freeze/{key} folder beside runs/, or rerun it "
        f"(`pretextflow rerun {redact(manifest_path)}`)."
    )


def describe(spec: dict, manifest: dict | None, num_features: int) -> dict[str, Any]:
    """What a model card and ``FeatureExtractor.info`` say about a backbone."""
    m = manifest or {}
    metrics = m.get("metrics", {})
    return {
        "backbone": spec["backbone"],
        "pretext": spec.get("pretext"),
        "image_shape": spec["image_shape"],
        "mean": spec["mean"],
        "std": spec["std"],
        "num_parameters": spec.get("num_parameters"),
        "num_features": int(num_features),
        "run_id": m.get("run_id"),
        "data_version": m.get("data_version"),
        "dataset": m.get("dataset", {}).get("name"),
        "metrics": {k: metrics[k] for k in HEADLINE if k in metrics},
        "pretextflow": m.get("code_version", {}).get("pretextflow"),
    }


# -- export folders ---------------------------------------------------------------------------
def load_export(fs, path: str, registry: Registry | None = None, trust_torchscript: bool = False) -> FeatureExtractor:
    try:
        marker = json.loads(fs.cat_file(posixpath.join(path, MARKER)))
        fmt, info = marker["format"], marker["info"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise StageInputError(f"{path}/{MARKER} is damaged ({exc!r}): export the run again") from None
    c, size = info["image_shape"][0], info["image_shape"][1]
    model = _LOADERS.get(fmt)
    if model is None:
        raise StageInputError(f"{path}: unknown export format {fmt!r} (this pretextflow reads {', '.join(_LOADERS)})")
    if fmt == "torchscript" and not trust_torchscript:
        raise StageInputError(
            f"{redact(path)} is a TorchScript export: loading one runs the code inside it. Load it only if "
            f"you trust who wrote it (load_backbone(..., trust_torchscript=True), or --trust-torchscript), "
            f"or export the run as safetensors, onnx or timm, which hold weights only."
        )
    net, num_features = model(fs, path, info, registry)
    return FeatureExtractor(net, in_chans=c, image_size=size, num_features=num_features, info=info)


def _load_safetensors(fs, path: str, info: dict, registry: Registry | None):
    backbone, _ = rebuild_backbone(
        fs.cat_file(posixpath.join(path, "backbone.safetensors")), registry or get_registry()
    )
    return backbone, backbone.num_features


def _load_timm(fs, path: str, info: dict, registry: Registry | None):
    import timm

    with tempfile.TemporaryDirectory(prefix="pretextflow-timm-") as tmp:
        for name in ("config.json", "model.safetensors"):
            fs.get(posixpath.join(path, name), posixpath.join(tmp, name))
        net = timm.create_model(f"local-dir:{tmp}", pretrained=True)
    net = Normalize(net.eval(), info["mean"], info["std"])
    return net, int(net.net.num_features)


def _load_torchscript(fs, path: str, info: dict, registry: Registry | None):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript: docs/export.md
        net = torch.jit.load(io.BytesIO(fs.cat_file(posixpath.join(path, "backbone.pt"))), map_location="cpu")
    return net.eval(), int(info["num_features"])


def _load_onnx(fs, path: str, info: dict, registry: Registry | None):
    from pretextflow.core.export.onnx_runtime import OnnxModule

    return OnnxModule(fs.cat_file(posixpath.join(path, "backbone.onnx"))), int(info["num_features"])


_LOADERS = {
    "safetensors": _load_safetensors,
    "timm": _load_timm,
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
}
