"""Issue 4's protocols: label subsets, the supervised baseline, feature caching, a frozen backbone
through probing, fine-tuning, and the report (rendered in a real headless browser)."""

import hashlib
import os
import sys

import numpy as np
import pytest

from pretextflow.core.errors import ConfigError, StageInputError
from pretextflow.core.evaluation.probe import label_subsets
from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe, run_report

from .conftest import REPO


def test_label_subsets_are_class_balanced_nested_and_seeded():
    y = np.repeat(np.arange(10), 600)  # Fashion-MNIST-like: 600 per class
    subsets = label_subsets(y, [0.01, 0.1, 1.0], seed=0)
    assert [np.bincount(y[subsets[f]], minlength=10).tolist() for f in (0.01, 0.1, 1.0)] == [
        [6] * 10,
        [60] * 10,
        [600] * 10,
    ]
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[1.0])
    assert len(np.unique(subsets[0.1])) == len(subsets[0.1])
    again, other = label_subsets(y, [0.01, 0.1, 1.0], seed=0), label_subsets(y, [0.01, 0.1, 1.0], seed=1)
    assert all(np.array_equal(again[f], subsets[f]) for f in subsets)
    assert not np.array_equal(other[0.1], subsets[0.1])


def test_label_subsets_keep_every_class_when_imbalanced():
    y = np.repeat(np.arange(3), [1000, 100, 10])
    counts = np.bincount(y[label_subsets(y, [0.01], seed=0)[0.01]], minlength=3).tolist()
    assert counts == [10, 1, 1]  # proportional, and at least one image of every class


def test_bad_fractions_are_config_errors(digits_config):
    with pytest.raises(ConfigError, match=r"probe.label_fractions.*\(0, 1\]"):
        digits_config("probe.label_fractions=[0, 0.5]")
    with pytest.raises(ConfigError, match="probe.supervised.lr"):
        digits_config("probe.supervised.lr=-1")


@pytest.fixture(scope="module")
def probed(digits_workspace):
    """pretrain -> freeze -> probe on digits with two subset draws and fine-tuning on."""
    from pretextflow.core.config import load_config

    cfg = load_config(
        REPO / "configs" / "digits_smoke.yaml",
        [
            "train.epochs=2",
            "data.source=null",
            "store.uri=artifacts-label-efficiency",
            "probe.label_seeds=2",
            "probe.finetune=true",
            "probe.supervised.min_steps=100",
        ],
    )
    ctx = StageContext.create(cfg, str(digits_workspace.root))
    run_pretrain(ctx)
    frozen = run_freeze(ctx)
    weights = ctx.store.read_bytes("freeze", frozen["key"], "backbone.safetensors")
    out = run_probe(ctx)
    return ctx, frozen, hashlib.sha256(weights).hexdigest(), out["metrics"]


def test_rows_have_mean_std_and_every_comparison(probed):
    _, _, _, m = probed
    rows = m["label_efficiency"]
    assert [r["seeds"] for r in rows] == [2, 2, 1]
    for r in rows[:2]:
        assert r["ssl_linear_top1_std"] is not None and r["supervised_top1_std"] is not None
    for r in rows:
        for key in (
            "ssl_linear_top1",
            "supervised_top1",
            "random_init_linear_top1",
            "pixels_linear_top1",
            "finetune_top1",
            "ssl_knn_top1",
        ):
            assert 0.0 <= r[key] <= 1.0, key
        assert r["supervised"]["steps"] >= 100 and r["supervised"]["train_top1"] > 0.5
    assert rows[-1]["supervised_top1"] > 0.8  # the baseline is trained properly: digits are easy with all labels
    assert rows[0]["num_labels"] < rows[1]["num_labels"] < rows[2]["num_labels"] == m["num_train"]


def test_probe_metrics_match_the_one_schema(probed):
    import copy

    from pretextflow.core.evaluation.metrics import EFFICIENCY_COLUMNS, FINETUNE, OPTIONAL_COLUMNS, check_metrics

    _, _, _, m = probed
    assert check_metrics(m) is m
    always = [c for c in EFFICIENCY_COLUMNS if c not in OPTIONAL_COLUMNS]
    assert all(c.key in m["label_efficiency"][0] for c in [*always, FINETUNE])  # fine-tuning is on here
    assert not any(c.key in m["label_efficiency"][0] for c in OPTIONAL_COLUMNS if c is not FINETUNE)  # LP-FT... off
    renamed = copy.deepcopy(m)
    renamed["label_efficiency"][0]["ssl_lin_top1"] = renamed["label_efficiency"][0].pop("ssl_linear_top1")
    with pytest.raises(StageInputError, match=r"label_efficiency\.0\.ssl_linear_top1: Field required"):
        check_metrics(renamed, "probe metrics.json")
    no_headline = {k: v for k, v in m.items() if k != "linear_top1"}
    with pytest.raises(StageInputError, match="linear_top1"):
        check_metrics(no_headline)


def test_backbone_stays_frozen_through_probing_and_fine_tuning(probed):
    ctx, frozen, digest, _ = probed
    after = ctx.store.read_bytes("freeze", frozen["key"], "backbone.safetensors")
    assert hashlib.sha256(after).hexdigest() == digest


def test_features_are_extracted_once_and_reused(probed, monkeypatch):
    ctx, _, _, m = probed
    import pretextflow.core.evaluation.features as features

    assert set(m["feature_keys"]) == {"ssl", "random_init"}
    for key in m["feature_keys"].values():
        assert ctx.store.is_complete("features", key)

    def boom(*a, **k):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(features, "extract_features", boom)
    import pretextflow.core.evaluation.supervised as supervised

    monkeypatch.setattr(supervised, "train_supervised", boom)  # and the supervised runs are cached too
    ctx2 = StageContext.create(
        ctx.cfg.model_copy(update={"probe": ctx.cfg.probe.model_copy(update={"knn_k": [7]})}), str(ctx.ws.root)
    )
    again = run_probe(ctx2)
    assert not again["cached"] and again["metrics"]["knn"]["k"] == 7
    assert again["metrics"]["linear_top1"] == m["linear_top1"]


def test_supervised_baseline_is_deterministic(digits_workspace):
    import torch

    from pretextflow.core.config import load_config
    from pretextflow.core.evaluation.supervised import train_supervised
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.training.model import configure_runtime

    cfg = load_config(REPO / "configs" / "digits_smoke.yaml", ["data.source=null", "probe.supervised.min_steps=30"])
    ds = StageContext.create(cfg, str(digits_workspace.root)).dataset()
    runs = []
    for _ in range(2):
        configure_runtime(0, torch.device("cpu"), None)
        runs.append(
            train_supervised(
                cfg,
                ds.meta,
                get_registry(),
                ds.train_images[:200],
                ds.train_labels[:200],
                ds.test_images,
                ds.test_labels,
                seed=3,
            )
        )
    assert runs[0]["top1"] == runs[1]["top1"] and runs[0]["final_train_loss"] == runs[1]["final_train_loss"]
    assert runs[0]["top1"] > 0.3  # 200 labels, 30 steps: well above chance


def test_report_answers_the_question_and_renders_in_chromium(probed):
    ctx, _, _, m = probed
    rep = run_report(ctx)
    from pretextflow.core.store import ArtifactStore

    run = ArtifactStore(rep["run_uri"])
    md = run.read_bytes("report.md").decode()
    first = m["label_efficiency"][0]
    methods = ("ssl_linear_top1", "ssl_knn_top1", "finetune_top1")  # the SSL-based methods that ran here
    best = max(methods, key=lambda k: (first[k], k == "ssl_linear_top1"))
    d = (first[best] - first["supervised_top1"]) * 100
    line = md.splitlines()[2]
    assert line.startswith(
        f"With 1% of the labels ({first['num_labels']} images), SSL features reach {first[best]:.1%}"
    )
    assert f"{abs(d):.1f} points {'above' if d >= 0 else 'below'} supervised training from scratch" in line
    assert "SSL fine-tuned" in md and "±" in md  # two draws: mean ± std
    assert rep["manifest"]["metrics"]["label_efficiency"] == m["label_efficiency"]

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import render_report
    finally:
        sys.path.pop(0)
    if render_report.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run must apt-get install chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    html_path = run.path("report.html")
    result = render_report.render(html_path)
    assert result["broken"] == []
    assert {name for name, _, _ in result["sizes"]} == {
        "probe_accuracy.png",
        "confusion.png",
        "label_efficiency.png",
        "pretrain_loss.png",
        "online_monitors.png",  # monitor.every_epochs defaults to 1: kNN and RankMe per epoch
        "retrieval.png",
        "projection.png",
    }
    assert all(w > 100 and h > 100 for _, w, h in result["sizes"])
    # the check can fail: a corrupted image is reported as broken
    broken = html_path.replace("report.html", "broken.html")
    text = open(html_path).read()
    i = text.index("base64,") + len("base64,")
    open(broken, "w").write(text[:i] + "AAAA" + text[i + 200 :])
    assert len(render_report.render(broken)["broken"]) == 1
