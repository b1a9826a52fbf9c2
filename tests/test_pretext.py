"""Each built-in pretext task learns: its loss falls over a few steps on real (digits) images,
and its method-specific invariant holds."""
import numpy as np
import pytest
import torch

from pretextflow.core.augment import Augmenter
from pretextflow.core.plugins import get_registry
from pretextflow.core.train import build_backbone, build_task


def digits_batch(n=128):
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(np.rint(d.images[:n] * 255 / 16).astype(np.uint8)[:, None])


META = {"image_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]}


def make(pretext, digits_config, **params):
    from pretextflow.core.config import load_config  # noqa: F401

    overrides = [f"pretext.name={pretext}", "pretext.params={}"] + [f"pretext.params.{k}={v}" for k, v in params.items()]
    cfg = digits_config(*overrides)
    reg = get_registry()
    return build_task(cfg, build_backbone(cfg, META, reg, seed=0), reg)


@pytest.mark.parametrize("pretext", ["rotation", "simclr", "inpainting"])
def test_loss_decreases(pretext, digits_config):
    torch.manual_seed(0)
    task = make(pretext, digits_config)
    opt = torch.optim.Adam(task.parameters(), lr=3e-3)
    x = digits_batch()
    losses = []
    for step in range(30):
        out = task(x, Augmenter(step))  # fresh views each step, same images
        assert torch.isfinite(out.loss) and out.loss.ndim == 0
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) * 0.9
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.backbone.parameters())


def test_rotation_targets_are_the_rotations_applied():
    from pretextflow.plugins.pretext.rotation import Rotation

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(4, 1, 1, 1)
    k = torch.tensor([0, 1, 2, 3])
    out = Rotation.rotate(x, k)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], i, dims=(1, 2)))


def test_inpainting_masks_the_configured_fraction(digits_config):
    task = make("inpainting", digits_config, mask_side=0.5)
    masks = task.random_masks(Augmenter(0), 64, 8, 8, "cpu")
    assert masks.shape == (64, 1, 8, 8)
    assert (masks.sum(dim=(1, 2, 3)) == 16).all()  # a 4x4 square: a quarter of the area, every sample
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1  # positions differ


def test_simclr_positive_pairs_lower_the_loss():
    from pretextflow.plugins.pretext.simclr import nt_xent

    z = torch.randn(32, 16)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z), 0.5) < nt_xent(z, torch.randn(32, 16), 0.5)


def test_task_needing_tokens_is_refused_on_a_cnn(digits_config):
    from pretextflow.core.contracts import PretextTask, Requirements
    from pretextflow.core.errors import PluginError

    class NeedsTokens(PretextTask):
        name, family, requires = "needs-tokens", "generative", Requirements(tokens=True)

    reg = get_registry()
    reg.pretext["needs-tokens"] = NeedsTokens
    try:
        cfg = digits_config("pretext.name=needs-tokens", "pretext.params={}")
        with pytest.raises(PluginError, match="needs-tokens.*patch tokens.*convnet-s"):
            build_task(cfg, build_backbone(cfg, META, reg), reg)
    finally:
        del reg.pretext["needs-tokens"]
