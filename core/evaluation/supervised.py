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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretextflow.core.config import RunConfig, SupervisedConfig
from pretextflow.core.evaluation.features import extract_features
from pretextflow.core.registry.registry import Registry
from pretextflow.core.toolkit.augment import Augmenter, ViewSpec
from pretextflow.core.toolkit.schedules import lr_at
from pretextflow.core.training.model import build_backbone

log = logging.getLogger("pretextflow.supervised")


def schedule(n: int, sc: SupervisedConfig) -> tuple[int, int, int]:
    """(batch size, steps per epoch, total steps) for a subset of ``n`` labelled images."""
    batch = min(sc.batch_size, n)
    per_epoch = math.ceil(n / batch)
    return batch, per_epoch, max(sc.min_steps, sc.epochs * per_epoch)


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
) -> dict[str, Any]:
    """Train backbone + linear head on (images, labels); return test top-1 and the budget used.
    Deterministic for a seed on the CPU (model init, data order and augmentation are seeded)."""
    sc = cfg.probe.supervised
    t0 = time.perf_counter()
    num_classes = int(meta["num_classes"])
    backbone = build_backbone(cfg, meta, registry, seed=seed)
    if init_weights is not None:
        backbone.load_state_dict(init_weights, strict=True)
    head = torch.nn.Linear(backbone.num_features, num_classes)
    model = torch.nn.Sequential(backbone, head).train()

    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # no weight decay on norms and biases
    lr = sc.lr * lr_scale
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": sc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    x = torch.from_numpy(np.array(images))
    y = torch.from_numpy(np.array(labels)).long()
    n = len(x)
    batch, per_epoch, total = schedule(n, sc)
    warmup = int(sc.warmup_fraction * total)
    gen = torch.Generator().manual_seed(seed)
    aug = Augmenter(seed + 1)
    spec = ViewSpec(crop_scale=(sc.crop_scale_min, 1.0), flip_p=sc.flip_p, jitter_p=0.0, grayscale_p=0.0)
    losses: list[float] = []
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=gen)
        for i in range(per_epoch):
            if step >= total:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, lr)
            idx = perm[i * batch : (i + 1) * batch]
            if len(idx) < batch:  # wrap around: every step sees a full batch
                idx = torch.cat([idx, perm[: batch - len(idx)]])
            logits = model(aug.view(x[idx], spec))
            loss = F.cross_entropy(logits, y[idx], label_smoothing=sc.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1

    model.eval()
    with torch.inference_mode():

        def predict(imgs: np.ndarray) -> np.ndarray:
            feats = torch.from_numpy(extract_features(backbone, imgs, 1024))
            return head(feats).argmax(1).numpy()

        train_top1 = float((predict(images) == np.asarray(labels)).mean())
        test_top1 = float((predict(test_images) == np.asarray(test_labels)).mean())
    seconds = time.perf_counter() - t0
    logger.info(
        "%s: %d labels, %d steps (%.1f epochs), train top-1 %.4f, test top-1 %.4f [%.1fs]",
        tag,
        n,
        total,
        total / per_epoch,
        train_top1,
        test_top1,
        seconds,
    )
    return {
        "top1": test_top1,
        "train_top1": train_top1,
        "num_labels": int(n),
        "steps": int(total),
        "epochs": total / per_epoch,
        "batch_size": int(batch),
        "lr": lr,
        "final_train_loss": float(np.mean(losses[-max(1, per_epoch) :])),
        "seconds": seconds,
    }
