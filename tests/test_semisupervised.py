"""FixMatch on a labelled subset + the unlabelled pool: the confidence mask, determinism, a pool read
batch by batch, the SSL initialisation (same recipe and budget as random), and a sanity accuracy."""

import numpy as np
import pytest
import torch

from pretextflow.core.config import load_config
from pretextflow.core.data.shards import ImageView
from pretextflow.core.evaluation import semisupervised
from pretextflow.core.evaluation.semisupervised import fixmatch_loss, train_fixmatch
from pretextflow.core.registry.registry import get_registry
from pretextflow.core.stages import StageContext
from pretextflow.core.training.model import build_backbone, configure_runtime

from .conftest import REPO

R = "probe.semisupervised_recipe"


def _cfg(*overrides: str):
    return load_config(REPO / "configs" / "digits_smoke.yaml", ["data.source=null", *overrides])


@pytest.fixture(scope="module")
def digits(digits_workspace):
    return StageContext.create(_cfg(), str(digits_workspace.root)).dataset()


def _subset(ds, fraction: float, seed: int = 0) -> np.ndarray:
    """A class-balanced labelled subset: ``fraction`` of each class's training images."""
    rng = np.random.default_rng(seed)
    y = np.asarray(ds.train_labels)
    picks = [rng.permutation(np.flatnonzero(y == c))[: max(1, round(fraction * np.sum(y == c)))] for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and far faster when another process shares the
    cores (two threads then wait on each other). Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def built(monkeypatch):
    """Records every model ``train_fixmatch`` builds: (backbone, head, first head output)."""
    models: list[dict] = []
    real = semisupervised._build_model

    def record(*args, **kwargs):
        backbone, head = real(*args, **kwargs)
        entry = {"backbone": backbone, "head": head, "start": {k: v.clone() for k, v in backbone.state_dict().items()}}

        def first_output(_module, _inputs, output):
            entry.setdefault("first_logits", output.detach().clone())

        head.register_forward_hook(first_output)
        models.append(entry)
        return backbone, head

    monkeypatch.setattr(semisupervised, "_build_model", record)
    return models


def _run(ds, idx, cfg, pool=None, seed=3, **kwargs):
    configure_runtime(0, torch.device("cpu"), None)
    return train_fixmatch(
        cfg,
        ds.meta,
        get_registry(),
        ds.train_images[idx],
        ds.train_labels[idx],
        ds.train_images if pool is None else pool,
        ds.test_images,
        ds.test_labels,
        seed=seed,
        **kwargs,
    )


# -- (a) the confidence mask ------------------------------------------------------------------
def _logits():
    logits_l = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1])
    weak = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 9.0], [1.0, 1.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 4.0]], requires_grad=True)
    return logits_l, y, weak, strong


def test_threshold_masks_low_confidence_pseudo_labels():
    logits_l, y, weak, strong = _logits()
    loss, mask = fixmatch_loss(logits_l, y, weak, strong, threshold=0.9, lambda_u=2.0)
    assert mask.tolist() == [True, False, True, False]
    l_s = torch.nn.functional.cross_entropy(logits_l, y)
    ce = torch.nn.functional.cross_entropy(strong, torch.tensor([0, 1, 2, 0]), reduction="none")
    assert torch.allclose(loss, l_s + 2.0 * (ce[0] + ce[2]) / 4)  # mean over the whole unlabelled batch

    changed = strong.detach().clone()
    changed[[1, 3]] = torch.tensor([[-5.0, 7.0, 3.0], [9.0, -2.0, 0.5]])  # masked rows: no effect
    assert torch.equal(fixmatch_loss(logits_l, y, weak, changed, 0.9, 2.0)[0], loss)
    changed[0] = torch.tensor([5.0, -1.0, 0.0])  # a kept row: the loss changes
    assert not torch.allclose(fixmatch_loss(logits_l, y, weak, changed, 0.9, 2.0)[0], loss)

    loss.backward()
    assert weak.grad is None  # no gradient through the pseudo labels
    assert strong.grad[[1, 3]].abs().sum() == 0 and strong.grad[[0, 2]].abs().sum() > 0


def test_threshold_zero_uses_everything_and_one_almost_nothing():
    logits_l, y, weak, strong = _logits()
    _, mask = fixmatch_loss(logits_l, y, weak, strong, threshold=0.0, lambda_u=1.0)
    assert mask.all()
    loss, mask = fixmatch_loss(logits_l, y, weak, strong, threshold=1.0, lambda_u=1.0)
    assert not mask.any()
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits_l, y))  # only L_s
    with_smoothing = fixmatch_loss(logits_l, y, weak, strong, 1.0, 1.0, label_smoothing=0.1)[0]
    assert torch.allclose(with_smoothing, torch.nn.functional.cross_entropy(logits_l, y, label_smoothing=0.1))


# -- (b) determinism --------------------------------------------------------------------------
def test_fixmatch_is_deterministic(digits, built):
    cfg = _cfg(f"{R}.steps=30", f"{R}.batch_size=16", f"{R}.mu=2", f"{R}.threshold=0.5")
    idx = _subset(digits, 0.1)
    calls: list[tuple[int, int]] = []
    runs = [_run(digits, idx, cfg, progress=lambda d, t: calls.append((d, t))), _run(digits, idx, cfg)]
    assert calls == [(i, 30) for i in range(1, 31)]
    a, b = runs
    assert a["top1"] == b["top1"] and a["final_train_loss"] == b["final_train_loss"]
    assert a["mask_rate"] == b["mask_rate"] and a["train_top1"] == b["train_top1"]
    sa, sb = (m["backbone"].state_dict() for m in built)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(built[0]["head"].weight, built[1]["head"].weight)
    assert not all(torch.equal(sa[k], built[0]["start"][k]) for k in sa)  # it did train
    other = _run(digits, idx, cfg, seed=4)
    assert other["final_train_loss"] != a["final_train_loss"]


# -- (c) the pool is read batch by batch ------------------------------------------------------
class RecordingPool:
    """An image array that records the rows each read asks for, and refuses to be read whole."""

    def __init__(self, base):
        self.base = base
        self.shape = tuple(base.shape)
        self.dtype = base.dtype
        self.reads: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        rows = np.asarray(key)
        assert rows.ndim == 1, f"not an index array: {key!r}"
        self.reads.append(rows.copy())
        return self.base[rows]

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("the whole unlabelled pool was read")


def test_unlabelled_pool_is_never_read_whole(digits):
    steps, batch, mu = 40, 16, 2
    cfg = _cfg(f"{R}.steps={steps}", f"{R}.batch_size={batch}", f"{R}.mu={mu}")
    n = len(digits.train_images)
    pool = RecordingPool(ImageView(digits.train_images, np.arange(n)))
    result = _run(digits, _subset(digits, 0.1), cfg, pool=pool)
    assert len(pool.reads) == steps
    assert all(len(r) == mu * batch and np.all(np.diff(r) >= 0) for r in pool.reads)  # sorted, mu x B
    first_epoch = np.concatenate(pool.reads[: n // (mu * batch)])
    assert len(np.unique(first_epoch)) == len(first_epoch)  # epochs over the pool: no repeats within one
    assert result["unlabelled"] == n and result["mu"] == mu
    assert result["unlabelled_epochs"] == pytest.approx(steps * mu * batch / n)


# -- (d) the SSL initialisation ---------------------------------------------------------------
def test_init_weights_are_used_with_the_same_recipe_and_budget(digits, built):
    cfg = _cfg(f"{R}.steps=5", f"{R}.batch_size=16", f"{R}.mu=2")
    weights = {k: v.clone() for k, v in build_backbone(cfg, digits.meta, get_registry(), seed=123).state_dict().items()}
    idx = _subset(digits, 0.1)
    scratch = _run(digits, idx, cfg)
    ssl = _run(digits, idx, cfg, init_weights=weights)
    assert (scratch["init"], ssl["init"]) == ("random", "ssl")
    assert all(torch.equal(built[1]["start"][k], weights[k]) for k in weights)
    assert not all(torch.equal(built[0]["start"][k], weights[k]) for k in weights)
    assert not torch.allclose(built[0]["first_logits"], built[1]["first_logits"])
    for key in ("steps", "lr", "batch_size", "epochs", "mu", "threshold", "num_labels", "unlabelled"):
        assert scratch[key] == ssl[key], key


# -- (e) sanity: it learns --------------------------------------------------------------------
def test_fixmatch_learns_digits_from_ten_percent_of_the_labels(digits):
    cfg = _cfg(f"{R}.steps=200", f"{R}.batch_size=16", f"{R}.mu=2", f"{R}.threshold=0.8")
    idx = _subset(digits, 0.1)
    result = _run(digits, idx, cfg, pool=ImageView(digits.train_images, np.arange(len(digits.train_images))))
    assert result["num_labels"] == len(idx) and result["steps"] == 200
    assert 0.05 < result["mask_rate"] <= 1.0, result  # the unlabelled loss takes part
    assert result["top1"] > 0.75, result  # measured 0.92-0.95 (3 seeds x 2 subsets); chance is 0.1
