"""Freeze: keep the backbone, throw the pretext head away. Exports the backbone's weights as
safetensors plus a small JSON spec (how to rebuild it); probing loads only these two files."""

from __future__ import annotations

import logging

from pretextflow.core.config import RunConfig
from pretextflow.core.errors import StageInputError
from pretextflow.core.registry.contracts import Backbone
from pretextflow.core.registry.registry import Registry
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training import checkpoint as ckpt
from pretextflow.core.training.model import build_backbone, input_size

STAGE = "freeze"
log = logging.getLogger("pretextflow.freeze")


def freeze(
    cfg: RunConfig,
    dataset_meta: dict,
    store: ArtifactStore,
    pretrain_key: str,
    key: str,
    logger: logging.Logger | logging.LoggerAdapter = log,
) -> str:
    if store.is_complete(STAGE, key):
        logger.info("freeze %s: complete artifact found", key)
        return store.uri_of(STAGE, key)
    if not store.is_complete("pretrain", pretrain_key):
        raise StageInputError(
            f"freeze needs the pretrained model pretrain/{pretrain_key} in {store.uri}, which "
            f"does not exist. Run `pretextflow pretrain CONFIG` (or `pretextflow run CONFIG`)."
        )
    groups, _ = ckpt.decode(store.read_bytes("pretrain", pretrain_key, "task.safetensors"))
    weights = {k[len("backbone.") :]: v for k, v in groups["model"].items() if k.startswith("backbone.")}
    size = input_size(cfg, dataset_meta)
    spec = {
        "backbone": cfg.backbone.model_dump(mode="json"),
        "image_shape": [int(dataset_meta["image_shape"][0]), size, size],  # the backbone's input (train.image_size)
        "mean": dataset_meta["mean"],
        "std": dataset_meta["std"],
        "pretext": cfg.pretext.name,
        "pretrain_key": pretrain_key,
        "num_parameters": int(sum(v.numel() for k, v in weights.items() if not k.endswith("num_batches_tracked"))),
    }
    if list(dataset_meta["image_shape"]) != spec["image_shape"]:
        spec["data_image_shape"] = list(dataset_meta["image_shape"])  # what it was trained from, resized
    store.write_bytes(ckpt.encode({"backbone": weights}, spec), STAGE, key, "backbone.safetensors")
    store.write_json(spec, STAGE, key, "spec.json")
    store.mark_complete(STAGE, key, {"pretrain_key": pretrain_key})
    logger.info("freeze %s: exported %d backbone tensors (%d parameters)", key, len(weights), spec["num_parameters"])
    return store.uri_of(STAGE, key)


def load_frozen_backbone(store: ArtifactStore, key: str, registry: Registry) -> Backbone:
    """Rebuild the backbone from its spec and load the frozen weights; eval mode, no gradients."""
    if not store.is_complete(STAGE, key):
        raise StageInputError(
            f"probe needs the frozen backbone freeze/{key} in {store.uri}, which does not "
            f"exist. Run `pretextflow freeze CONFIG` first (or `pretextflow run CONFIG`)."
        )
    backbone, _ = rebuild_backbone(store.read_bytes(STAGE, key, "backbone.safetensors"), registry)
    return backbone


def rebuild_backbone(data: bytes, registry: Registry) -> tuple[Backbone, dict]:
    """The backbone of a ``backbone.safetensors`` (weights + the spec in its metadata), built with the
    installed backbone plugin, strict keys; eval mode, no gradients. Returns it with its spec."""
    from pretextflow.core.config import BackboneConfig, DataConfig

    groups, spec = ckpt.decode(data)
    if "backbone" not in groups or "backbone" not in spec:
        raise StageInputError(
            "this safetensors file is not a pretextflow backbone (no backbone weights or spec in it): "
            "pass the backbone.safetensors of a freeze stage or of a safetensors export."
        )
    # the frozen weights replace any initial ones, so those are not read again (nor needed any more)
    bb = BackboneConfig(**{**spec["backbone"], "weights": None})
    cfg = RunConfig(data=DataConfig(name="frozen"), backbone=bb)  # data unused
    backbone = build_backbone(
        cfg, {"image_shape": spec["image_shape"], "mean": spec["mean"], "std": spec["std"]}, registry
    )
    backbone.load_state_dict(groups["backbone"], strict=True)
    return backbone.eval().requires_grad_(False), spec
