"""Training with labels: the supervised-from-scratch baseline and optional fine-tuning.

The baseline gets the same care as the SSL method: the same backbone architecture, its own
augmentation (random resized crop + flip), AdamW with warm-up and cosine decay, label smoothing,
and enough updates to converge on small subsets (``min_steps``). Its budget is recorded with the
result, together with the final training accuracy as evidence that it converged. Fine-tuning is
the same recipe started from the frozen SSL weights with a smaller learning rate."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretextflow.core.config import RunConfig, SupervisedConfig
from pretextflow.core.evaluation.features import extract_features
from pretextflow.core.registry.registry import Registry
from pretextflow.core.toolkit.augment import Augmenter, ViewSpec, content_fractions
from pretextflow.core.toolkit.schedules import lr_at
from pretextflow.core.training.model import build_backbone

log = logging.getLogger("pretextflow.supervised")


def schedule(n: int, sc: SupervisedConfig) -> tuple[int, int, int]:
    """(batch size, steps per epoch, total steps) for a subset of ``n`` labelled images."""
    batch = min(sc.batch_size, n)
    per_epoch = math.ceil(n / batch)
    return batch, per_epoch, max(sc.min_steps, sc.epochs * per_epoch)


def _build_model(
    cfg: RunConfig,
    meta: dict,
    registry: Registry,
    seed: int,
    init_weights: dict[str, torch.Tensor] | None,
    init_head: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The backbone (seeded, or loaded from ``init_weights``) and a linear head over its features
    (seeded, or ``init_head`` = (weight (classes, features), bias (classes,)): LP-FT's fitted probe)."""
    num_classes = int(meta["num_classes"])
    backbone = build_backbone(cfg, meta, registry, seed=seed)
    if init_weights is not None:
        backbone.load_state_dict(init_weights, strict=True)
    head = torch.nn.Linear(backbone.num_features, num_classes)
    if init_head is not None:
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(init_head[0], dtype=torch.float32))
            head.bias.copy_(torch.as_tensor(init_head[1], dtype=torch.float32))
    return backbone, head


def _optimizer(model: torch.nn.Module, sc: SupervisedConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW with ``sc.weight_decay``, none on norms and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # no weight decay on norms and biases
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": sc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


class Batches:
    """Seeded index batches over ``n`` items: a permutation per epoch, cut into ``batch``-sized
    pieces, the last one filled up from the start of the same permutation (every batch full). The
    supervised runs and FixMatch (its labelled subset and its unlabelled pool) draw through it."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch = int(n), int(batch)
        self.per_epoch = math.ceil(self.n / self.batch)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.i = 0

    def next(self) -> torch.Tensor:
        if self.i == self.per_epoch:
            self.perm, self.i = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.i * self.batch : (self.i + 1) * self.batch]
        if len(idx) < self.batch:
            idx = torch.cat([idx, self.perm[: self.batch - len(idx)]])
        self.i += 1
        return idx


def _fit(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    sc: SupervisedConfig,
    seed: int,
    lr: float,
    plan: tuple[int, int, int],
    extent: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Train for ``plan`` = (batch, steps per epoch, total steps) with warm-up + cosine lr, seeded
    data order and augmentation; return the step losses. Crops come from the stored images ``x``
    (inside their content: ``extent``, fractions as ``content_fractions`` gives them), out at the
    backbone's input size. ``progress(steps done, steps)`` after each step."""
    batch, _, total = plan
    warmup = int(sc.warmup_fraction * total)
    batches = Batches(len(x), batch, seed)  # every step a full batch: the last of an epoch wraps around
    aug = Augmenter(seed + 1, device=x.device, out_size=model[0].image_size)  # model[0]: the backbone; on its device
    spec = ViewSpec(crop_scale=(sc.crop_scale_min, 1.0), flip_p=sc.flip_p, jitter_p=0.0, grayscale_p=0.0)
    losses: list[float] = []
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup, lr)
        idx = batches.next()
        logits = model(aug.view(x[idx], spec, None if extent is None else extent[idx.to(extent.device)]))
        loss = F.cross_entropy(logits, y[idx], label_smoothing=sc.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, total)
    return losses


def _top1(
    backbone: torch.nn.Module,
    head: torch.nn.Linear,
    images: np.ndarray,
    labels: np.ndarray,
    extents: np.ndarray | None = None,
) -> float:
    """Top-1 accuracy of backbone + head on (images, labels), on the head's device."""
    device = head.weight.device
    feats = torch.from_numpy(extract_features(backbone, images, 1024, device, extents)).to(device)
    return float((head(feats).argmax(1).cpu().numpy() == np.asarray(labels)).mean())


def train_supervised(
    cfg: RunConfig,
    meta: dict,
    registry: Registry,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    seed: int,
    init_weights: dict[str, torch.Tensor] | None = None,
    lr_scale: float = 1.0,
    logger: logging.Logger | logging.LoggerAdapter = log,
    tag: str = "supervised",
    device: torch.device | str = "cpu",
    extents: np.ndarray | None = None,
    test_extents: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
    init_head: tuple[np.ndarray, np.ndarray] | None = None,
    recipe: SupervisedConfig | None = None,
) -> dict[str, Any]:
    """Train backbone + linear head on (images, labels); return test top-1 and the budget used.
    ``recipe``: the training recipe (None: ``probe.supervised``; cross-validation passes each
    candidate's); ``init_head``: the head's starting weights (LP-FT), else a seeded initialisation.
    The backbone is built for ``train.image_size`` (else the stored size): crops are taken from the
    stored images (inside their content, ``extents``: (h, w) px per image, or None) and resized to it,
    and evaluation brings the images to it as the probes' features do. Deterministic for a seed on the
    CPU (model init, data order and augmentation are seeded). ``progress(steps done, steps)`` as it trains."""
    sc = recipe or cfg.probe.supervised
    t0 = time.perf_counter()
    backbone, head = _build_model(cfg, meta, registry, seed, init_weights, init_head)
    model = torch.nn.Sequential(backbone, head).to(device).train()
    lr = sc.lr * lr_scale
    opt = _optimizer(model, sc, lr)
    x = torch.from_numpy(np.array(images)).to(device)  # the labelled subset only
    y = torch.from_numpy(np.array(labels)).long().to(device)
    n = len(x)
    batch, per_epoch, total = schedule(n, sc)
    extent = content_fractions(extents, int(x.shape[-1]), device)
    losses = _fit(model, opt, x, y, sc, seed, lr, (batch, per_epoch, total), extent, progress)
    model.eval()
    with torch.inference_mode():
        train_top1 = _top1(backbone, head, images, labels, extents)
        test_top1 = _top1(backbone, head, test_images, test_labels, test_extents)
    result = {
        "top1": test_top1,
        "train_top1": train_top1,
        "num_labels": int(n),
        "steps": int(total),
        "epochs": total / per_epoch,
        "batch_size": int(batch),
        "lr": lr,
        "final_train_loss": float(np.mean(losses[-max(1, per_epoch) :])),
        "seconds": time.perf_counter() - t0,
    }
    _log_result(logger, tag, result)
    return result


def _log_result(logger: logging.Logger | logging.LoggerAdapter, tag: str, r: dict[str, Any]) -> None:
    """Log one supervised run's labels, budget, accuracies and time. A cross-validation fold's run
    (its tag ends in " CV": ``trained.SubsetTrainer._tune``) is scored on the fold's held-out
    images, never on the test split, and its line says so."""
    logger.info(
        "%s: %d labels, %d steps (%.1f epochs), train top-1 %.4f, %s top-1 %.4f [%.1fs]",
        tag,
        r["num_labels"],
        r["steps"],
        r["epochs"],
        r["train_top1"],
        "held-out fold" if tag.endswith(" CV") else "test",
        r["top1"],
        r["seconds"],
    )
