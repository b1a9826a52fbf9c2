"""Judging frozen features with labels: a linear probe and a kNN classifier, on the SSL backbone
and on two baselines (the same architecture at its random initialisation, and raw pixels).

Linear probe: standardised features (train statistics), multinomial logistic regression fitted by
full-batch L-BFGS; the L2 weight decay is chosen on a held-out split of the *training* labels,
then the probe is refitted on all training labels and scored once on the test split.
kNN: cosine similarity, the k nearest training points vote with weight exp(sim / T)
(Wu et al. 2018; k=200, T=0.07 by default, as lightly and solo-learn report).
Label efficiency: the same probes on class-stratified, nested subsets of the training labels
(1%, 10%, 100% by default), each beside the random-init and raw-pixel baselines and the networks
trained on the same subset (``core.evaluation.trained``: supervised from scratch, and as configured
fine-tuning, LP-FT and FixMatch from SSL and from scratch, lr and epochs cross-validated on the
subset with ``probe.tuning``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pretextflow.core.config import ProbeConfig, RunConfig, in_fractions
from pretextflow.core.data.dataset import Dataset
from pretextflow.core.data.shards import ImageView
from pretextflow.core.evaluation.features import cached_features, pixel_features
from pretextflow.core.evaluation.metrics import (
    FINETUNE,
    FIXMATCH_SCRATCH,
    FIXMATCH_SSL,
    KNN_TOP1,
    LINEAR_TOP1,
    LINEAR_TOP5,
    LPFT,
    OPTIONAL_COLUMNS,
    PIXELS_LINEAR,
    RANDOM_INIT_LINEAR,
    SSL_KNN,
    SSL_LINEAR,
    SUPERVISED,
    check_metrics,
    linear_column,
)
from pretextflow.core.evaluation.trained import SubsetTrainer
from pretextflow.core.keys import code_digest, stage_key
from pretextflow.core.registry.registry import Registry
from pretextflow.core.security import credentials
from pretextflow.core.security.redaction import redact
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.events import EventBus, progress_callback
from pretextflow.core.training.freeze import load_frozen_backbone
from pretextflow.core.training.model import build_backbone, configure_runtime, input_size, select_device
from pretextflow.core.training.weights import weights_sha256

STAGE = "probe"
log = logging.getLogger("pretextflow.probe")


def label_subsets(labels: np.ndarray, fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """Class-stratified, nested subsets of the labelled training indices: every class contributes
    ``round(fraction * its size)`` images (at least one), taken as a prefix of one seeded
    permutation per class, so the 1% subset is inside the 10% subset, which is inside 100%."""
    rng = np.random.default_rng(seed)
    order = [idx[rng.permutation(len(idx))] for idx in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return {
        f: np.sort(np.concatenate([idx[: max(1, int(round(f * len(idx))))] for idx in order]))
        for f in sorted(fractions)
    }


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


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised multinomial logistic regression on ``x``'s device; ``init`` warm-starts from a
    nearby solution."""
    zeros = (torch.zeros(x.shape[1], num_classes, device=x.device), torch.zeros(num_classes, device=x.device))
    w0, b0 = init if init is not None else zeros
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

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


@dataclass
class LinearHead:
    """A fitted linear probe: logits = ((x - mean) / std) @ w + b, and how its weight decay was chosen."""

    mean: np.ndarray
    std: np.ndarray
    w: torch.Tensor  # (features, classes)
    b: torch.Tensor  # (classes,)
    weight_decay: float
    val_top1: dict[float, float]

    def as_linear(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight (classes, features), bias) of the same map on raw features: the standardisation
        folded in, for a ``torch.nn.Linear`` over the backbone (LP-FT's starting head)."""
        w = self.w.detach().cpu().double().numpy() / self.std[:, None]
        b = self.b.detach().cpu().double().numpy() - self.mean @ w
        return w.T.astype(np.float32), b.astype(np.float32)


def fit_linear_head(
    train_x: np.ndarray, train_y: np.ndarray, num_classes: int, cfg: ProbeConfig, seed: int, device="cpu"
) -> LinearHead:
    """The linear probe's fit: standardised features (train statistics), the L2 weight decay chosen
    on a held-out ``cfg.val_fraction`` of these labels, then refitted on all of them."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr = torch.from_numpy((train_x - mean) / std).float().to(device)
    ytr = torch.from_numpy(train_y).long().to(device)
    fit_idx, val_idx = stratified_split(train_y, cfg.val_fraction, seed)
    val_acc, solutions, init = {}, {}, None
    # strongest regularisation first: each solution warm-starts the next, weaker one
    for wd in sorted(cfg.linear_weight_decays, reverse=True):
        init = solutions[wd] = fit_logistic(xtr[fit_idx], ytr[fit_idx], num_classes, wd, cfg.linear_max_iter, init)
        val_acc[wd] = topk_accuracy(xtr[val_idx] @ init[0] + init[1], ytr[val_idx], 1) if len(val_idx) else 0.0
    best = max(cfg.linear_weight_decays, key=lambda wd: (val_acc[wd], wd))  # ties: stronger regularisation
    w, b = fit_logistic(xtr, ytr, num_classes, best, cfg.linear_max_iter, solutions[best])
    return LinearHead(mean, std, w, b, best, val_acc)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    cfg: ProbeConfig,
    seed: int,
    keep_predictions: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    head = fit_linear_head(train_x, train_y, num_classes, cfg, seed, device)
    xte = torch.from_numpy((test_x - head.mean) / head.std).float().to(device)
    yte = torch.from_numpy(test_y).long().to(device)
    logits = xte @ head.w + head.b
    result = {
        "top1": topk_accuracy(logits, yte, 1),
        "weight_decay": head.weight_decay,
        "val_top1": {str(k): v for k, v in head.val_top1.items()},
    }
    if num_classes > 5:
        result["top5"] = topk_accuracy(logits, yte, 5)
    if keep_predictions:
        result["predictions"] = logits.argmax(1).cpu().numpy()
    return result


def knn_classify(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    ks: list[int] | int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
    device: torch.device | str = "cpu",
) -> dict[int, np.ndarray]:
    """Predictions for every k in ``ks`` from one similarity pass (top-k is sorted, so smaller k
    reuse the largest k's neighbours)."""
    ks = [ks] if isinstance(ks, int) else list(ks)
    tr = F.normalize(torch.from_numpy(np.ascontiguousarray(train_x)).float().to(device), dim=1)
    te = F.normalize(torch.from_numpy(np.ascontiguousarray(test_x)).float().to(device), dim=1)
    ytr = torch.from_numpy(np.array(train_y)).long().to(device)
    kmax = min(max(ks), len(tr))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(te), chunk):
        top_sim, top_idx = (te[start : start + chunk] @ tr.t()).topk(kmax, dim=1)
        weights, labels = (top_sim / temperature).exp(), ytr[top_idx]
        for k in ks:
            kk = min(k, kmax)
            votes = torch.zeros(len(top_sim), num_classes, device=tr.device)
            votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
            preds[k].append(votes.argmax(1))
    return {k: torch.cat(v).cpu().numpy() for k, v in preds.items()}


def knn_probe(train_x, train_y, test_x, test_y, num_classes: int, cfg: ProbeConfig, device="cpu") -> dict[str, Any]:
    preds = knn_classify(train_x, train_y, test_x, cfg.knn_k, cfg.knn_temperature, num_classes, device=device)
    return {
        f"k{k}": {
            "top1": float((preds[k] == test_y).mean()),
            "k": min(k, len(train_x)),
            "temperature": cfg.knn_temperature,
        }
        for k in cfg.knn_k
    }


def evaluate_features(
    name: str,
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes: int,
    cfg: ProbeConfig,
    seed: int,
    logger,
    keep_predictions: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    t = time.perf_counter()
    linear = linear_probe(train_x, train_y, test_x, test_y, num_classes, cfg, seed, keep_predictions, device)
    knn = knn_probe(train_x, train_y, test_x, test_y, num_classes, cfg, device)
    first_k = f"k{cfg.knn_k[0]}"
    logger.info(
        "probe %s: linear top-1 %.4f (wd %g), kNN(%s) top-1 %.4f [%.1fs]",
        name,
        linear["top1"],
        linear["weight_decay"],
        first_k,
        knn[first_k]["top1"],
        time.perf_counter() - t,
    )
    return {"linear": linear, "knn": knn, "num_features": int(train_x.shape[1])}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _labelled(dataset: Dataset) -> tuple[ImageView, np.ndarray, ImageView, np.ndarray]:
    """The labelled train and test images with their labels (unlabelled images, label -1, are
    left out); a :class:`DataError` when either split has none. The images are views: read batch by
    batch by whoever uses them, never copied into memory all at once."""
    tr_mask, te_mask = dataset.train_labels >= 0, dataset.test_labels >= 0
    if not tr_mask.any() or not te_mask.any():
        from pretextflow.core.errors import DataError

        raise DataError(
            f"dataset {dataset.name!r} has no labelled {'train' if not tr_mask.any() else 'test'} "
            f"images; probing needs labels (pretraining does not)."
        )
    xtr_img, ytr = ImageView(dataset.train_images, np.flatnonzero(tr_mask)), np.asarray(dataset.train_labels[tr_mask])
    xte_img, yte = ImageView(dataset.test_images, np.flatnonzero(te_mask)), np.asarray(dataset.test_labels[te_mask])
    return xtr_img, ytr, xte_img, yte


def _labelled_extents(dataset: Dataset) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The content extents ((h, w) px, centred) of the labelled train and test images, where the
    dataset has them (``Dataset.train_extents`` / ``test_extents``; None: the images fill their canvas)."""
    out = []
    for split in ("train", "test"):
        extents = getattr(dataset, f"{split}_extents")
        labels = dataset.train_labels if split == "train" else dataset.test_labels
        out.append(None if extents is None else np.asarray(extents)[labels >= 0])
    return out[0], out[1]


@dataclass
class _ProbeRun:
    """The state the steps of one probe stage share: its inputs, the labelled images and the
    seconds each step took (``timings``, written to the metrics as ``seconds``). One method per
    step, called in order by :func:`probe`: features, all labels, label efficiency, metrics."""

    cfg: RunConfig
    dataset: Dataset
    store: ArtifactStore
    registry: Registry
    freeze_key: str
    logger: logging.Logger | logging.LoggerAdapter
    xtr_img: ImageView
    ytr: np.ndarray
    xte_img: ImageView
    yte: np.ndarray
    k: int  # the number of classes
    device: torch.device = torch.device("cpu")  # probe.device: features, probes and supervised runs
    timings: dict[str, float] = field(default_factory=dict)
    extents: tuple[np.ndarray | None, np.ndarray | None] = (None, None)  # train, test: (h, w) px of the content
    events: EventBus = field(default_factory=EventBus)  # progress of each step (features, probes, runs)

    @classmethod
    def start(cls, cfg, dataset, store, registry, freeze_key, logger, device) -> _ProbeRun:
        labelled = _labelled(dataset)
        return cls(
            cfg,
            dataset,
            store,
            registry,
            freeze_key,
            logger,
            *labelled,
            dataset.num_classes,
            device,
            extents=_labelled_extents(dataset),
        )

    @property
    def first_k(self) -> str:
        return f"k{self.cfg.probe.knn_k[0]}"

    # -- features: once per (frozen backbone, dataset version), kept in the store ----------------
    def features(self) -> tuple[dict[str, str], dict[str, dict[str, np.ndarray]]]:
        """The features' store keys, and the features of the SSL backbone and of the baselines
        (``{name: {"train": ..., "test": ...}}``)."""
        cfg, pc, store = self.cfg, self.cfg.probe, self.store
        splits = {"train": self.xtr_img, "test": self.xte_img}
        extents = {"train": self.extents[0], "test": self.extents[1]}
        t = time.perf_counter()
        from pretextflow.core.evaluation import features as features_module

        code = code_digest(features_module)
        feature_keys = {
            "ssl": stage_key("features", {"freeze": self.freeze_key, "data": self.dataset.fingerprint, "code": code})
        }
        feats = {
            "ssl": cached_features(
                store,
                feature_keys["ssl"],
                lambda: load_frozen_backbone(store, self.freeze_key, self.registry),
                splits,
                pc.batch_size,
                self.logger,
                self.device,
                extents,
                progress_callback(self.events, STAGE, "images", "features ssl"),
            )
        }
        self.timings["features_ssl"] = time.perf_counter() - t
        if "random_init" in pc.baselines:
            feature_keys["random_init"] = self._random_init_key(code)
            feats["random_init"] = cached_features(
                store,
                feature_keys["random_init"],
                lambda: (
                    build_backbone(cfg, self.dataset.meta, self.registry, seed=cfg.seed).eval().requires_grad_(False)
                ),
                splits,
                pc.batch_size,
                self.logger,
                self.device,
                extents,
                progress_callback(self.events, STAGE, "images", "features random_init"),
            )
        if "pixels" in pc.baselines:
            feats["pixels"] = {"train": pixel_features(self.xtr_img), "test": pixel_features(self.xte_img)}
        self.timings["features"] = time.perf_counter() - t  # all three feature sets
        return feature_keys, feats

    def _random_init_key(self, code: str) -> str:
        """The store key of the random-init baseline's features: the architecture at ``cfg.seed``."""
        cfg, registry = self.cfg, self.registry
        return stage_key(
            "features",
            {
                "random_init": cfg.backbone.model_dump(mode="json"),
                "image_size": input_size(cfg, self.dataset.meta),  # train.image_size: the size it is built for
                "weights": weights_sha256(cfg.backbone.weights),
                "seed": cfg.seed,
                "data": self.dataset.fingerprint,
                "backbone_version": registry.describe("backbone", cfg.backbone.name).version,
                "code": code,
                "backbone_code": code_digest(registry.backbone(cfg.backbone.name).build),
            },
        )

    # -- all training labels: the main table --------------------------------------------------
    def all_labels(self, feats: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, Any], np.ndarray]:
        """Linear probe and kNN of every feature set on all training labels, and the confusion
        matrix of the SSL linear probe on the test split."""
        results = {}
        progress = progress_callback(self.events, STAGE, "feature sets", "probes")
        for i, (name, f) in enumerate(feats.items()):
            if progress is not None:
                progress(i, len(feats))
            t = time.perf_counter()
            results[name] = evaluate_features(
                name,
                f["train"],
                self.ytr,
                f["test"],
                self.yte,
                self.k,
                self.cfg.probe,
                self.cfg.seed,
                self.logger,
                keep_predictions=name == "ssl",
                device=self.device,
            )
            self.timings[name] = time.perf_counter() - t
        if progress is not None:
            progress(len(feats), len(feats))
        predictions = results["ssl"]["linear"].pop("predictions")
        return results, confusion_matrix(self.yte, predictions, self.k)

    # -- label efficiency: the same probes on nested, class-stratified subsets -------------------
    def label_efficiency(self, feats: dict[str, dict[str, np.ndarray]], results: dict[str, Any]) -> list[dict]:
        """One row per label fraction: the probes, the supervised baseline and fine-tuning on the
        fraction's subsets (``probe.label_seeds`` draws of it; one for 100%), as mean and std."""
        pc = self.cfg.probe
        t = time.perf_counter()
        draws = [label_subsets(self.ytr, pc.label_fractions, self.cfg.seed + s) for s in range(pc.label_seeds)]
        labelled = (self.xtr_img, self.ytr, self.xte_img, self.yte)
        trainer = SubsetTrainer(
            self.cfg, self.dataset, self.store, self.registry, self.freeze_key, labelled, self.logger
        )
        trainer.device, trainer.extents, trainer.events = self.device, self.extents, self.events
        trainer.ssl_features = feats["ssl"]["train"]
        efficiency = []
        progress = progress_callback(self.events, STAGE, "subsets", "label efficiency")
        subsets, done = sum(1 if f >= 1 else pc.label_seeds for f in pc.label_fractions), 0
        for fraction in pc.label_fractions:
            seeds = range(1) if fraction >= 1 else range(pc.label_seeds)  # 100% is one subset, whatever the seed
            acc: dict[str, list[float]] = {}
            runs: dict[str, list[dict]] = {kind: [] for kind in TRAINED}
            for s in seeds:
                if progress is not None:
                    progress(done, subsets)
                idx = draws[s][fraction]
                self._probe_subset(feats, results, fraction, s, idx, acc)
                self._train_subset(trainer, fraction, s, idx, acc, runs)
                done += 1
            row = self._efficiency_row(fraction, int(len(draws[0][fraction])), len(seeds), acc, runs)
            efficiency.append(row)
            self.logger.info(
                "label efficiency %g (%d labels): SSL linear %.4f, supervised %s",
                fraction,
                row["num_labels"],
                row[SSL_LINEAR.key],
                f"{row[SUPERVISED.key]:.4f}" if row.get(SUPERVISED.key) is not None else "-",
            )
        if progress is not None:
            progress(done, subsets)
        self.timings["label_efficiency"] = time.perf_counter() - t
        return efficiency

    def _probe_subset(self, feats, results, fraction: float, s: int, idx: np.ndarray, acc) -> None:
        """The linear probe of every feature set (and the SSL kNN) on one subset; appends the top-1
        accuracies to ``acc``. All labels reuse the main table's results."""
        pc, ytr, yte, k = self.cfg.probe, self.ytr, self.yte, self.k
        for name, f in feats.items():
            t_probe = time.perf_counter()
            if fraction >= 1:
                r = results[name]
            else:
                r = {
                    "linear": linear_probe(
                        f["train"][idx], ytr[idx], f["test"], yte, k, pc, self.cfg.seed + s, device=self.device
                    )
                }
                if name == "ssl":
                    r["knn"] = knn_probe(f["train"][idx], ytr[idx], f["test"], yte, k, pc, self.device)
            part = "subsets_ssl" if name == "ssl" else "subsets_baselines"
            self.timings[part] = self.timings.get(part, 0.0) + time.perf_counter() - t_probe
            acc.setdefault(linear_column(name), []).append(r["linear"]["top1"])
            if name == "ssl":
                for kk, v in r["knn"].items():
                    acc.setdefault(f"ssl_knn_{kk}", []).append(v["top1"])

    def _train_subset(self, trainer: SubsetTrainer, fraction: float, s: int, idx: np.ndarray, acc, runs) -> None:
        """The networks trained on one subset (those configured: ``trained_kinds``); appends each
        run to ``runs`` and its top-1 accuracy to ``acc``."""
        for kind in trained_kinds(self.cfg.probe, fraction):
            t_sup = time.perf_counter()
            runs[kind].append(trainer.run(kind, fraction, self.cfg.seed + s, idx))
            self.timings[kind] = self.timings.get(kind, 0.0) + time.perf_counter() - t_sup
            acc.setdefault(TRAINED[kind].key, []).append(runs[kind][-1]["top1"])

    def _efficiency_row(self, fraction: float, num_labels: int, seeds: int, acc, runs) -> dict[str, Any]:
        """One label fraction's row: mean and std over the subset draws of every comparison."""
        pc = self.cfg.probe
        row: dict[str, Any] = {"fraction": fraction, "num_labels": num_labels, "seeds": seeds}
        for column in (SSL_LINEAR, SUPERVISED, RANDOM_INIT_LINEAR, PIXELS_LINEAR, *TRAINED.values()):
            mean, std = _mean_std(acc.get(column.key, []))
            if mean is not None or column not in OPTIONAL_COLUMNS:
                row[column.key], row[column.key + "_std"] = mean, std
        row[SSL_KNN.key], row[SSL_KNN.key + "_std"] = _mean_std(acc[f"ssl_knn_{self.first_k}"])
        row["knn"] = {
            "k": pc.knn_k[0],
            "temperature": pc.knn_temperature,
            "top1_by_k": {str(kk): _mean_std(acc[f"ssl_knn_k{kk}"])[0] for kk in pc.knn_k},
        }
        for kind, rs in runs.items():
            if rs:
                row[kind] = {
                    "steps": rs[0]["steps"],
                    "epochs": rs[0]["epochs"],
                    "lr": rs[0]["lr"],
                    "train_top1": _mean_std([r["train_top1"] for r in rs])[0],
                    "seconds": float(sum(r["seconds"] for r in rs)),
                    **({"tuning": rs[0]["tuning"]} if rs[0].get("tuning") else {}),
                    **({"mask_rate": rs[0]["mask_rate"]} if "mask_rate" in rs[0] else {}),
                }
        return row

    # -- the metrics: the stage's one artifact ----------------------------------------------------
    def metrics(self, feature_keys, results, cm: np.ndarray, efficiency: list[dict]) -> dict[str, Any]:
        """The stage's ``metrics.json``: the main table, how the probes were run, label efficiency,
        the per-class view of the SSL linear probe, and the seconds each step took."""
        pc, first_k = self.cfg.probe, self.first_k
        metrics = {
            LINEAR_TOP1: results["ssl"]["linear"]["top1"],
            KNN_TOP1: results["ssl"]["knn"][first_k]["top1"],
            "baselines": {
                name: {LINEAR_TOP1: r["linear"]["top1"], KNN_TOP1: r["knn"][first_k]["top1"]}
                for name, r in results.items()
                if name != "ssl"
            },
            "knn": {
                "k": pc.knn_k[0],
                "temperature": pc.knn_temperature,
                "similarity": "cosine",
                "weighting": "exp(sim/T)",
                "features": "L2-normalised",
            },
            "linear": {
                "standardised": True,
                "solver": "L-BFGS",
                "weight_decay_grid": pc.linear_weight_decays,
                "chosen_on": f"{pc.val_fraction:.0%} of the training labels",
            },
            "label_efficiency": efficiency,
            "supervised_recipe": pc.supervised.model_dump(mode="json") if "supervised" in pc.baselines else None,
            "confusion_matrix": cm.tolist(),
            "per_class_top1": (np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist(),
            "class_names": list(self.dataset.meta.get("class_names") or range(self.k)),
            "feature_keys": feature_keys,
            "num_train": int(len(self.ytr)),
            "num_test": int(len(self.yte)),
            "detail": results,
            "seconds": self.timings,
        }
        if self.cfg.backbone.weights:  # the "random init" baseline is these weights, untrained by SSL
            metrics["initial_weights"] = {
                "uri": redact(credentials.for_record(self.cfg.backbone.weights)),
                "sha256": weights_sha256(self.cfg.backbone.weights),
            }
        if "top5" in results["ssl"]["linear"]:
            metrics[LINEAR_TOP5] = results["ssl"]["linear"]["top5"]
        return metrics


TRAINED = {
    "supervised": SUPERVISED,
    "finetune": FINETUNE,
    "lpft": LPFT,
    "fixmatch_ssl": FIXMATCH_SSL,
    "fixmatch_scratch": FIXMATCH_SCRATCH,
}
"""The label-efficiency column of each network trained on the labelled subset (``trained.KINDS``)."""


def trained_kinds(pc: ProbeConfig, fraction: float) -> list[str]:
    """The networks trained on a subset of ``fraction`` of the labels, as ``probe`` configures them
    (``probe.lpft_fractions`` / ``probe.semisupervised_fractions`` restrict those two). FixMatch runs
    below 100% only: with every label there is no unlabelled image left."""
    kinds = ["supervised"] if "supervised" in pc.baselines else []
    kinds += ["finetune"] if pc.finetune else []
    kinds += ["lpft"] if pc.lpft and _at(fraction, pc.lpft_fractions) else []
    fixmatch = pc.semisupervised and fraction < 1 and _at(fraction, pc.semisupervised_fractions)
    kinds += ["fixmatch_ssl", "fixmatch_scratch"] if fixmatch else []
    return kinds


def _at(fraction: float, chosen: list[float] | None) -> bool:
    """Whether a protocol restricted to ``chosen`` fractions (None: every one) runs at ``fraction``."""
    return chosen is None or in_fractions(fraction, chosen)


def probe(
    cfg: RunConfig,
    dataset: Dataset,
    store: ArtifactStore,
    freeze_key: str,
    key: str,
    registry: Registry,
    logger: logging.Logger | logging.LoggerAdapter = log,
    events: EventBus | None = None,
) -> dict[str, Any]:
    """Run every probe; writes ``probe/<key>/metrics.json`` and returns the metrics. ``events``: where
    the progress of its features, probes and supervised runs goes."""
    if store.is_complete(STAGE, key):
        logger.info("probe %s: complete artifact found", key)
        return store.read_json(STAGE, key, "metrics.json")
    device = select_device(cfg.probe.device, "probe.device")
    configure_runtime(cfg.seed, device, cfg.train.threads)  # also when run alone, in a new process
    logger.info("probe %s: features, probes and supervised runs on %s", key, device)
    run = _ProbeRun.start(cfg, dataset, store, registry, freeze_key, logger, device)
    run.events = events if events is not None else EventBus()
    feature_keys, feats = run.features()
    results, cm = run.all_labels(feats)
    efficiency = run.label_efficiency(feats, results)
    metrics = check_metrics(run.metrics(feature_keys, results, cm, efficiency), f"probe/{key}/metrics.json")
    store.write_json(metrics, STAGE, key, "metrics.json")
    store.mark_complete(STAGE, key, {"freeze_key": freeze_key})
    return metrics
