"""Choosing a trained network's learning rate and length by stratified k-fold cross-validation on
a labelled subset's own labels (``probe.tuning``). Nothing here sees a test split: the caller
gives the subset's labels and a ``fit_score(train_idx, val_idx, candidate)`` that trains on one part
of the subset and scores on the other, both as indices into the subset.

A candidate is a pair of factors (lr, epochs) applied to a recipe: the lr is multiplied, and the
epochs and ``min_steps`` (the small-subset floor on updates) are scaled alike, so the candidate's
schedule follows the same rule on a fold as on the whole subset. The best mean validation top-1
wins; ties go to the smaller lr, then the shorter schedule (the cheaper, more regularised choice)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pretextflow.core.config import SupervisedConfig, TuningConfig

log = logging.getLogger("pretextflow.tuning")


@dataclass(frozen=True)
class Candidate:
    lr_factor: float
    epoch_factor: float

    def recipe(self, base: SupervisedConfig) -> SupervisedConfig:
        """``base`` with this candidate's lr and length."""
        return base.model_copy(
            update={
                "lr": base.lr * self.lr_factor,
                "epochs": max(1, round(base.epochs * self.epoch_factor)),
                "min_steps": int(round(base.min_steps * self.epoch_factor)),
            }
        )

    def record(self) -> dict[str, float]:
        return {"lr_factor": self.lr_factor, "epoch_factor": self.epoch_factor}


DEFAULT = Candidate(1.0, 1.0)


def candidates(tc: TuningConfig) -> list[Candidate]:
    return [Candidate(lr, ep) for lr in tc.lr_factors for ep in tc.epoch_factors]


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs: every class's images dealt round-robin, in a seeded
    order, to the k validation folds (so each fold holds ~1/k of every class)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        fold_of[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % k
    every = np.arange(len(labels))
    return [(every[fold_of != f], every[fold_of == f]) for f in range(k)]


def folds_for(labels: np.ndarray, tc: TuningConfig) -> tuple[int, str | None]:
    """The number of folds this subset allows (at most one per image of its rarest class), and why
    it is not tuned when it is not (None: it is)."""
    if len(labels) > tc.max_labels:
        return 0, f"{len(labels)} labels > probe.tuning.max_labels ({tc.max_labels}): the recipe's values"
    rarest = int(np.unique(labels, return_counts=True)[1].min()) if len(labels) else 0
    k = min(tc.folds, rarest)
    if k < 2:
        return 0, f"its rarest class has {rarest} label(s): too few for 2 folds, the recipe's values"
    return k, None


def cross_validate(
    labels: np.ndarray,
    tc: TuningConfig,
    seed: int,
    fit_score: Callable[[np.ndarray, np.ndarray, Candidate], float],
    logger: logging.Logger | logging.LoggerAdapter = log,
    tag: str = "",
) -> dict[str, Any]:
    """Score every candidate on every fold; return the choice and the record of the search:
    ``{"chosen": Candidate, "folds": k, "grid": [...], "runs": n}`` (``"skipped"``: why not, when the
    subset is too small or too large to tune; then ``chosen`` is the recipe's own values)."""
    k, why = folds_for(labels, tc)
    if why is not None:
        logger.info("%s: not tuned (%s)", tag, why)
        return {"chosen": DEFAULT, "folds": 0, "grid": [], "runs": 0, "skipped": why}
    folds = stratified_folds(labels, k, seed)
    grid = []
    for cand in candidates(tc):
        scores = [fit_score(tr, va, cand) for tr, va in folds]
        grid.append({**cand.record(), "val_top1": float(np.mean(scores)), "per_fold": [float(x) for x in scores]})
        logger.info(
            "%s: lr x%g, epochs x%g: val top-1 %.4f (%d folds)", tag, *cand.record().values(), grid[-1]["val_top1"], k
        )
    best = max(grid, key=lambda g: (g["val_top1"], -g["lr_factor"], -g["epoch_factor"]))
    chosen = Candidate(best["lr_factor"], best["epoch_factor"])
    return {"chosen": chosen, "folds": k, "grid": grid, "runs": len(grid) * k, "val_top1": best["val_top1"]}


def search_record(result: dict[str, Any], base: SupervisedConfig, lr_scale: float) -> dict[str, Any]:
    """What the report and metrics.json keep of a search: the chosen factors and the values they give."""
    chosen: Candidate = result["chosen"]
    recipe = chosen.recipe(base)
    return {
        **chosen.record(),
        "lr": recipe.lr * lr_scale,
        "epochs": recipe.epochs,
        "min_steps": recipe.min_steps,
        "folds": result["folds"],
        "runs": result["runs"],
        "val_top1": result.get("val_top1"),
        "grid": result["grid"],
        **({"skipped": result["skipped"]} if "skipped" in result else {}),
    }
