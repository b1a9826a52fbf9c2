"""Multi-process (DDP) pretraining, the device/precision policies of the GPU path, and the
torch.compile flag. DDP runs for real: 2 CPU processes over gloo, against 1 process with the
same global batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretextflow.core.data.dataset import load_dataset
from pretextflow.core.errors import ConfigError, TrainingDiverged
from pretextflow.core.registry.registry import get_registry
from pretextflow.core.store import ArtifactStore
from pretextflow.core.toolkit import collectives as distributed
from pretextflow.core.toolkit.augment import Augmenter, ViewSpec
from pretextflow.core.training import launch
from pretextflow.core.training.loop import pretrain
from pretextflow.core.training.model import amp_dtype, select_device

# Two processes sum gradients and BatchNorm statistics in another order than one process does:
# float32 rounding, nothing else. Measured on digits (20 steps): SimCLR's largest relative step-loss
# difference is ~1e-7; methods with a predictor on a near-constant loss (SimSiam) drift to ~1e-2.
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


def _train(ws, tmp_path, digits_config, devices: int, *overrides: str):
    cfg = digits_config(
        "train.epochs=2", "train.batch_size=128", "train.threads=1", f"train.devices={devices}", *overrides
    )
    store = ArtifactStore(str(tmp_path / f"store-{devices}"))
    ds = load_dataset(str(ws.data_dir), "digits")
    outcome = pretrain(cfg, ds, store, "key", get_registry())
    history = store.read_json("pretrain", "key", "history.json")
    from safetensors.torch import load

    weights = load(store.read_bytes("pretrain", "key", "task.safetensors"))
    return outcome, history, weights, store


def test_two_processes_follow_the_single_process_trajectory(digits_workspace, tmp_path, digits_config):
    """SimCLR (negatives from the global batch through gather_with_grad, BatchNorm over the global
    batch through GlobalBatchNorm): 2 x 64 images per step on 2 processes == 128 on 1 process."""
    _, one, w1, _ = _train(digits_workspace, tmp_path, digits_config, 1)
    outcome, two, w2, store = _train(digits_workspace, tmp_path, digits_config, 2)
    assert two["devices"] == 2 and one["devices"] == 1
    assert len(one["step_loss"]) == len(two["step_loss"]) == 20
    np.testing.assert_allclose(two["step_loss"], one["step_loss"], rtol=LOSS_RTOL)
    assert set(w1) == set(w2)  # GlobalBatchNorm keeps BatchNorm's state dict: frozen weights load as usual
    # The backbone (what is kept) matches. Not compared: the bias of the projector's Linear that feeds
    # a BatchNorm, whose true gradient is zero, so AdamW scales pure rounding noise into lr-sized steps
    # (and that BatchNorm's running mean, which tracks it); the projector is thrown away.
    backbone = [name for name in w1 if name.startswith("model/backbone.")]
    assert len(backbone) > 10
    for name in backbone:
        torch.testing.assert_close(w2[name], w1[name], atol=WEIGHT_ATOL, rtol=1e-3, msg=name)
    assert store.is_complete("pretrain", "key") and not store.exists("pretrain", "key", "checkpoint.safetensors")
    assert outcome.final_loss == pytest.approx(two["epoch_loss"][-1])
    # without the global batch (no gather, per-rank BatchNorm) the trajectory is measurably different:
    # the comparison above can fail
    _, local, _, _ = _train(digits_workspace, tmp_path / "local", digits_config, 2, "train.sync_batchnorm=false")
    assert np.max(np.abs(np.array(local["step_loss"]) - one["step_loss"]) / np.array(one["step_loss"])) > 1e-3


def test_a_failing_rank_raises_its_own_error(digits_workspace, tmp_path, digits_config):
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        _train(
            digits_workspace,
            tmp_path,
            digits_config,
            2,
            "train.lr=1e30",
            "train.warmup_epochs=0",
            "pretext.name=rotation",
            "pretext.params={}",
        )


def test_multiprocess_preconditions_are_clear_errors(digits_workspace, digits_config):
    with pytest.raises(ConfigError, match="divisible by devices"):
        digits_config("train.devices=3", "train.batch_size=128")
    ds = load_dataset(str(digits_workspace.data_dir), "digits")
    with pytest.raises(ConfigError, match="memory://"):
        pretrain(digits_config("train.devices=2"), ds, ArtifactStore("memory://ddp-store"), "k", get_registry())


def test_sharded_augmenter_makes_the_single_process_views():
    images = torch.randint(0, 256, (8, 1, 12, 12), dtype=torch.uint8)
    spec = ViewSpec(blur_p=0.5, solarize_p=0.3)
    whole = Augmenter(7)
    parts = [Augmenter(7, shard=(r, 2)) for r in range(2)]
    torch.testing.assert_close(
        torch.cat([a.view(images[r * 4 : (r + 1) * 4], spec) for r, a in enumerate(parts)]), whole.view(images, spec)
    )
    torch.testing.assert_close(torch.cat([a.randint(5, (4, 3)) for a in parts]), whole.randint(5, (8, 3)))
    torch.testing.assert_close(torch.cat([a.randn(4, 2) for a in parts]), whole.randn(8, 2))
    with pytest.raises(ValueError, match="outside world size"):
        Augmenter(0, shard=(2, 2))


def test_collectives_are_the_identity_in_one_process():
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    assert distributed.gather(x) is x
    assert distributed.all_reduce_mean(x) is x
    assert distributed.world_size() == 1 and distributed.rank() == 0


def test_global_batchnorm_is_batchnorm_in_one_process():
    bn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(5),
        torch.nn.BatchNorm1d(5, affine=False),
    )
    x = torch.randn(6, 1, 8, 8)
    ref = bn(x)
    converted = distributed.convert_batchnorm(bn, "cpu")
    assert isinstance(converted[1], distributed.GlobalBatchNorm)
    assert isinstance(converted[4], distributed.GlobalBatchNorm)
    assert set(converted.state_dict()) == set(bn.state_dict())
    torch.testing.assert_close(converted(x), ref)


# -- the GPU path's policies: pure functions, testable without a GPU -----------------------------
def test_mixed_precision_policy():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype(cuda, True, bf16_supported=True) is torch.bfloat16  # no grad scaler needed
    assert amp_dtype(cuda, True, bf16_supported=False) is torch.float16  # with GradScaler
    assert amp_dtype(cuda, False, bf16_supported=True) is None
    assert amp_dtype(cpu, True, bf16_supported=True) is None  # CPU runs stay float32 (and deterministic)


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        assert select_device("auto").type == "cuda"
    else:
        assert select_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="no CUDA device"):
            select_device("cuda")
        assert launch.backend_for("cuda") == "nccl" and launch.backend_for("cpu") == "gloo"


def test_compile_flag_trains_the_same_model(digits_workspace, tmp_path, digits_config):
    """torch.compile (inductor, C++ on the CPU) changes kernels, not the model: same losses within
    float tolerance, and the saved weights keep their names (no `_orig_mod.` prefix)."""
    plain = _train(
        digits_workspace, tmp_path / "plain", digits_config, 1, "train.epochs=1", "train.max_train_samples=512"
    )
    compiled = _train(
        digits_workspace,
        tmp_path / "compiled",
        digits_config,
        1,
        "train.epochs=1",
        "train.max_train_samples=512",
        "train.compile=true",
    )
    np.testing.assert_allclose(compiled[1]["step_loss"], plain[1]["step_loss"], rtol=1e-3)
    assert set(compiled[2]) == set(plain[2]) and not any("_orig_mod" in k for k in compiled[2])
