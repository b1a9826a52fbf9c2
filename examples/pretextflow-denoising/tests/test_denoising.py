"""The example plugin's own tests: the pretextflow conformance kit, plus what is specific to the
method (the corruption)."""

import torch
from pretextflow_denoising.denoising import Denoising

from pretextflow.api import Augmenter
from pretextflow.testing import assert_conforms, registry_with


def test_conforms_to_the_pretext_task_contract():
    """Installed (pip install -e .): registered under its name, params, forward, gradients,
    determinism, state dict, device, and a short pretrain -> freeze -> probe on digits."""
    results = assert_conforms("denoising", kind="pretext")
    assert [r.name for r in results if r.passed] == [
        "registered",
        "params",
        "forward",
        "gradients",
        "determinism",
        "state_dict",
        "device",
        "pipeline",
    ]


def test_conforms_before_installing():
    assert_conforms(Denoising, registry=registry_with(Denoising), pipeline=False)


def _task(**params):
    from pretextflow.api import Backbone

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    return Denoising(Backbone(net, 8, [0.5], [0.25], image_size=8), Denoising.Params(**params))


def test_corruption_masks_and_adds_noise_reproducibly():
    task = _task(noise_std=0.0, drop_p=0.5)
    x = torch.full((4, 1, 8, 8), 0.5)
    a, b = task.corrupt(x, Augmenter(3)), task.corrupt(x, Augmenter(3))
    assert torch.equal(a, b)  # the augmenter's seed decides the corruption
    dropped = (a == 0).float().mean().item()
    assert 0.35 < dropped < 0.65 and set(a.unique().tolist()) == {0.0, 0.5}
    noisy = _task(noise_std=0.3, drop_p=0.0).corrupt(x, Augmenter(3))
    assert 0.2 < (noisy - x).std().item() < 0.4 and noisy.min() >= 0 and noisy.max() <= 1


def test_reconstruction_target_is_the_clean_view():
    task = _task(noise_std=0.0, drop_p=0.0)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = task(images, Augmenter(0))
    assert out.logs["noisy_mse"] == 0.0 and out.loss.item() > 0
