"""Issue 18, first part: LP-FT, and lr / epochs chosen by k-fold cross-validation on the labelled
subset only, for LP-FT and the supervised baseline alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretextflow.core.config import SupervisedConfig, TuningConfig
from pretextflow.core.evaluation.tuning import Candidate, cross_validate, folds_for, stratified_folds
from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe

from .conftest import REPO

TUNING = "probe.tuning={folds: 3, lr_factors: [0.3, 1.0, 3.0], epoch_factors: [1.0]}"
FAST = ["probe.supervised.min_steps=20", "probe.supervised.epochs=1", "probe.label_fractions=[0.01, 0.1, 1.0]"]


def test_stratified_folds_partition_every_class_evenly():
    y = np.repeat(np.arange(4), [10, 7, 5, 3])
    folds = stratified_folds(y, 3, seed=0)
    vals = np.concatenate([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(len(y)))  # every image validates exactly once
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
        counts = np.bincount(y[va], minlength=4)
        assert all(abs(c - n / 3) < 1 for c, n in zip(counts, [10, 7, 5, 3], strict=True))  # ~1/3 of every class
    again = stratified_folds(y, 3, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, stratified_folds(y, 3, seed=1), strict=True))


def test_subsets_too_small_or_too_large_keep_the_recipe():
    tc = TuningConfig(folds=5, max_labels=100)
    assert folds_for(np.repeat(np.arange(10), 6), tc) == (5, None)
    assert folds_for(np.repeat(np.arange(10), 3), tc) == (3, None)  # at most one fold per image of the rarest class
    k, why = folds_for(np.array([0, 0, 1, 2, 2]), tc)
    assert k == 0 and "rarest class has 1 label" in why
    k, why = folds_for(np.repeat(np.arange(10), 11), tc)
    assert k == 0 and "max_labels" in why
    result = cross_validate(np.array([0, 1]), tc, 0, lambda *a: pytest.fail("trained"))
    assert result["chosen"] == Candidate(1.0, 1.0) and result["runs"] == 0 and "skipped" in result


def test_cross_validation_picks_the_best_mean_and_ties_go_to_the_cheaper():
    tc = TuningConfig(folds=2, lr_factors=[0.3, 1.0, 3.0], epoch_factors=[0.5, 1.0])
    y = np.repeat(np.arange(2), 4)
    seen = []

    def score(tr, va, cand):
        seen.append((cand, tuple(va)))
        assert not set(tr) & set(va)
        return {0.3: 0.5, 1.0: 0.9, 3.0: 0.9}[cand.lr_factor] + 0.01 * cand.epoch_factor

    result = cross_validate(y, tc, 0, score)
    assert result["chosen"] == Candidate(1.0, 1.0)  # 1.0 and 3.0 tie: the smaller lr
    assert result["runs"] == 12 == len(seen) and result["folds"] == 2
    assert {g["lr_factor"] for g in result["grid"]} == {0.3, 1.0, 3.0}
    recipe = Candidate(3.0, 0.5).recipe(SupervisedConfig(lr=2e-3, epochs=15, min_steps=500))
    assert (recipe.lr, recipe.epochs, recipe.min_steps) == (pytest.approx(6e-3), 8, 250)


def test_the_linear_phase_folds_the_standardisation_into_the_head():
    from pretextflow.core.config import ProbeConfig
    from pretextflow.core.evaluation.probe import fit_linear_head

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 16)) * rng.uniform(0.1, 5, 16) + rng.normal(size=16) * 3).astype(np.float32)
    y = (x[:, 0] + x[:, 3] > np.median(x[:, 0] + x[:, 3])).astype(np.int64)
    head = fit_linear_head(x, y, 2, ProbeConfig(), seed=0)
    standardised = torch.from_numpy((x - head.mean) / head.std).float() @ head.w + head.b
    w, b = head.as_linear()
    linear = torch.nn.Linear(16, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        linear.bias.copy_(torch.from_numpy(b))
    assert torch.allclose(linear(torch.from_numpy(x)), standardised, atol=1e-3)


@pytest.fixture(scope="module")
def tuned(digits_workspace):
    """pretrain -> freeze -> probe on digits with LP-FT and the CV search on."""
    from pretextflow.core.config import load_config

    overrides = ["train.epochs=1", "data.source=null", "store.uri=memory://lpft", "probe.lpft=true", TUNING, *FAST]
    cfg = load_config(REPO / "configs" / "digits_smoke.yaml", overrides)
    ctx = StageContext.create(cfg, str(digits_workspace.root))
    run_pretrain(ctx)
    frozen = run_freeze(ctx)
    return ctx, frozen["key"], run_probe(ctx)["metrics"]


def _trainer(ctx, freeze_key):
    from pretextflow.core.evaluation.probe import _labelled
    from pretextflow.core.evaluation.trained import SubsetTrainer

    ds = ctx.dataset()
    return SubsetTrainer(ctx.cfg, ds, ctx.store, ctx.registry, freeze_key, _labelled(ds))


class Tripwire:
    """Planted in place of the test split: any read fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __getitem__(self, item):
        raise AssertionError("the test split was read (indexing)")

    def __len__(self):
        raise AssertionError("the test split was read (len)")

    def __array__(self, *a, **k):
        raise AssertionError("the test split was read (as an array)")


def test_the_search_never_reads_the_test_split(tuned):
    from pretextflow.core.evaluation.probe import label_subsets

    ctx, freeze_key, _ = tuned
    trainer = _trainer(ctx, freeze_key)
    trainer.xte, trainer.yte = Tripwire(), Tripwire()
    idx = label_subsets(trainer.ytr, [0.1], ctx.cfg.seed)[0.1]
    record = trainer._tune("supervised", 0.1, ctx.cfg.seed, idx)
    assert record["folds"] == 3 and record["runs"] == 9 and len(record["grid"]) == 3
    with pytest.raises(AssertionError, match="the test split was read"):
        trainer.run("supervised", 0.1, ctx.cfg.seed + 100, idx)  # the final score does read it, once


def test_rows_carry_lpft_and_the_same_search_for_both(tuned):
    _, _, m = tuned
    low, ten, full = m["label_efficiency"]
    for row in (low, ten, full):
        assert 0 <= row["lpft_top1"] <= 1 and 0 <= row["supervised_top1"] <= 1
    sup, lpft = ten["supervised"]["tuning"], ten["lpft"]["tuning"]
    assert sup["folds"] == lpft["folds"] == 3 and sup["runs"] == lpft["runs"] == 9  # the same budget
    assert {g["lr_factor"] for g in sup["grid"]} == {g["lr_factor"] for g in lpft["grid"]} == {0.3, 1.0, 3.0}
    assert ten["supervised"]["lr"] == pytest.approx(2e-3 * sup["lr_factor"])  # the chosen lr is the one trained
    assert ten["lpft"]["lr"] == pytest.approx(2e-3 * 0.1 * lpft["lr_factor"])
    assert "rarest class" in low["supervised"]["tuning"]["skipped"]  # ~1 label per class: nothing to fold
    assert full["supervised"]["tuning"]["folds"] == 3  # all of digits' 1,347 labels: under max_labels, tuned


def test_lpft_starts_from_the_probe_and_the_ssl_weights_and_is_deterministic(tuned, monkeypatch):
    import pretextflow.core.evaluation.supervised as supervised
    from pretextflow.core.evaluation.features import extract_features
    from pretextflow.core.evaluation.probe import label_subsets

    ctx, freeze_key, _ = tuned
    trainer = _trainer(ctx, freeze_key)
    idx = label_subsets(trainer.ytr, [0.1], ctx.cfg.seed)[0.1]
    init = {k: v.clone() for k, v in trainer.ssl_weights().items()}
    seen = {}
    real_fit = supervised._fit

    def spy(model, *a, **k):
        backbone, head = model[0], model[1]
        seen["backbone"] = {k: v.clone() for k, v in backbone.state_dict().items()}
        feats = extract_features(backbone.eval(), trainer.xtr[idx], 256, "cpu")
        seen["logits"] = head(torch.from_numpy(feats)).detach()
        backbone.train()
        return real_fit(model, *a, **k)

    monkeypatch.setattr(supervised, "_fit", spy)
    trainer.ssl_features = extract_features(_frozen(ctx, freeze_key), trainer.xtr, 256, "cpu")
    from pretextflow.core.evaluation.lpft import linear_phase

    head = linear_phase(trainer.ssl_features[idx], trainer.ytr[idx], ctx.cfg, 10, ctx.cfg.seed + 7)
    want = torch.from_numpy((trainer.ssl_features[idx] - head.mean) / head.std).float() @ head.w + head.b
    a = trainer.train(
        "lpft", idx, ctx.cfg.seed + 7, ctx.cfg.probe.supervised, (trainer.xtr, trainer.ytr, None), "t", None
    )
    assert all(torch.equal(seen["backbone"][k], init[k]) for k in init)  # phase 1 changed no backbone weight
    assert torch.allclose(seen["logits"], want, atol=1e-3)  # the network starts at the probe's logits
    assert all(torch.equal(trainer.ssl_weights()[k], init[k]) for k in init)  # and the SSL weights are untouched
    b = trainer.train(
        "lpft", idx, ctx.cfg.seed + 7, ctx.cfg.probe.supervised, (trainer.xtr, trainer.ytr, None), "t", None
    )
    assert a["top1"] == b["top1"] and a["final_train_loss"] == b["final_train_loss"]


def _frozen(ctx, freeze_key):
    from pretextflow.core.training.freeze import load_frozen_backbone

    return load_frozen_backbone(ctx.store, freeze_key, ctx.registry)


def test_fixmatch_twins_and_lpft_reach_the_table_the_figure_and_the_first_sentence(tuned):
    from pretextflow.core.runs.report import headline, label_efficiency_sentence
    from pretextflow.core.stages import run_report

    ctx, _, _ = tuned
    recipe = {"steps": 20, "batch_size": 16, "mu": 2, "threshold": 0.8}
    probe = ctx.cfg.probe.model_copy(
        update={
            "semisupervised": True,
            "semisupervised_recipe": ctx.cfg.probe.semisupervised_recipe.model_copy(update=recipe),
            "label_fractions": [0.1, 1.0],
            "tuning": None,
        }
    )
    ctx2 = StageContext.create(ctx.cfg.model_copy(update={"probe": probe}), str(ctx.ws.root))
    m = run_probe(ctx2)["metrics"]
    ten, full = m["label_efficiency"]
    assert ten["fixmatch_ssl"]["steps"] == ten["fixmatch_scratch"]["steps"] == 20  # the same budget
    assert ten["fixmatch_ssl"]["lr"] == ten["fixmatch_scratch"]["lr"]
    assert 0 <= ten["fixmatch_ssl_top1"] <= 1 and 0 <= ten["fixmatch_scratch"]["mask_rate"] <= 1
    assert "fixmatch_ssl_top1" not in full  # every label used: no unlabelled pool left
    sentence = label_efficiency_sentence(m)
    best = max(("ssl_linear_top1", "ssl_knn_top1", "lpft_top1", "fixmatch_ssl_top1"), key=lambda k: ten[k])
    assert f"{ten[best]:.1%}" in sentence and f"({ten['supervised_top1']:.1%})" in sentence
    out = run_report(ctx2)
    md = ctx2.store.read_bytes(*out["run_uri"].split(ctx2.store.uri + "/")[1].split("/"), "report.md").decode()
    assert "SSL LP-FT" in md
    assert "FixMatch from SSL" in md and "FixMatch from scratch" in md
    protocol = md.split("## Protocol")[1]
    assert "| FixMatch | 20 steps of 16 labelled + 2 x 16 unlabelled" in protocol and "confidence >= 0.8" in protocol
    assert f"10%: mask rate {ten['fixmatch_ssl']['mask_rate']:.2f} from SSL" in protocol
    assert "| LP-FT | the linear probe's head" in protocol
    assert sentence in headline(out["manifest"])


def test_protocols_run_at_the_fractions_chosen_for_them():
    from pretextflow.core.config import ProbeConfig
    from pretextflow.core.evaluation.probe import trained_kinds

    pc = ProbeConfig(lpft=True, semisupervised=True, semisupervised_fractions=[0.01], lpft_fractions=[0.1, 1.0])
    assert trained_kinds(pc, 0.01) == ["supervised", "fixmatch_ssl", "fixmatch_scratch"]
    assert trained_kinds(pc, 0.1) == ["supervised", "lpft"]
    assert trained_kinds(pc, 1.0) == ["supervised", "lpft"]
    everywhere = ProbeConfig(lpft=True, semisupervised=True)
    assert trained_kinds(everywhere, 0.1) == ["supervised", "lpft", "fixmatch_ssl", "fixmatch_scratch"]
    assert trained_kinds(everywhere, 1.0) == ["supervised", "lpft"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"semisupervised_fractions": [0.05]}, r"\[0.05\] are not in probe.label_fractions"),
        ({"lpft_fractions": [0.5]}, r"\[0.5\] are not in probe.label_fractions"),
        ({"semisupervised_fractions": [1.0]}, "fractions < 1"),
    ],
)
def test_a_protocol_fraction_outside_the_label_fractions_is_refused(fields, message):
    from pydantic import ValidationError

    from pretextflow.core.config import ProbeConfig

    with pytest.raises(ValidationError, match=message):
        ProbeConfig(**fields)
