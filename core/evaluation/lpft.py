"""LP-FT (Kumar et al., ICLR'22: "Fine-Tuning can Distort Pretrained Features"): fit a linear head
on the frozen SSL features first, then fine-tune backbone and head together at a small lr.

Phase 1 is the linear probe's own fit (``probe.fit_linear_head``: standardised features, L-BFGS, the
weight decay chosen on a held-out part of *these* labels), on features the probe stage already
extracted from the frozen backbone; it changes no backbone weight (it never sees the backbone). Its
standardisation is folded into an ``nn.Linear`` over the raw features, so the network starts out
computing exactly the probe's logits. Phase 2 is the supervised recipe (``core.evaluation.supervised``:
its augmentation, schedule and budget) from the SSL weights and that head, at
``probe.lpft_recipe.lr_scale`` x the recipe's lr."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from pretextflow.core.config import RunConfig, SupervisedConfig
from pretextflow.core.evaluation.probe import LinearHead, fit_linear_head
from pretextflow.core.evaluation.supervised import train_supervised

log = logging.getLogger("pretextflow.lpft")


def linear_phase(features: np.ndarray, labels: np.ndarray, cfg: RunConfig, num_classes: int, seed: int) -> LinearHead:
    """LP-FT's first phase: the linear probe fitted on the frozen features of the labelled images."""
    return fit_linear_head(np.asarray(features, dtype=np.float32), np.asarray(labels), num_classes, cfg.probe, seed)


def train_lpft(
    cfg: RunConfig,
    meta: dict,
    features: np.ndarray,
    init_weights: dict[str, torch.Tensor] | None,
    recipe: SupervisedConfig | None = None,
    *,
    images: Any,
    labels: np.ndarray,
    seed: int,
    logger: logging.Logger | logging.LoggerAdapter = log,
    **supervised: Any,
) -> dict[str, Any]:
    """Both phases on (images, labels), whose frozen SSL features are ``features`` (row for row);
    ``supervised``: the rest of :func:`train_supervised`'s arguments (registry, test split, device,
    extents, progress...). Returns its result plus the linear phase's chosen weight decay."""
    if init_weights is None:
        raise ValueError("LP-FT starts from the SSL backbone: init_weights is required")
    head = linear_phase(features, labels, cfg, int(meta["num_classes"]), seed)
    result = train_supervised(
        cfg,
        meta,
        images=images,
        labels=labels,
        seed=seed,
        init_weights=init_weights,
        init_head=head.as_linear(),
        lr_scale=cfg.probe.lpft_recipe.lr_scale,
        logger=logger,
        recipe=recipe,
        **supervised,
    )
    result["linear_phase"] = {"weight_decay": head.weight_decay}
    return result
