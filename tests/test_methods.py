"""Method-specific invariants: what must hold for each pretext task to be the method it claims."""

import numpy as np
import pytest
import torch

from pretextflow.core.errors import PluginError
from pretextflow.core.toolkit.augment import Augmenter

from .test_pretext import ALL, META, TEST_PARAMS, VIT, digits_batch, make


def step(task, x, i=0, total=10):
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.1)
    out = task(x, Augmenter(i))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    task.on_step_end(i, total)
    return out


@pytest.mark.parametrize(
    "pretext, teacher", [("moco", "momentum_backbone"), ("byol", "target_backbone"), ("dino", "teacher_backbone")]
)
def test_ema_teacher_gets_no_gradient_and_moves(pretext, teacher, digits_config):
    task = make(pretext, digits_config, **TEST_PARAMS.get(pretext, {}))
    t = getattr(task, teacher)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    assert all(
        torch.equal(a, b) for a, b in zip(t.state_dict().values(), task.backbone.state_dict().values(), strict=False)
    )
    step(task, digits_batch())
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    moved = [k for k, v in t.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert moved, "the EMA update did not move the teacher"
    # but it moved less than the student: it is an average
    name = next(k for k, _ in t.named_parameters())
    delta_t = (dict(t.named_parameters())[name] - before[name]).abs().sum()
    delta_s = (dict(task.backbone.named_parameters())[name] - before[name]).abs().sum()
    assert 0 < delta_t < delta_s


def test_moco_queue_is_updated_with_the_keys(digits_config):
    task = make("moco", digits_config, queue_size=300)
    q0, ptr0 = task.queue.clone(), int(task.queue_ptr)
    step(task, digits_batch(128))
    assert int(task.queue_ptr) == (ptr0 + 128) % 300
    changed = (task.queue != q0).any(dim=0)
    assert changed[:128].all() and not changed[128:].any()
    assert torch.allclose(task.queue[:, :128].norm(dim=0), torch.ones(128), atol=1e-5)  # keys are unit vectors
    step(task, digits_batch(128), 1)
    step(task, digits_batch(128), 2)  # wraps around the end of the queue
    assert int(task.queue_ptr) == (3 * 128) % 300


def test_byol_momentum_follows_the_cosine_schedule(digits_config):
    task = make("byol", digits_config)
    task.on_step_end(0, 100)
    early = float(task.momentum)
    task.on_step_end(99, 100)
    assert 0.99 <= early < float(task.momentum) == pytest.approx(1.0)


def test_dino_centre_changes_and_teacher_temperature_warms_up(digits_config):
    task = make("dino", digits_config)
    c0 = task.center.clone()
    step(task, digits_batch(), 0, 100)
    assert not torch.equal(task.center, c0)
    task.progress[0], task.progress[1] = 0, 100
    t0 = task.teacher_temperature()
    task.progress[0] = 15
    t_mid = task.teacher_temperature()
    task.progress[0] = 50
    assert t0 == pytest.approx(0.04) and 0.04 < t_mid < 0.07 and task.teacher_temperature() == pytest.approx(0.07)


def test_mae_masks_exactly_the_ratio_and_learns_only_masked_patches(digits_config):
    from pretextflow.plugins.pretext.mae import masked_mse

    task = make("mae", digits_config, mask_ratio=0.75)
    assert task.num_patches == 16  # 8x8 digits, 2x2 patches
    out = task(digits_batch(32), Augmenter(0))
    mask = task.last_mask
    assert mask.shape == (32, 16) and (mask.sum(dim=1) == 12).all()
    assert len({tuple(m.tolist()) for m in mask}) > 1  # different patches per sample
    assert torch.isfinite(out.loss)
    pred = torch.randn(32, 16, 4, requires_grad=True)
    target = torch.randn(32, 16, 4)
    masked_mse(pred, target, mask).backward()
    visible = mask == 0
    assert (pred.grad[visible] == 0).all() and (pred.grad[~visible] != 0).any()


def test_mae_is_refused_on_a_cnn_naming_both_plugins(digits_config):
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.training.model import build_backbone, build_task

    cfg = digits_config("pretext.name=mae", "pretext.params={}")
    reg = get_registry()
    with pytest.raises(PluginError, match=r"'mae'.*patch tokens.*'convnet-s'"):
        build_task(cfg, build_backbone(cfg, META, reg), reg)


def test_jigsaw_permutations_and_tile_shuffling():
    from pretextflow.plugins.pretext.jigsaw import permutation_set, shuffle_tiles

    perms = permutation_set(9, 100)
    assert perms.shape == (100, 9) and len({tuple(p) for p in perms}) == 100
    assert all(sorted(p) == list(range(9)) for p in perms)
    dists = (perms[:, None, :] != perms[None, :, :]).sum(-1) + 9 * np.eye(100, dtype=int)
    assert dists.min() >= 6  # greedy max-Hamming keeps permutations far apart
    # a 9x9 image whose 3x3 cells hold their cell index: shuffling moves whole cells
    img = torch.arange(9.0).view(3, 3).repeat_interleave(3, 0).repeat_interleave(3, 1).view(1, 1, 9, 9)
    perm = torch.tensor([[8, 7, 6, 5, 4, 3, 2, 1, 0]])
    out = shuffle_tiles(img, perm, 3, 1.0, torch.zeros(1, 9, 2))
    cells = out.view(3, 3, 3, 3).permute(0, 2, 1, 3)[:, :, 1, 1].flatten()  # centre pixel of each cell
    assert torch.allclose(cells, perm[0].float())
    same = shuffle_tiles(img, torch.arange(9).view(1, 9), 3, 1.0, torch.zeros(1, 9, 2))
    assert torch.allclose(same, img)


def test_relative_location_patches_come_from_the_right_cells(digits_config):
    task = make("relative-location", digits_config, patch_fraction=1.0)
    img = torch.arange(9.0).view(3, 3).repeat_interleave(3, 0).repeat_interleave(3, 1).view(1, 1, 9, 9)
    for r in range(3):
        for c in range(3):
            p = task.patch(img, torch.tensor([float(r)]), torch.tensor([float(c)]), Augmenter(0))
            # the patch's middle comes from cell (r, c); its border is interpolated with the neighbours
            assert p[0, 0, 2:7, 2:7].allclose(torch.full((5, 5), 3.0 * r + c), atol=1e-4)


def test_barlow_and_vicreg_losses_reward_decorrelated_invariant_embeddings():
    from pretextflow.plugins.pretext.barlow_twins import barlow_loss
    from pretextflow.plugins.pretext.vicreg import vicreg_terms

    z = torch.randn(512, 16)
    assert barlow_loss(z, z, 0.005) < barlow_loss(z, torch.randn(512, 16), 0.005)
    inv, var, cov = vicreg_terms(z, z)
    assert inv == 0 and var < 0.05 and cov < 0.5
    _, _, cov_redundant = vicreg_terms(z[:, :1].repeat(1, 16), z[:, :1].repeat(1, 16))
    assert cov_redundant > 10 * cov
    _, var_collapsed, _ = vicreg_terms(torch.zeros(512, 16), torch.zeros(512, 16))
    assert var_collapsed == pytest.approx(0.99, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("pretext", ALL)
def test_pretrain_freeze_probe_through_the_stages(pretext, digits_workspace, digits_config):
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe

    extra = [f"pretext.params.{k}={v}" for k, v in TEST_PARAMS.get(pretext, {}).items()]
    cfg = digits_config(
        f"pretext.name={pretext}",
        "pretext.params={}",
        *extra,
        "train.epochs=1",
        f"store.uri=memory://stages-{pretext}",
        "probe.baselines=[]",
        *(VIT if pretext == "mae" else []),
    )
    ctx = StageContext.create(cfg, str(digits_workspace.root))
    run_pretrain(ctx)
    run_freeze(ctx)
    metrics = run_probe(ctx)["metrics"]
    assert 0.2 < metrics["linear_top1"] <= 1.0  # well above chance (0.1) after one epoch on digits
