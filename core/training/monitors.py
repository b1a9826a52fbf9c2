"""Online monitors during pretraining: is the representation getting better, or collapsing?

Every ``monitor.every_epochs`` epochs (and after the last) the training loop hands the backbone to
:class:`OnlineMonitor`, which measures, in eval mode and without gradients:

- **kNN top-1** on a small class-stratified, seeded subset of the *training* split's labelled
  images (never the test split: the test split is scored once, by the probe stage). Leave-one-out
  on the subset: every image is a query and its neighbours are the subset's other images, so all
  ``knn_samples`` images serve as queries and as the bank (a bank/query split would halve both and
  make the number noisier for the same cost). Cosine similarity, the ``knn_k`` nearest vote with
  weight exp(sim / 0.07), as the probe's kNN does (Wu et al. 2018, InstDisc; solo-learn's online
  kNN): the same kind of number, on fewer images, so it tracks the probe's trend, not its value.
- **RankMe** (Garrido et al. 2023): the effective rank of the embeddings of a fixed seeded batch of
  training images (labelled or not), ``exp(-sum p_k log p_k)`` with ``p_k = sigma_k / sum(sigma) +
  1e-7`` over the singular values of the ``(n, d)`` embedding matrix. 1 when every image has the
  same embedding (collapse), at most min(n, d); it needs no labels.

The subsets are drawn once, at construction, from the seed; every check reads the same images
(batch by batch, through an ``ImageView``) and brings them to the model's size as evaluation does
(``toolkit.augment.fit_to_size``, letterboxed images by their ``Dataset.train_extents``). Nothing
is drawn from torch's generators and eval mode updates no BatchNorm statistics, so a monitored run
trains exactly the weights an unmonitored one does. ``check`` stops a collapsing run
(``monitor.stop_on_collapse``) with a :class:`~pretextflow.core.errors.CollapseError`."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretextflow.core.config import MonitorConfig
from pretextflow.core.data.dataset import Dataset
from pretextflow.core.data.shards import ImageView
from pretextflow.core.errors import CollapseError
from pretextflow.core.toolkit.augment import content_fractions, fit_to_size, to_float

__all__ = ["CollapseError", "OnlineMonitor", "embed", "knn_loo_top1", "rankme", "stratified_sample"]

log = logging.getLogger("pretextflow.train")

KNN_TEMPERATURE = 0.07  # the probe's default (probe.knn_temperature) and solo-learn's
RANKME_EPS = 1e-7  # Garrido et al. 2023
BATCH = 256  # images per forward
_KNN_CHUNK = 1024  # query rows per similarity block


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of ``n`` of ``labels`` (all of them when there are fewer), every class in
    proportion to its size (largest remainder, so exactly ``n``; at least one image of each class
    when ``n`` covers the classes), each class's images a seeded random choice."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / counts.sum()
    take = np.minimum(counts, np.maximum(np.floor(quota).astype(np.int64), 1 if n >= len(classes) else 0))
    while take.sum() < n:  # the largest shortfall first (ties: the first class)
        take[np.argmax(np.where(take < counts, quota - take, -np.inf))] += 1
    while take.sum() > n:  # the minimum of one per class overshot: the largest excess gives one back
        take[np.argmax(np.where(take > 1, take - quota, -np.inf))] -= 1
    picked = [
        np.flatnonzero(labels == c)[rng.permutation(int(m))[:t]] for c, m, t in zip(classes, counts, take, strict=True)
    ]
    return np.sort(np.concatenate(picked))


@torch.no_grad()
def embed(
    backbone: torch.nn.Module,
    images,
    image_size: int,
    device: torch.device,
    fractions: torch.Tensor | None = None,
    batch_size: int = BATCH,
) -> torch.Tensor:
    """The backbone's float32 embeddings of uint8 ``images`` ``(N, C, H, W)`` (an array or an
    ``ImageView``, read batch by batch) on ``device``, each brought to ``image_size`` px as
    evaluation does; ``fractions``: the content extents (``content_fractions``) or None. The
    caller sets the backbone's mode (the monitor: eval)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.asarray(images[start : start + batch_size])).to(device)
        extent = None if fractions is None else fractions[start : start + len(chunk)]
        out.append(backbone(fit_to_size(to_float(chunk), image_size, extent)).float())
    return torch.cat(out)


def knn_loo_top1(features: torch.Tensor, labels: torch.Tensor, k: int, temperature: float = KNN_TEMPERATURE) -> float:
    """Leave-one-out weighted kNN top-1: each row's ``k`` most cosine-similar *other* rows vote for
    their label with weight exp(sim / T); ``labels`` are 0..C-1 (at least two rows)."""
    x = F.normalize(features.float(), dim=1)
    y = labels.to(x.device).long()
    k, classes, correct = min(k, len(x) - 1), int(y.max()) + 1, 0
    for start in range(0, len(x), _KNN_CHUNK):
        sim = x[start : start + _KNN_CHUNK] @ x.t()
        rows = torch.arange(len(sim), device=x.device)
        sim[rows, rows + start] = -math.inf  # not its own neighbour
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), classes, device=x.device)
        votes.scatter_add_(1, y[top_idx], (top_sim / temperature).exp())
        correct += int((votes.argmax(1) == y[start : start + len(sim)]).sum())
    return correct / len(x)


def rankme(features: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023) of an ``(n, d)`` embedding matrix: exp of the entropy of its
    normalised singular values (+ ``eps``). Computed in float64 on the CPU (an n x d matrix, small),
    so it is the same number on any device; an all-zero matrix is rank ~1."""
    s = torch.linalg.svdvals(features.detach().to("cpu", torch.float64))
    p = s / s.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


class _Subset:
    """A fixed set of training images: where they are, read lazily, and their content extents."""

    def __init__(self, dataset: Dataset, index: np.ndarray, device: torch.device):
        self.index = index
        self.images = ImageView(dataset.train_images, index)
        extents = dataset.train_extents
        side = int(dataset.train_images.shape[-1])
        self.fractions = None if extents is None else content_fractions(np.asarray(extents)[index], side, device)

    def __len__(self) -> int:
        return len(self.index)


class OnlineMonitor:
    """kNN top-1 and RankMe of the backbone during pretraining (the module docstring says how).

    ``mon = OnlineMonitor(cfg.monitor, dataset, cfg.seed, device, image_size, method=cfg.pretext.name)``,
    then at the end of epoch ``epoch`` (1-based: epochs done) ``if mon.due(epoch, last): res =
    mon.evaluate(backbone, epoch); mon.check(res, epoch)``; ``mon.history`` (one record per check:
    epoch, knn_top1, rankme, seconds) goes into the pretraining history as ``history["monitor"]``."""

    def __init__(
        self,
        cfg: MonitorConfig,
        dataset: Dataset,
        seed: int,
        device: torch.device | str,
        image_size: int,
        method: str = "pretext",
        logger: logging.Logger | logging.LoggerAdapter = log,
    ):
        self.cfg, self.device, self.image_size = cfg, torch.device(device), int(image_size)
        self.method, self.logger = method, logger
        self.history: list[dict[str, Any]] = []
        labels = np.asarray(dataset.train_labels)
        labelled = np.flatnonzero(labels >= 0)
        knn = np.zeros(0, np.int64)
        if len(labelled) >= 2:  # a leave-one-out vote needs another image
            knn = labelled[stratified_sample(labels[labelled], cfg.knn_samples, np.random.default_rng([seed, 1]))]
        n = len(dataset.train_images)
        ranked = np.sort(np.random.default_rng([seed, 2]).choice(n, size=min(n, cfg.rankme_samples), replace=False))
        self.knn, self.rank = _Subset(dataset, knn, self.device), _Subset(dataset, ranked, self.device)
        # the labels as 0..C-1 (a dataset's class ids need not be contiguous in a subset)
        self.knn_targets = torch.from_numpy(np.unique(labels[knn], return_inverse=True)[1].reshape(-1))
        if cfg.every_epochs and not len(knn):
            logger.info(
                "monitor: dataset %r has %d labelled training image(s); the online kNN check is skipped "
                "(RankMe, which needs no labels, still runs)",
                dataset.name,
                len(labelled),
            )

    def due(self, epoch: int, last: bool = False) -> bool:
        """Whether to check after ``epoch`` (1-based) epochs: every ``every_epochs``, and after the
        last one (``last``); never with ``every_epochs: 0``."""
        every = self.cfg.every_epochs
        return every > 0 and (last or epoch % every == 0)

    def evaluate(self, backbone: torch.nn.Module, epoch: int) -> dict[str, float]:
        """``{"knn_top1": ..., "rankme": ...}`` of ``backbone`` now (``knn_top1`` absent when the
        dataset has no labelled training images), recorded in :attr:`history` with the seconds it
        took. Eval mode and no autograd; every submodule's train/eval mode is restored afterwards.
        A record of this epoch or a later one (a rolled-back trajectory) is replaced."""
        t0 = time.perf_counter()
        modes = [(m, m.training) for m in backbone.modules()]
        backbone.eval()
        try:
            result = self._measure(backbone)
        finally:
            for module, training in modes:
                module.training = training
        seconds = time.perf_counter() - t0
        record = {"epoch": int(epoch), "knn_top1": result.get("knn_top1"), "rankme": result["rankme"]}
        record = {k: (v if v is None or math.isfinite(v) else None) for k, v in record.items()}  # JSON: no NaN
        self.history = [r for r in self.history if r["epoch"] < epoch] + [{**record, "seconds": seconds}]
        knn = result.get("knn_top1")
        self.logger.info(
            "monitor: epoch %d kNN top-1 %s, RankMe %.2f (%.2fs)",
            epoch,
            "n/a" if knn is None else f"{knn:.4f}",
            result["rankme"],
            seconds,
        )
        return result

    def _measure(self, backbone: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        if len(self.knn):
            feats = embed(backbone, self.knn.images, self.image_size, self.device, self.knn.fractions)
            out["knn_top1"] = (
                knn_loo_top1(feats, self.knn_targets, self.cfg.knn_k) if feats.isfinite().all() else math.nan
            )
        feats = embed(backbone, self.rank.images, self.image_size, self.device, self.rank.fractions)
        out["rankme"] = rankme(feats) if feats.isfinite().all() else math.nan
        return out

    def check(self, result: dict[str, float], epoch: int) -> None:
        """Raise :class:`CollapseError` when ``monitor.stop_on_collapse`` is on and RankMe has been
        below ``monitor.collapse_rank`` for ``monitor.collapse_patience`` consecutive checks, this
        one included; with it off, a collapsing run is only warned about."""
        cfg, rank = self.cfg, result.get("rankme")
        if rank is None or not rank < cfg.collapse_rank:
            return
        records = self.history if self.history and self.history[-1]["epoch"] == epoch else [*self.history, result]
        streak = 0
        for r in reversed(records):
            if r.get("rankme") is None or not r["rankme"] < cfg.collapse_rank:
                break
            streak += 1
        where = (
            f"{self.method}: the representation is collapsing: RankMe {rank:.3f} is below "
            f"monitor.collapse_rank {cfg.collapse_rank:g} (at epoch {epoch}, {streak} consecutive check(s))"
        )
        if not cfg.stop_on_collapse:
            self.logger.warning("monitor: %s; monitor.stop_on_collapse: true would stop the run", where)
            return
        if streak >= cfg.collapse_patience:
            raise CollapseError(
                f"{where}, monitor.collapse_patience is {cfg.collapse_patience}. Pretraining stopped. "
                f"Lower train.lr, use stronger augmentation (pretext.params), try a different pretext "
                f"method, or set monitor.stop_on_collapse: false to train on regardless."
            )
