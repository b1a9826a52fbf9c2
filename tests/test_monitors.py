"""Online monitors during pretraining (core/training/monitors.py): kNN top-1 on a training subset,
RankMe, the collapse stop, and the report's figure. Tiny in-memory datasets, toy encoders."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from pretextflow.core.config import MonitorConfig, RunConfig
from pretextflow.core.data.dataset import Dataset
from pretextflow.core.errors import CollapseError, PretextflowError
from pretextflow.core.toolkit.augment import content_fractions, fit_to_size, to_float
from pretextflow.core.training.monitors import OnlineMonitor, knn_loo_top1, rankme, stratified_sample

SIDE = 8


class Constant(nn.Module):
    """Every image -> the same vector: a collapsed encoder."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.register_buffer("v", torch.linspace(1.0, 2.0, dim))
        self.image_size = SIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v.expand(len(x), -1).clone()


class Flatten(nn.Module):
    """The pixels themselves (an identity-like feature), centred, optionally randomly projected."""

    def __init__(self, project_to: int | None = None, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(SIDE * SIDE, project_to, generator=g) if project_to else torch.eye(SIDE * SIDE)
        self.register_buffer("w", w)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return (x.flatten(1) - 0.5) @ self.w


class Untouchable:
    """A split that must never be read (the monitor draws from the training split only)."""

    shape, dtype = (64, 1, SIDE, SIDE), np.dtype(np.uint8)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, key):
        raise AssertionError("the monitor read the test split")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the monitor read the test split")


def blocks(per_class: int = 50, classes: int = 4, seed: int = 0, unlabelled: int = 0) -> Dataset:
    """Class c: row c of the image bright (200) over faint noise: trivially separable by its pixels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.integers(0, 20, size=(len(labels), 1, SIDE, SIDE), dtype=np.uint8)
    images[np.arange(len(labels)), 0, labels % SIDE, :] = 200
    perm = rng.permutation(len(labels))
    images, labels = images[perm], labels[perm]
    if unlabelled:
        images = np.concatenate([images, rng.integers(0, 255, size=(unlabelled, 1, SIDE, SIDE), dtype=np.uint8)])
        labels = np.concatenate([labels, -np.ones(unlabelled, np.int64)])
    meta = {"image_shape": [1, SIDE, SIDE], "num_classes": classes}
    return Dataset("blocks", meta, images, labels, Untouchable(), np.zeros(64, np.int64))


def monitor(ds: Dataset, seed: int = 0, **cfg) -> OnlineMonitor:
    return OnlineMonitor(MonitorConfig(**cfg), ds, seed, "cpu", SIDE, method="simclr")


# -- RankMe ------------------------------------------------------------------------------------
def test_constant_encoder_has_rankme_one_and_stops_the_run():
    mon = monitor(blocks(), stop_on_collapse=True)
    result = mon.evaluate(Constant(), epoch=3)
    assert 1.0 <= result["rankme"] < 1.1
    with pytest.raises(CollapseError) as err:
        mon.check(result, epoch=3)
    msg = str(err.value)
    assert isinstance(err.value, PretextflowError) and err.value.exit_code == 2
    for part in ("simclr", f"RankMe {result['rankme']:.3f}", "collapse_rank 1.5", "epoch 3", "train.lr"):
        assert part in msg
    assert "augmentation" in msg and "different pretext method" in msg and "monitor.stop_on_collapse: false" in msg


def test_collapse_only_warns_when_stop_is_off(caplog):
    mon = monitor(blocks())
    result = mon.evaluate(Constant(), epoch=1)
    with caplog.at_level(logging.WARNING, logger="pretextflow.train"):
        mon.check(result, epoch=1)  # no error
    assert "collapsing" in caplog.text and "stop_on_collapse: true" in caplog.text


def test_collapse_patience_counts_consecutive_checks():
    ds = blocks()
    mon = monitor(ds, stop_on_collapse=True, collapse_patience=2)
    mon.check(mon.evaluate(Constant(), 1), 1)  # 1 below: not yet
    mon.check(mon.evaluate(Flatten(), 2), 2)  # healthy: the streak restarts
    mon.check(mon.evaluate(Constant(), 3), 3)
    with pytest.raises(CollapseError, match="2 consecutive"):
        mon.check(mon.evaluate(Constant(), 4), 4)


def test_random_projection_of_the_pixels_has_a_high_rank():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(600, 1, SIDE, SIDE), dtype=np.uint8)
    labels = -np.ones(600, np.int64)  # RankMe needs no labels
    ds = Dataset("noise", {"image_shape": [1, SIDE, SIDE]}, images, labels, Untouchable(), labels[:64])
    result = monitor(ds).evaluate(Flatten(project_to=32), epoch=1)
    assert result["rankme"] > 0.8 * 32  # close to min(n, d) = 32
    assert rankme(torch.zeros(10, 4)) < 1.01  # nothing there at all: collapsed, not NaN


# -- kNN ---------------------------------------------------------------------------------------
def test_knn_is_near_one_when_separable_and_chance_when_collapsed():
    ds = blocks(per_class=50, classes=4)
    assert monitor(ds).evaluate(Flatten(), 1)["knn_top1"] == pytest.approx(1.0)
    assert abs(monitor(ds).evaluate(Constant(), 1)["knn_top1"] - 0.25) <= 0.1
    # leave-one-out: an image is never its own neighbour (else k=1 would always be right)
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 2
    assert knn_loo_top1(x, y, k=1) < 0.9


# -- the subsets -------------------------------------------------------------------------------
def test_subsets_are_seeded_stratified_and_from_the_training_split_only():
    ds = blocks(per_class=60, classes=4, unlabelled=30)  # the test split raises if read
    a, b = monitor(ds, knn_samples=100, rankme_samples=50), monitor(ds, knn_samples=100, rankme_samples=50)
    assert np.array_equal(a.knn.index, b.knn.index) and np.array_equal(a.rank.index, b.rank.index)
    c = monitor(ds, seed=1, knn_samples=100, rankme_samples=50)
    assert not np.array_equal(a.knn.index, c.knn.index)
    n_train = len(ds.train_images)
    for mon in (a, c):
        assert len(mon.knn) == 100 and len(mon.rank) == 50
        assert mon.knn.index.max() < n_train and mon.rank.index.max() < n_train
        assert (ds.train_labels[mon.knn.index] >= 0).all()  # labelled images only
        assert np.bincount(ds.train_labels[mon.knn.index]).tolist() == [25, 25, 25, 25]
    mon = monitor(ds, knn_samples=10_000)  # more than there are: every labelled training image
    assert len(mon.knn) == 240
    result = mon.evaluate(Flatten(), 1)  # reads only the training split (the test split would raise)
    assert set(result) == {"knn_top1", "rankme"}


def test_stratified_sample_is_exact_and_keeps_every_class():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    for n in (3, 10, 50, 99):
        picked = stratified_sample(labels, n, np.random.default_rng(0))
        assert len(picked) == n and len(np.unique(picked)) == n
        assert set(labels[picked]) == {0, 1, 2}
    assert np.bincount(labels[stratified_sample(labels, 50, np.random.default_rng(0))]).tolist() == [
        45,
        4,
        1,
    ]  # quotas 45, 4.5, 0.5: the rare class its one


def test_no_labels_skips_knn_with_one_info_line(caplog):
    ds = blocks()
    ds.train_labels = -np.ones_like(ds.train_labels)
    with caplog.at_level(logging.INFO, logger="pretextflow.train"):
        mon = monitor(ds)
    assert sum("kNN check is skipped" in r.getMessage() for r in caplog.records) == 1
    result = mon.evaluate(Flatten(), 1)
    assert set(result) == {"rankme"}
    assert mon.history[0]["knn_top1"] is None and mon.history[0]["rankme"] == result["rankme"]


# -- determinism, modes, sizes -----------------------------------------------------------------
def _convnet() -> nn.Module:
    """A small backbone with BatchNorm (whose running statistics eval mode must leave alone)."""
    from pretextflow.core.registry.contracts import Backbone

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16)
    )
    net.append(nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    return Backbone(net, 16, [0.1], [0.2], SIDE)


def test_evaluations_are_deterministic_and_change_nothing():
    ds, backbone = blocks(), _convnet()
    backbone.train()
    first = next(m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    first.eval()  # a submodule deliberately in eval mode stays so
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng_before, np_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = monitor(ds).evaluate(backbone, 1)
    b = monitor(ds).evaluate(backbone, 1)
    mon = monitor(ds)
    assert a == b == mon.evaluate(backbone, 1) == mon.evaluate(backbone, 2)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # BatchNorm stats too
    assert torch.equal(rng_before, torch.get_rng_state()) and np.array_equal(np_before, np.random.get_state()[1])
    assert backbone.training and not first.training
    assert all(p.grad is None for p in backbone.parameters())


def test_history_records_each_check_and_a_redone_epoch_replaces_its_record():
    mon = monitor(blocks(), every_epochs=2)
    assert [e for e in range(1, 6) if mon.due(e, last=e == 5)] == [2, 4, 5]
    assert not monitor(blocks(), every_epochs=0).due(5, last=True)
    for epoch in (2, 4, 2):  # a rollback redoes epoch 2: the later records are of a discarded trajectory
        mon.evaluate(Flatten(), epoch)
    assert [r["epoch"] for r in mon.history] == [2]
    assert set(mon.history[0]) == {"epoch", "knn_top1", "rankme", "seconds"} and mon.history[0]["seconds"] >= 0


def test_images_are_brought_to_the_model_size_as_evaluation_does():
    ds = blocks(per_class=10, classes=2)
    ds.train_extents = np.tile(np.array([[SIDE, 4]], np.int32), (len(ds.train_labels), 1))  # letterboxed
    enc = Flatten()
    mon = OnlineMonitor(MonitorConfig(rankme_samples=5), ds, 0, "cpu", 16, method="simclr")

    def resized(images: np.ndarray) -> torch.Tensor:
        return fit_to_size(to_float(torch.from_numpy(images)), 16, content_fractions(ds.train_extents[:1], SIDE))

    with pytest.raises(RuntimeError):  # 16 px inputs to an 8 px flattening encoder: it did get 16 px
        mon.evaluate(enc, 1)
    seen = enc.inputs[0]
    assert seen.shape[-2:] == (16, 16)
    expected = torch.cat([resized(np.asarray(ds.train_images[i : i + 1])) for i in mon.knn.index])
    assert torch.equal(seen, expected)


def test_monitor_config_validates_its_ranges():
    from pretextflow.core.config import load_config
    from pretextflow.core.errors import ConfigError

    assert RunConfig.model_validate({"data": {"name": "x"}}).monitor == MonitorConfig()
    for bad in ("every_epochs=-1", "knn_samples=1", "knn_k=0", "rankme_samples=1", "collapse_rank=0.5", "bogus=1"):
        with pytest.raises(ConfigError, match="monitor"):
            load_config(raw={"data": {"name": "x"}}, overrides=[f"monitor.{bad}"])


# -- the report figure ---------------------------------------------------------------------------
def _manifest() -> dict:
    metrics = {
        "num_train": 240,
        "num_test": 64,
        "linear_top1": 0.9,
        "knn_top1": 0.85,
        "knn": {"k": 20, "temperature": 0.07},
        "linear": {"weight_decay_grid": [1e-4], "chosen_on": "10% of the training labels"},
    }
    return {
        "name": "blocks",
        "run_id": "r1",
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "data_version": "abc.dir",
        "dataset": {"name": "blocks", "format": "memory", "image_shape": [1, 8, 8], "fingerprint": "f"},
        "config": {
            "pretext": {"name": "simclr"},
            "backbone": {"name": "convnet-s"},
            "probe": {"knn_k": [20]},
            "monitor": {"collapse_rank": 1.5},
        },
        "code_version": {"pretextflow": "0"},
        "plugins": {"pretext": {"name": "simclr", "package": "pretextflow", "version": "0"}, "backbone": {"name": "c"}},
        "pretrain": {"epochs": 3, "final_loss": 1.0, "images_per_second": 100.0},
        "packages": {"torch": torch.__version__},
        "artifacts": {},
        "metrics": metrics,
    }


def test_report_draws_the_monitor_figure_only_when_the_history_has_one(tmp_path):
    from pretextflow.core.runs.report import MONITOR_FIGURE, write_report
    from pretextflow.core.store import ArtifactStore

    records = [
        {"epoch": e, "knn_top1": k, "rankme": r, "seconds": 0.2}
        for e, k, r in ((1, 0.5, 20.0), (2, 0.62, 24.0), (3, 0.7, 26.5))
    ]
    history = {"step_loss": [3.0, 2.5, 2.0], "epoch_loss": [3.0, 2.5, 2.0]}
    store = ArtifactStore(str(tmp_path / "store"))
    manifest = _manifest()
    write_report(store, "with", manifest, {**history, "monitor": records}, manifest["metrics"])
    png = store.read_bytes("runs", "with", MONITOR_FIGURE)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    (tmp_path / MONITOR_FIGURE).write_bytes(png)  # to look at
    assert f"![{MONITOR_FIGURE}]({MONITOR_FIGURE})" in store.read_bytes("runs", "with", "report.md").decode()
    assert f"alt='{MONITOR_FIGURE}'" in store.read_bytes("runs", "with", "report.html").decode()
    manifest = _manifest()
    write_report(store, "without", manifest, history, manifest["metrics"])
    assert not store.exists("runs", "without", MONITOR_FIGURE)
    assert MONITOR_FIGURE not in store.read_bytes("runs", "without", "report.md").decode()
