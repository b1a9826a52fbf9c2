"""Judging frozen features with labels: a linear probe and a kNN classifier, on the SSL backbone
and on two baselines (the same architecture at its random initialisation, and raw pixels).

Linear probe: standardised features (train statistics), multinomial logistic regression fitted by
full-batch L-BFGS; the L2 weight decay is chosen on a held-out split of the *training* labels,
then the probe is refitted on all training labels and scored once on the test split.
kNN: cosine similarity, the k nearest training points vote with weight exp(sim / T)
(Wu et al. 2018; k=200, T=0.07 by default, as lightly and solo-learn report)."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import ProbeConfig, RunConfig
from .data import Dataset
from .features import extract_features, pixel_features
from .freeze import load_frozen_backbone
from .plugins import Registry
from .store import ArtifactStore
from .train import build_backbone, configure_runtime

STAGE = "probe"
log = logging.getLogger("pretextflow.probe")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held-out): ``fraction`` of each class held out, chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        held.append(idx[: max(1, int(round(fraction * len(idx))))] if len(idx) > 1 else idx[:0])
    held_idx = np.sort(np.concatenate(held))
    fit_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return fit_idx, held_idx


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised multinomial logistic regression; ``init`` warm-starts from a nearby solution."""
    w0, b0 = init if init is not None else (torch.zeros(x.shape[1], num_classes), torch.zeros(num_classes))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()) / len(y)  # exact fraction


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int, cfg: ProbeConfig, seed: int) -> dict[str, Any]:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr = torch.from_numpy((train_x - mean) / std).float()
    xte = torch.from_numpy((test_x - mean) / std).float()
    ytr, yte = torch.from_numpy(train_y).long(), torch.from_numpy(test_y).long()
    fit_idx, val_idx = stratified_split(train_y, cfg.val_fraction, seed)
    val_acc, solutions, init = {}, {}, None
    # strongest regularisation first: each solution warm-starts the next, weaker one
    for wd in sorted(cfg.linear_weight_decays, reverse=True):
        init = solutions[wd] = fit_logistic(xtr[fit_idx], ytr[fit_idx], num_classes, wd, cfg.linear_max_iter, init)
        val_acc[wd] = topk_accuracy(xtr[val_idx] @ init[0] + init[1], ytr[val_idx], 1) if len(val_idx) else 0.0
    best = max(cfg.linear_weight_decays, key=lambda wd: (val_acc[wd], wd))  # ties: stronger regularisation
    w, b = fit_logistic(xtr, ytr, num_classes, best, cfg.linear_max_iter, solutions[best])
    logits = xte @ w + b
    result = {"top1": topk_accuracy(logits, yte, 1), "weight_decay": best,
              "val_top1": {str(k): v for k, v in val_acc.items()}}
    if num_classes > 5:
        result["top5"] = topk_accuracy(logits, yte, 5)
    return result


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, ks: list[int] | int,
                 temperature: float, num_classes: int, chunk: int = 1024) -> dict[int, np.ndarray]:
    """Predictions for every k in ``ks`` from one similarity pass (top-k is sorted, so smaller k
    reuse the largest k's neighbours)."""
    ks = [ks] if isinstance(ks, int) else list(ks)
    tr = F.normalize(torch.from_numpy(np.ascontiguousarray(train_x)).float(), dim=1)
    te = F.normalize(torch.from_numpy(np.ascontiguousarray(test_x)).float(), dim=1)
    ytr = torch.from_numpy(np.array(train_y)).long()
    kmax = min(max(ks), len(tr))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(te), chunk):
        top_sim, top_idx = (te[start:start + chunk] @ tr.t()).topk(kmax, dim=1)
        weights, labels = (top_sim / temperature).exp(), ytr[top_idx]
        for k in ks:
            kk = min(k, kmax)
            votes = torch.zeros(len(top_sim), num_classes).scatter_add_(1, labels[:, :kk], weights[:, :kk])
            preds[k].append(votes.argmax(1))
    return {k: torch.cat(v).numpy() for k, v in preds.items()}


def knn_probe(train_x, train_y, test_x, test_y, num_classes: int, cfg: ProbeConfig) -> dict[str, Any]:
    preds = knn_classify(train_x, train_y, test_x, cfg.knn_k, cfg.knn_temperature, num_classes)
    return {f"k{k}": {"top1": float((preds[k] == test_y).mean()), "k": min(k, len(train_x)),
                      "temperature": cfg.knn_temperature} for k in cfg.knn_k}


def evaluate_features(name: str, train_x, train_y, test_x, test_y, num_classes: int, cfg: ProbeConfig,
                      seed: int, logger) -> dict[str, Any]:
    t = time.perf_counter()
    linear = linear_probe(train_x, train_y, test_x, test_y, num_classes, cfg, seed)
    knn = knn_probe(train_x, train_y, test_x, test_y, num_classes, cfg)
    first_k = f"k{cfg.knn_k[0]}"
    logger.info("probe %s: linear top-1 %.4f (wd %g), kNN(%s) top-1 %.4f [%.1fs]", name, linear["top1"],
                linear["weight_decay"], first_k, knn[first_k]["top1"], time.perf_counter() - t)
    return {"linear": linear, "knn": knn, "num_features": int(train_x.shape[1])}


def probe(cfg: RunConfig, dataset: Dataset, store: ArtifactStore, freeze_key: str, key: str, registry: Registry,
          logger: logging.Logger | logging.LoggerAdapter = log) -> dict[str, Any]:
    """Run every probe; writes ``probe/<key>/metrics.json`` and returns the metrics."""
    if store.is_complete(STAGE, key):
        logger.info("probe %s: complete artifact found", key)
        return store.read_json(STAGE, key, "metrics.json")
    configure_runtime(cfg.seed, torch.device("cpu"), cfg.train.threads)  # also when run alone, in a new process
    pc = cfg.probe
    tr_mask, te_mask = dataset.train_labels >= 0, dataset.test_labels >= 0
    if not tr_mask.any() or not te_mask.any():
        from .errors import DataError

        raise DataError(f"dataset {dataset.name!r} has no labelled {'train' if not tr_mask.any() else 'test'} "
                        f"images; probing needs labels (pretraining does not).")
    xtr_img, ytr = dataset.train_images[tr_mask], np.asarray(dataset.train_labels[tr_mask])
    xte_img, yte = dataset.test_images[te_mask], np.asarray(dataset.test_labels[te_mask])
    k = dataset.num_classes
    timings = {}

    t = time.perf_counter()
    backbone = load_frozen_backbone(store, freeze_key, registry)
    before = {n: p.clone() for n, p in backbone.state_dict().items()}
    ftr, fte = extract_features(backbone, xtr_img, pc.batch_size), extract_features(backbone, xte_img, pc.batch_size)
    timings["features"] = time.perf_counter() - t
    if any(not torch.equal(before[n], p) for n, p in backbone.state_dict().items()):
        raise RuntimeError("the frozen backbone changed during feature extraction")  # a bug, not user error
    results = {"ssl": evaluate_features("ssl", ftr, ytr, fte, yte, k, pc, cfg.seed, logger)}

    if "random_init" in pc.baselines:
        t = time.perf_counter()
        rand = build_backbone(cfg, dataset.meta, registry, seed=cfg.seed).eval().requires_grad_(False)
        rtr, rte = extract_features(rand, xtr_img, pc.batch_size), extract_features(rand, xte_img, pc.batch_size)
        results["random_init"] = evaluate_features("random_init", rtr, ytr, rte, yte, k, pc, cfg.seed, logger)
        timings["random_init"] = time.perf_counter() - t
    if "pixels" in pc.baselines:
        t = time.perf_counter()
        results["pixels"] = evaluate_features("pixels", pixel_features(xtr_img), ytr, pixel_features(xte_img), yte,
                                              k, pc, cfg.seed, logger)
        timings["pixels"] = time.perf_counter() - t

    first_k = f"k{pc.knn_k[0]}"
    metrics = {
        "linear_top1": results["ssl"]["linear"]["top1"],
        "knn_top1": results["ssl"]["knn"][first_k]["top1"],
        "baselines": {name: {"linear_top1": r["linear"]["top1"], "knn_top1": r["knn"][first_k]["top1"]}
                      for name, r in results.items() if name != "ssl"},
        "knn": {"k": pc.knn_k[0], "temperature": pc.knn_temperature, "similarity": "cosine",
                "weighting": "exp(sim/T)", "features": "L2-normalised"},
        "linear": {"standardised": True, "solver": "L-BFGS", "weight_decay_grid": pc.linear_weight_decays,
                   "chosen_on": f"{pc.val_fraction:.0%} of the training labels"},
        "num_train": int(len(ytr)),
        "num_test": int(len(yte)),
        "detail": results,
        "seconds": timings,
    }
    if "top5" in results["ssl"]["linear"]:
        metrics["linear_top5"] = results["ssl"]["linear"]["top5"]
    store.write_json(metrics, STAGE, key, "metrics.json")
    store.mark_complete(STAGE, key, {"freeze_key": freeze_key})
    return metrics
