import numpy as np

from pretextflow.core.config import ProbeConfig
from pretextflow.core.evaluation.probe import knn_classify, linear_probe, stratified_split

CFG = ProbeConfig(linear_weight_decays=[1e-4, 1e-2], linear_max_iter=100)


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 5, (4, 16))
    y = np.repeat(np.arange(4), 100)
    x = centers[y] + rng.normal(0, 0.5, (400, 16))
    out = linear_probe(x[::2].astype(np.float32), y[::2], x[1::2].astype(np.float32), y[1::2], 4, CFG, seed=0)
    assert out["top1"] > 0.99


def test_linear_probe_on_random_labels_is_at_chance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    y = rng.integers(0, 10, 2000)
    out = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], 10, CFG, seed=0)
    assert abs(out["top1"] - 0.1) < 0.05


def test_knn_on_duplicated_points_is_perfect():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    assert (knn_classify(x, y, x, ks=[1], temperature=0.07, num_classes=5)[1] == y).all()


def test_stratified_split_holds_out_each_class():
    y = np.repeat(np.arange(3), [10, 20, 30])
    fit, held = stratified_split(y, 0.1, seed=0)
    assert sorted(np.bincount(y[held]).tolist()) == [1, 2, 3]
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == 60


def test_probe_device_cuda_without_a_gpu_is_a_clear_error(digits_config, digits_workspace):
    import pytest
    import torch

    from pretextflow.core.errors import ConfigError
    from pretextflow.core.evaluation.probe import probe
    from pretextflow.core.stages import StageContext

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ctx = StageContext.create(digits_config("data.source=null", "probe.device=cuda"), str(digits_workspace.root))
    ds = ctx.dataset()
    keys = ctx.keys(ds)
    assert keys == StageContext.create(digits_config("data.source=null"), str(digits_workspace.root)).keys(ds)
    with pytest.raises(ConfigError, match="probe.device is 'cuda' but no CUDA device"):
        probe(ctx.cfg, ds, ctx.store, keys["freeze"], "never-computed", ctx.registry)
