"""Building what is trained: the device and precision policy, the backbone and the pretext task."""

from __future__ import annotations

import numpy as np
import torch

from pretextflow.core.config import RunConfig, validate_plugin_params
from pretextflow.core.errors import ConfigError, PluginError, PretextflowError
from pretextflow.core.registry.contracts import Backbone, BackboneParams, PretextTask
from pretextflow.core.registry.registry import Registry
from pretextflow.core.training.weights import load_initial_weights


# -- device and precision policies (pure functions: unit-testable without a GPU) ------------
def select_device(preference: str, setting: str = "train.device") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} is 'cuda' but no CUDA device is available. Use {setting}: auto or cpu.")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def amp_dtype(device: torch.device, enabled: bool, bf16_supported: bool | None = None) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the GPU supports it (no scaler needed), else fp16."""
    if not enabled or device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def configure_runtime(seed: int, device: torch.device, threads: int | None) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        # cuDNN autotuning picks the fastest kernels; GPU runs are reproducible within tolerance
        torch.backends.cudnn.benchmark = True
        torch.use_deterministic_algorithms(False)


# -- building the model ------------------------------------------------------------------------
SMALL_STEM_BELOW = 64  # px: `small_image_stem: auto` uses the small stem only for smaller images


def small_stem(setting: bool | str, image_size: int) -> bool:
    """``backbone.small_image_stem`` resolved for images of ``image_size`` px."""
    return image_size < SMALL_STEM_BELOW if setting == "auto" else bool(setting)


def input_size(cfg: RunConfig, dataset_meta: dict) -> int:
    """The backbone's input side in px: ``train.image_size``, else the dataset's stored size."""
    return int(cfg.train.image_size or dataset_meta["image_shape"][1])


def build_backbone(
    cfg: RunConfig, dataset_meta: dict, registry: Registry, seed: int | None = None, image_size: int | None = None
) -> Backbone:
    """The backbone plugin's network wrapped with the dataset's normalisation, with
    ``backbone.weights`` loaded when set, built for ``image_size`` px inputs (default
    :func:`input_size`: ``train.image_size`` or the stored size; ``small_image_stem: auto`` follows
    it). Seeded so that the random-init (initial-weights) baseline is exactly pretraining's starting point."""
    spec = registry.backbone(cfg.backbone.name)
    size = int(image_size or input_size(cfg, dataset_meta))
    params = BackboneParams(
        in_chans=int(dataset_meta["image_shape"][0]),
        image_size=size,
        small_image_stem=small_stem(cfg.backbone.small_image_stem, size),
        kwargs=cfg.backbone.kwargs,
    )
    if seed is not None:
        torch.manual_seed(seed)
    try:
        net, num_features = spec.build(cfg.backbone.name, params)
    except PretextflowError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PluginError(
            f"backbone {cfg.backbone.name!r} could not be built with backbone.kwargs={cfg.backbone.kwargs}: {exc}"
        ) from exc
    if cfg.backbone.weights:
        load_initial_weights(net, cfg.backbone.weights)  # pretraining starts here, and the baseline is these
    return Backbone(
        net,
        num_features,
        dataset_meta["mean"],
        dataset_meta["std"],
        image_size=params.image_size,
        provides_tokens=spec.provides_tokens,
    )


def build_task(cfg: RunConfig, backbone: Backbone, registry: Registry) -> PretextTask:
    task_cls = registry.pretext_task(cfg.pretext.name)
    req = task_cls.requires
    if req.tokens and not backbone.provides_tokens:
        raise PluginError(
            f"pretext task {task_cls.name!r} needs a backbone that exposes patch tokens, but "
            f"backbone {cfg.backbone.name!r} does not. Choose a ViT backbone."
        )
    if req.flexible_input and not backbone.flexible_input:
        raise PluginError(
            f"pretext task {task_cls.name!r} needs a backbone that accepts smaller crops than its "
            f"built size, but backbone {cfg.backbone.name!r} does not (for timm ViTs pass "
            f"backbone.kwargs.dynamic_img_size=true)."
        )
    if backbone.image_size < req.min_image_size:
        raise PluginError(
            f"pretext task {task_cls.name!r} needs images of at least {req.min_image_size}px; "
            f"the backbone's input is {backbone.image_size}px (train.image_size, else the dataset's size)."
        )
    params = validate_plugin_params(task_cls.Params, cfg.pretext.params, "pretext.params")
    return task_cls(backbone, params)
