"""Each built-in pretext task learns: its loss falls over a few steps on real (digits) images,
and its method-specific invariant holds."""

import numpy as np
import pytest
import torch

from pretextflow.core.registry.registry import get_registry
from pretextflow.core.toolkit.augment import Augmenter
from pretextflow.core.training.model import build_backbone, build_task


def digits_batch(n=128):
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(np.rint(d.images[:n] * 255 / 16).astype(np.uint8)[:, None])


META = {"image_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]}


VIT = ["backbone.name=timm/vit_tiny_patch16_224", "backbone.kwargs={patch_size: 2, depth: 2}"]
ALL = [
    "rotation",
    "jigsaw",
    "relative-location",
    "inpainting",
    "simclr",
    "moco",
    "byol",
    "simsiam",
    "barlow-twins",
    "vicreg",
    "dino",
    "mae",
]


def make(pretext, digits_config, *extra, **params):
    overrides = [f"pretext.name={pretext}", "pretext.params={}"] + [
        f"pretext.params.{k}={v}" for k, v in params.items()
    ]
    if pretext == "mae":
        overrides += VIT
    cfg = digits_config(*overrides, *extra)
    reg = get_registry()
    torch.manual_seed(0)
    return build_task(cfg, build_backbone(cfg, META, reg, seed=0), reg)


def test_every_family_is_in_the_catalogue():
    reg = get_registry()
    assert set(ALL) <= set(reg.pretext)
    families = {name: reg.pretext[name].family for name in ALL}
    assert families["mae"] == "generative" and families["jigsaw"] == "predictive" and families["dino"] == "contrastive"


# moco: a queue of one batch is full of real keys from the second step on (random keys are easy
# negatives, so the loss first rises while the queue fills). dino: on 8x8 digits, 4-pixel local crops
# and small global crops leave nothing consistent to distil in 60 steps; whole-image views do.
TEST_PARAMS = {"moco": {"queue_size": 128}, "dino": {"n_local": 0, "global_scale": "[1.0, 1.0]"}}
# (steps, lr, weight decay): DINO learns slowly at first and is trained with AdamW, wd 0.04, in the paper
TEST_OPTIM = {"dino": (100, 3e-3, 0.04)}


@pytest.mark.parametrize("pretext", ALL)
def test_loss_decreases(pretext, digits_config):
    task = make(pretext, digits_config, **TEST_PARAMS.get(pretext, {}))
    steps, lr, wd = TEST_OPTIM.get(pretext, (60, 3e-3, 0.0))
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    x = digits_batch()
    losses = []
    for step in range(steps):
        out = task(x, Augmenter(step))  # fresh views each step, same images
        assert torch.isfinite(out.loss) and out.loss.ndim == 0
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        task.on_step_end(step, steps)
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[1:6]) * 0.97, losses
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
    from pretextflow.core.errors import PluginError
    from pretextflow.core.registry.contracts import PretextTask, Requirements

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
