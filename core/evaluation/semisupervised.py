"""FixMatch (Sohn et al. 2020): semi-supervised training of backbone + linear head on a small labelled
subset plus the unlabelled pool (every training image).

Each step takes a labelled batch of B images and an unlabelled batch of mu x B. The labelled images
get a weak view and a cross-entropy loss; each unlabelled image gets a weak view, whose prediction,
when its confidence reaches ``threshold``, is the pseudo label of a strong view of the same image
(the unlabelled loss, weighted by ``lambda_u``). The run starts from the SSL backbone's weights
(``init_weights``) or from the seeded random initialisation, with the same recipe and budget either
way (``probe.semisupervised_recipe``), so a report can separate what SSL adds from what the
unlabelled loss adds. The result has :func:`~pretextflow.core.evaluation.supervised.train_supervised`'s
keys plus the pool size, mu, the threshold, the mask rate and which initialisation was used.

Augmentation: the weak view is a random resized crop (``weak_crop_scale_min``) + flip; the strong
view a wider crop (``strong_crop_scale_min``) + flip + colour jitter (p 0.8) + grayscale (p 0.2). There
is no RandAugment / CTAugment in this codebase: the strong view is SimCLR's recipe, as the pretext
tasks use it. Flips follow ``probe.supervised.flip_p`` (a property of the data: digits set it to 0).

Batch norm: as in FixMatch's reference code, the labelled weak views, the unlabelled weak views and
the unlabelled strong views go through the model (in train mode) as *one* concatenated batch of
(1 + 2 mu) B images, so BN normalises with the statistics of all three together and the running
statistics see labelled and unlabelled images alike; it is also one forward instead of three. The
pseudo labels come from the weak logits of that forward, detached (no gradient through them).

Sampling: the labelled subset (small) is copied to a tensor and drawn as ``_fit`` draws it (a seeded
permutation per epoch, the last batch wrapped around). The pool is never read whole: a seeded
permutation per pool epoch, cut into batches of mu x B (the last wrapped around with the start of
the same permutation), and each batch's rows are gathered from the pool (an ImageView, a memory map,
a ShardedArray) by sorted index. Labelled, weak and strong views each have their own seeded
Augmenter, so a seed gives the same run on the CPU."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretextflow.core.config import RunConfig, SemiSupervisedConfig
from pretextflow.core.evaluation.supervised import Batches, _build_model, _optimizer, _top1
from pretextflow.core.registry.registry import Registry
from pretextflow.core.toolkit.augment import Augmenter, ViewSpec, content_fractions
from pretextflow.core.toolkit.schedules import lr_at

log = logging.getLogger("pretextflow.semisupervised")


def fixmatch_loss(
    logits_l: torch.Tensor,
    y: torch.Tensor,
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    threshold: float,
    lambda_u: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mask) of one step: L_s = CE(labelled logits, y) with ``label_smoothing``; the pseudo
    label of each unlabelled image is the argmax of its weak view's softmax (no gradient), kept
    (``mask``) where that maximum probability is >= ``threshold``; L_u = CE(strong logits, pseudo)
    over the kept images, averaged over the whole unlabelled batch; loss = L_s + lambda_u L_u."""
    l_s = F.cross_entropy(logits_l, y, label_smoothing=label_smoothing)
    with torch.no_grad():
        conf, pseudo = torch.softmax(logits_weak.detach().float(), dim=1).max(dim=1)
        mask = conf >= threshold
    per_image = F.cross_entropy(logits_strong, pseudo, reduction="none")
    l_u = (per_image * mask.to(per_image.dtype)).mean()
    return l_s + lambda_u * l_u, mask


def view_specs(sr: SemiSupervisedConfig, flip_p: float = 0.5) -> tuple[ViewSpec, ViewSpec]:
    """(weak, strong) views: crop + flip; a wider crop + flip + colour jitter + grayscale."""
    weak = ViewSpec(crop_scale=(sr.weak_crop_scale_min, 1.0), flip_p=flip_p, jitter_p=0.0, grayscale_p=0.0)
    strong = ViewSpec(crop_scale=(sr.strong_crop_scale_min, 1.0), flip_p=flip_p, jitter_p=0.8, grayscale_p=0.2)
    return weak, strong


class _Pool:
    """The unlabelled pool, read batch by batch: each batch's rows gathered by sorted index (never
    the whole pool), with their content fractions (``extent``, or None)."""

    def __init__(self, images, batch: int, seed: int, extents, device: torch.device | str):
        self.images, self.device = images, device
        self.batches = Batches(len(images), batch, seed)
        self.extent = content_fractions(extents, int(images.shape[-1]), device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = np.sort(self.batches.next().numpy())
        x = torch.from_numpy(np.ascontiguousarray(self.images[rows])).to(self.device)
        return x, None if self.extent is None else self.extent[torch.from_numpy(rows).to(self.extent.device)]


class _Labelled:
    """The labelled subset as tensors on ``device``, drawn like ``_fit`` draws it."""

    def __init__(self, images, labels, batch: int, seed: int, extents, device: torch.device | str):
        self.x = torch.from_numpy(np.array(images)).to(device)  # the labelled subset only: small
        self.y = torch.from_numpy(np.array(labels)).long().to(device)
        self.extent = content_fractions(extents, int(self.x.shape[-1]), device)
        self.batches = Batches(len(self.x), batch, seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        idx = self.batches.next()
        e = None if self.extent is None else self.extent[idx.to(self.extent.device)]
        return self.x[idx], self.y[idx.to(self.y.device)], e


class _Views:
    """Three seeded Augmenters (labelled, weak, strong) at the backbone's input size."""

    def __init__(self, seed: int, size: int, device: torch.device | str, sr: SemiSupervisedConfig, flip_p: float):
        self.labelled, self.weak, self.strong = (Augmenter(seed + k, device=device, out_size=size) for k in (1, 2, 3))
        self.weak_spec, self.strong_spec = view_specs(sr, flip_p)

    def make(self, xl, el, xu, eu) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self.labelled.view(xl, self.weak_spec, el),
            self.weak.view(xu, self.weak_spec, eu),
            self.strong.view(xu, self.strong_spec, eu),
        )


def _train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[_Labelled, _Pool, _Views],
    sr: SemiSupervisedConfig,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[float], list[float]]:
    """``sr.steps`` FixMatch steps (warm-up + cosine lr); return the step losses and mask rates.
    The labelled weak, unlabelled weak and unlabelled strong views go through one forward."""
    labelled, pool, views = data
    total = int(sr.steps)
    warmup = int(sr.warmup_fraction * total)
    losses: list[float] = []
    masks: list[float] = []
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup, sr.lr)
        xl, yl, el = labelled.next()
        xu, eu = pool.next()
        wl, wu, su = views.make(xl, el, xu, eu)
        logits = model(torch.cat([wl, wu, su]))
        logits_l, logits_w, logits_s = logits.split([len(wl), len(wu), len(su)])
        loss, mask = fixmatch_loss(logits_l, yl, logits_w, logits_s, sr.threshold, sr.lambda_u, sr.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        masks.append(float(mask.float().mean()))
        if progress is not None:
            progress(step + 1, total)
    return losses, masks


def train_fixmatch(
    cfg: RunConfig,
    meta: dict,
    registry: Registry,
    images: np.ndarray,
    labels: np.ndarray,
    unlabelled: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    seed: int,
    init_weights: dict[str, torch.Tensor] | None = None,
    logger: logging.Logger | logging.LoggerAdapter = log,
    tag: str = "fixmatch",
    device: torch.device | str = "cpu",
    extents: np.ndarray | None = None,
    unlabelled_extents: np.ndarray | None = None,
    test_extents: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """FixMatch on (images, labels) + the ``unlabelled`` pool (read batch by batch, never whole) with
    ``probe.semisupervised_recipe``, from ``init_weights`` (the SSL backbone) or the seeded random
    initialisation; return test top-1 and the budget as ``train_supervised`` does, plus "unlabelled"
    (pool size), "mu", "threshold", "mask_rate" (mean fraction of unlabelled images at or above the
    threshold over the last 10% of steps), "unlabelled_epochs" and "init" ("ssl" / "random").
    Labelled batch B = min(batch_size, labels), unlabelled mu x B (at most the pool). Extents: per
    image (h, w) px of content, or None. Deterministic for a seed on the CPU. ``progress(done, steps)``."""
    sr = cfg.probe.semisupervised_recipe
    t0 = time.perf_counter()
    backbone, head = _build_model(cfg, meta, registry, seed, init_weights)
    model = torch.nn.Sequential(backbone, head).to(device).train()
    opt = _optimizer(model, sr, sr.lr)  # AdamW, sr.weight_decay, none on norms and biases
    n = len(images)
    batch = min(sr.batch_size, n)
    u_batch = min(sr.mu * batch, len(unlabelled))
    labelled = _Labelled(images, labels, batch, seed, extents, device)
    pool = _Pool(unlabelled, u_batch, seed + 4, unlabelled_extents, device)
    views = _Views(seed, backbone.image_size, device, sr, cfg.probe.supervised.flip_p)
    losses, masks = _train(model, opt, (labelled, pool, views), sr, progress)
    model.eval()
    with torch.inference_mode():
        train_top1 = _top1(backbone, head, images, labels, extents)
        test_top1 = _top1(backbone, head, test_images, test_labels, test_extents)
    result = _result(sr, labelled.batches.per_epoch, u_batch, len(unlabelled), losses, masks)
    result.update(top1=test_top1, train_top1=train_top1, num_labels=int(n), batch_size=int(batch))
    result.update(init="ssl" if init_weights is not None else "random", seconds=time.perf_counter() - t0)
    _log_result(logger, tag, result)
    return result


def _result(
    sr: SemiSupervisedConfig, per_epoch: int, u_batch: int, pool: int, losses: list[float], masks: list[float]
) -> dict[str, Any]:
    """The budget and training record of a run (its accuracies, data and time are added after)."""
    return {
        "steps": int(sr.steps),
        "epochs": sr.steps / per_epoch,  # labelled epochs
        "lr": float(sr.lr),
        "final_train_loss": float(np.mean(losses[-max(1, per_epoch) :])),
        "unlabelled": int(pool),
        "unlabelled_epochs": sr.steps * u_batch / pool,
        "mu": int(sr.mu),
        "threshold": float(sr.threshold),
        "mask_rate": float(np.mean(masks[-max(1, len(masks) // 10) :])),  # the last 10% of steps
    }


def _log_result(logger: logging.Logger | logging.LoggerAdapter, tag: str, r: dict[str, Any]) -> None:
    """Log one FixMatch run's data, budget, mask rate, accuracies and time."""
    logger.info(
        "%s (%s init): %d labels + %d unlabelled, %d steps (%.1f labelled epochs), mask rate %.2f, "
        "train top-1 %.4f, test top-1 %.4f [%.1fs]",
        tag,
        r["init"],
        r["num_labels"],
        r["unlabelled"],
        r["steps"],
        r["epochs"],
        r["mask_rate"],
        r["train_top1"],
        r["top1"],
        r["seconds"],
    )
