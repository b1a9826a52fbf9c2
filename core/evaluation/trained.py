"""Networks trained on a labelled subset, beside the frozen probes: each run cached in the store
under its own key, so an interrupted probe stage does not retrain the subsets it already finished.

Kinds (``KINDS``):

- ``supervised``: the same architecture trained from scratch (``core.evaluation.supervised``);
- ``finetune``: the same recipe from the SSL backbone at ``probe.finetune_lr_scale`` x its lr;
- ``lpft``: linear probe, then fine-tune (Kumar et al. 2022): the head starts as the linear probe
  fitted on the frozen SSL features of the subset (``probe.fit_linear_head``, the standardisation
  folded into the head), then backbone and head train together at ``probe.lpft_recipe.lr_scale`` x
  the recipe's lr;
- ``fixmatch_ssl`` / ``fixmatch_scratch``: FixMatch on the subset plus every training image as the
  unlabelled pool (``core.evaluation.semisupervised``), from the SSL backbone and from random
  initialisation with the same recipe and budget.

With ``probe.tuning`` the ``supervised`` and ``lpft`` runs choose their lr and length by k-fold
cross-validation on the subset's labels (``core.evaluation.tuning``): the same folds, the same grid,
the same number of runs for both. The fold runs see only the subset; the test split is scored once,
by the chosen candidate retrained on the whole subset."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pretextflow.core.config import RunConfig, SupervisedConfig
from pretextflow.core.data.dataset import Dataset
from pretextflow.core.keys import code_digest, stage_key
from pretextflow.core.registry.registry import Registry
from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.events import EventBus, progress_callback
from pretextflow.core.training.freeze import load_frozen_backbone
from pretextflow.core.training.model import input_size

KINDS = ("supervised", "finetune", "lpft", "fixmatch_ssl", "fixmatch_scratch")
FROM_SSL = ("finetune", "lpft", "fixmatch_ssl")
TUNED = ("supervised", "lpft")
STAGE = "probe"
log = logging.getLogger("pretextflow.probe")


class SubsetTrainer:
    """Trains one kind of network on one labelled subset (``run``); see the module docstring."""

    def __init__(
        self,
        cfg: RunConfig,
        dataset: Dataset,
        store: ArtifactStore,
        registry: Registry,
        freeze_key: str,
        labelled: tuple[Any, np.ndarray, Any, np.ndarray],
        logger: logging.Logger | logging.LoggerAdapter = log,
    ):
        self.cfg, self.dataset, self.store, self.registry, self.freeze_key = cfg, dataset, store, registry, freeze_key
        self.xtr, self.ytr, self.xte, self.yte = labelled
        self.logger = logger
        self.extents: tuple[np.ndarray | None, np.ndarray | None] = (None, None)  # set by the probe run
        self.device: Any = "cpu"  # set by the probe run: probe.device
        self.events = EventBus()  # set by the probe run: where each run's progress goes
        self.ssl_features: np.ndarray | None = None  # the SSL features of the labelled train images (LP-FT)
        self._init: dict | None = None
        self.backbone_version = registry.describe("backbone", cfg.backbone.name).version

    # -- the cached entry point ---------------------------------------------------------------
    def run(self, kind: str, fraction: float, subset_seed: int, idx: np.ndarray) -> dict[str, Any]:
        """The ``kind`` run on the subset ``idx`` (indices into the labelled train images), cached."""
        key = self.key(kind, fraction, subset_seed)
        if self.store.is_complete("supervised", key):
            return self.store.read_json("supervised", key, "metrics.json")
        tuning = self._tune(kind, fraction, subset_seed, idx) if self._tuned(kind) else None
        recipe = self.recipe(kind, tuning)
        test = (self.xte, self.yte, self.extents[1])
        label = f"{kind} {fraction * 100:g}%"
        progress = progress_callback(self.events, STAGE, "steps", label)
        result = self.train(kind, idx, subset_seed, recipe, test, label, progress)
        result.update(key=key, tuning=tuning)
        self.store.write_json(result, "supervised", key, "metrics.json")
        self.store.mark_complete("supervised", key, {"kind": kind, "fraction": fraction})
        return result

    def key(self, kind: str, fraction: float, subset_seed: int) -> str:
        cfg, pc = self.cfg, self.cfg.probe
        recipe: dict[str, Any] = {"supervised": pc.supervised.model_dump(mode="json")}
        if kind == "finetune":
            recipe["lr_scale"] = pc.finetune_lr_scale
        if kind == "lpft":
            recipe["lpft"] = pc.lpft_recipe.model_dump(mode="json")
            recipe["linear"] = [pc.linear_weight_decays, pc.linear_max_iter, pc.val_fraction]
        if kind.startswith("fixmatch"):
            recipe = {"fixmatch": pc.semisupervised_recipe.model_dump(mode="json")}
        payload = {
            "kind": kind,
            "data": self.dataset.fingerprint,
            "fraction": fraction,
            "subset_seed": subset_seed,
            "backbone": cfg.backbone.model_dump(mode="json"),
            "image_size": input_size(cfg, self.dataset.meta),  # train.image_size: the size it is built for
            "backbone_version": self.backbone_version,
            "recipe": recipe,
            "tuning": pc.tuning.model_dump(mode="json") if self._tuned(kind) else None,
            "init": self.freeze_key if kind in FROM_SSL else None,
        }
        return stage_key("supervised", {**payload, "code": self._code(kind)})

    def _code(self, kind: str) -> str:
        """The digest of the code a ``kind`` run executes (an edit to FixMatch leaves the supervised runs cached)."""
        from pretextflow.core.evaluation import lpft, semisupervised, supervised, trained, tuning

        modules = [supervised, self.registry.backbone(self.cfg.backbone.name).build]
        modules += [tuning, trained] if self._tuned(kind) else []
        modules += [lpft] if kind == "lpft" else [semisupervised] if kind.startswith("fixmatch") else []
        return code_digest(*modules)

    def _tuned(self, kind: str) -> bool:
        return self.cfg.probe.tuning is not None and kind in TUNED

    # -- the recipe and its search --------------------------------------------------------------
    def lr_scale(self, kind: str) -> float:
        pc = self.cfg.probe
        return {"finetune": pc.finetune_lr_scale, "lpft": pc.lpft_recipe.lr_scale}.get(kind, 1.0)

    def recipe(self, kind: str, tuning: dict[str, Any] | None) -> SupervisedConfig:
        from pretextflow.core.evaluation.tuning import Candidate

        base = self.cfg.probe.supervised
        if tuning is None:
            return base
        return Candidate(tuning["lr_factor"], tuning["epoch_factor"]).recipe(base)

    def _tune(self, kind: str, fraction: float, subset_seed: int, idx: np.ndarray) -> dict[str, Any]:
        """k-fold CV on the subset: each fold trains on the subset's other folds and scores on its own
        (never on the test split); returns the search record (``tuning.search_record``)."""
        from pretextflow.core.evaluation.tuning import cross_validate, search_record

        pc, labels = self.cfg.probe, self.ytr[idx]
        tag = f"{kind} {fraction * 100:g}% CV"

        def fit_score(tr: np.ndarray, va: np.ndarray, cand) -> float:
            val = (self.xtr[idx[va]], labels[va], None if self.extents[0] is None else self.extents[0][idx[va]])
            r = self.train(kind, idx[tr], subset_seed, cand.recipe(pc.supervised), val, tag, None)
            return r["top1"]

        result = cross_validate(labels, pc.tuning, subset_seed, fit_score, self.logger, tag)
        return search_record(result, pc.supervised, self.lr_scale(kind))

    # -- one training run ------------------------------------------------------------------------
    def train(self, kind, idx, seed, recipe, evaluate, tag, progress) -> dict[str, Any]:
        """Train ``kind`` on the labelled images ``idx`` with ``recipe``; score on ``evaluate`` =
        (images, labels, extents): the test split, or a validation fold during tuning."""
        from pretextflow.core.evaluation.lpft import train_lpft
        from pretextflow.core.evaluation.supervised import train_supervised

        common = dict(
            cfg=self.cfg,
            meta=self.dataset.meta,
            registry=self.registry,
            images=self.xtr[idx],
            labels=self.ytr[idx],
            test_images=evaluate[0],
            test_labels=evaluate[1],
            seed=seed,
            logger=self.logger,
            tag=tag,
            device=self.device,
            extents=None if self.extents[0] is None else self.extents[0][idx],
            test_extents=evaluate[2],
            progress=progress,
        )
        init = self.ssl_weights() if kind in FROM_SSL else None
        if kind.startswith("fixmatch"):
            return self._fixmatch(common, init)
        if kind == "lpft":
            return train_lpft(**common, features=self._features(idx), init_weights=init, recipe=recipe)
        return train_supervised(**common, init_weights=init, lr_scale=self.lr_scale(kind), recipe=recipe)

    def _fixmatch(self, common: dict[str, Any], init: dict | None) -> dict[str, Any]:
        from pretextflow.core.evaluation.semisupervised import train_fixmatch

        ds = self.dataset
        return train_fixmatch(
            **common, unlabelled=ds.train_images, unlabelled_extents=ds.train_extents, init_weights=init
        )

    def _features(self, idx: np.ndarray) -> np.ndarray:
        if self.ssl_features is None:
            raise RuntimeError("LP-FT needs the SSL features of the labelled train images (SubsetTrainer.ssl_features)")
        return np.asarray(self.ssl_features[idx])

    def ssl_weights(self) -> dict:
        """The frozen SSL backbone's weights (loaded once per probe stage)."""
        if self._init is None:
            self._init = load_frozen_backbone(self.store, self.freeze_key, self.registry).state_dict()
        return self._init
