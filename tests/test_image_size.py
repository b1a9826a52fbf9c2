"""``train.image_size``: views cropped at train time from the stored resolution, out at the backbone's
size; letterboxed images (content extents) cropped inside their content and centre-cropped for
evaluation; probes reading the labelled images batch by batch through a view."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretextflow.core.data.shards import ImageView, ShardedArray
from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe
from pretextflow.core.toolkit.augment import Augmenter, ViewSpec, content_fractions, fit_to_size
from pretextflow.core.training import checkpoint

DEFAULT_VIEW = ViewSpec()
FAST_PROBE = [
    "data.source=null",
    "train.epochs=1",
    "probe.label_fractions=[1.0]",
    "probe.supervised.min_steps=10",
    "probe.supervised.epochs=1",
    "probe.linear_max_iter=20",
]


def _batch(n=8, c=1, s=12, seed=0):
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _letterboxed(n: int, side: int, h: int, w: int) -> torch.Tensor:
    """``n`` canvases of ``side`` px, black, with bright noisy content of h x w px centred on them."""
    x = torch.zeros(n, 1, side, side, dtype=torch.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    x[:, :, top : top + h, left : left + w] = _batch(n, 1, max(h, w), seed=1)[:, :, :h, :w] // 2 + 100
    return x


# -- the augmenter ---------------------------------------------------------------------------------
def test_views_come_out_at_the_training_size_and_an_explicit_size_wins():
    x = _batch(s=12)
    aug = Augmenter(0, out_size=6)
    assert aug.view(x).shape == (8, 1, 6, 6)
    assert aug.view(x, ViewSpec(size=4)).shape == (8, 1, 4, 4)
    assert Augmenter(0).view(x).shape == x.shape  # no out_size: the input's size, as before
    batch = aug.prepare_batch(x)
    assert batch.shape == (8, 1, 6, 6) and batch.dtype == torch.uint8  # the raw batch, at the model's size
    expected = F.interpolate(x.float(), size=(6, 6), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(batch, expected.round().clamp(0, 255).to(torch.uint8))
    # a view of the prepared batch is cropped from the stored 12-px images, not from the 6-px batch
    a, b = Augmenter(3, out_size=6), Augmenter(3, out_size=6)
    prepared = a.prepare_batch(x)
    assert torch.equal(a.view(prepared), b.view(x))
    a.clear_batch()
    assert a.view(prepared).shape == (8, 1, 6, 6)


def test_extents_keep_every_crop_inside_the_content():
    side = 16
    spec = ViewSpec(crop_scale=(0.05, 1.0), crop_ratio=(0.5, 2.0), jitter_p=0.0)
    for h, w in ((16, 6), (16, 5), (7, 12), (9, 9)):  # even and odd padding, tall, wide and small content
        x = _letterboxed(64, side, h, w)
        extent = content_fractions(np.tile([h, w], (64, 1)), side)
        aug = Augmenter(0, out_size=8)
        for _ in range(5):
            batch = aug.prepare_batch(x, extent)
            assert batch.shape == (64, 1, 8, 8)
            assert float(aug.view(batch, spec).min()) > 0, (h, w)  # no padding sampled
            assert float(aug.view(x, spec, extent).min()) > 0  # the same, for images passed with their extent
        plain = Augmenter(0, out_size=8).view(x, spec)
        assert float(plain.min()) == 0.0  # without extents crops do reach the padding


def test_full_extents_change_nothing_and_draw_the_same_numbers():
    x = _batch(s=12)
    a, b = Augmenter(5), Augmenter(5)
    full = content_fractions(np.full((8, 2), 12), 12)
    assert torch.equal(full, torch.ones(8, 2))
    assert torch.equal(a.view(a.prepare_batch(x, full)), b.view(x))
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_evaluation_takes_the_centred_square_of_the_content():
    side, size = 16, 8
    x = torch.zeros(4, 1, side, side)
    x[:, :, 4:12, :] = (100 + 8 * torch.arange(side).float()) / 255  # content: rows 4..11, a horizontal ramp
    extent = content_fractions(np.tile([8, 16], (4, 1)), side)
    out = fit_to_size(x, size, extent)
    assert out.shape == (4, 1, size, size) and float(out.min()) > 0  # no padding
    # the centred 8 x 8 square of the content (inset half a pixel: resampled, so only close to a copy)
    assert torch.allclose(out, x[:, :, 4:12, 4:12], atol=0.02)
    # per image: an image that fills its canvas is resized whole, whatever shares its batch
    mixed = torch.cat([x[:2], _batch(2, 1, side, seed=2).float() / 255])
    ext = torch.cat([extent[:2], torch.ones(2, 2)])
    got = fit_to_size(mixed, size, ext)
    whole = F.interpolate(mixed[2:], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(got[2:], whole) and torch.equal(got[:2], fit_to_size(x[:2], size, extent[:2]))
    assert fit_to_size(x, side) is x  # the model's size already: untouched


def test_extract_features_resizes_to_the_backbone_and_crops_the_content():
    from pretextflow.core.evaluation.features import extract_features
    from pretextflow.core.registry.contracts import Backbone

    seen = []

    class Net(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape)
            return x.flatten(1)

    bb = Backbone(Net(), 36, [0.0], [1.0], image_size=6)
    images = _letterboxed(5, 12, 12, 6).numpy()
    feats = extract_features(bb, images, batch_size=2, extents=np.tile([12, 6], (5, 1)))
    assert seen == [(2, 1, 6, 6), (2, 1, 6, 6), (1, 1, 6, 6)] and feats.shape == (5, 36)
    assert feats.min() > 0  # the content's centred square: no padding
    plain = extract_features(bb, images, batch_size=5)
    assert plain.min() == 0  # the whole canvas, resized


# -- the model's size ------------------------------------------------------------------------------
def test_backbone_and_small_stem_follow_the_training_size(digits_config):
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.training.model import build_backbone, input_size

    meta = {"image_shape": [1, 96, 96], "mean": [0.5], "std": [0.25]}
    stored = build_backbone(digits_config(), meta, get_registry())
    small = build_backbone(digits_config("train.image_size=32"), meta, get_registry())
    assert stored.image_size == 96 and small.image_size == 32
    assert input_size(digits_config("train.image_size=32"), meta) == 32
    first = [m for m in stored.net.modules() if isinstance(m, torch.nn.Conv2d)][0]
    first_small = [m for m in small.net.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert first.stride == (2, 2) and first_small.stride == (1, 1)  # small_image_stem: auto, from 32 px


def test_pipeline_at_a_smaller_training_size(digits_workspace, digits_config):
    """Digits are stored at 8 px; the backbone is trained, frozen and probed at 6 px."""
    from pretextflow.core.training.freeze import load_frozen_backbone

    ctx = StageContext.create(
        digits_config(*FAST_PROBE, "train.image_size=6", "store.uri=memory://size6"), str(digits_workspace.root)
    )
    plain = StageContext.create(digits_config(*FAST_PROBE, "store.uri=memory://size8"), str(digits_workspace.root))
    ds = ctx.dataset()
    assert ctx.pretrain_key(ds) != plain.pretrain_key(ds)  # train.image_size is in the key
    run_pretrain(ctx)
    frozen = run_freeze(ctx)
    spec = ctx.store.read_json("freeze", frozen["key"], "spec.json")
    assert spec["image_shape"] == [1, 6, 6] and spec["data_image_shape"] == [1, 8, 8]
    assert load_frozen_backbone(ctx.store, frozen["key"], ctx.registry).image_size == 6
    m = run_probe(ctx)["metrics"]
    assert m["linear_top1"] > 0.3 and m["label_efficiency"][0]["supervised_top1"] is not None


def test_same_seed_same_numbers_and_mid_epoch_resume(digits_workspace, digits_config, crash_then_resume):
    overrides = [*FAST_PROBE, "train.epochs=2", "train.image_size=6", "train.checkpoint_every_steps=4"]
    overrides += ["train.threads=1"]

    def ctx(name):
        return StageContext.create(digits_config(*overrides, f"store.uri=memory://{name}"), str(digits_workspace.root))

    whole, again, cut = ctx("det-a"), ctx("det-b"), ctx("det-cut")
    run_pretrain(whole)
    run_pretrain(again)
    crash_then_resume(cut, 13)
    key = whole.pretrain_key(whole.dataset())
    weights = [
        checkpoint.decode(c.store.read_bytes("pretrain", key, "task.safetensors"))[0]["model"]
        for c in (whole, again, cut)
    ]
    for other in weights[1:]:
        assert [k for k in weights[0] if not torch.equal(weights[0][k], other[k])] == []
    hist = [c.store.read_json("pretrain", key, "history.json")["step_loss"] for c in (whole, again, cut)]
    assert hist[0] == hist[1] == hist[2]


def test_a_larger_training_size_is_allowed_with_one_warning(digits_workspace, digits_config, caplog):
    cfg = digits_config(
        "data.source=null",
        "train.epochs=1",
        "train.image_size=12",
        "train.max_train_samples=256",
        "store.uri=memory://up",
    )
    with caplog.at_level(logging.WARNING, logger="pretextflow"):
        run_pretrain(StageContext.create(cfg, str(digits_workspace.root)))
    warnings = [r for r in caplog.records if "larger than the 8 px" in r.getMessage()]
    assert len(warnings) == 1


# -- letterboxed training data ---------------------------------------------------------------------
def test_training_batches_carry_their_extents_per_rank():
    from pretextflow.core.training.loop import _Batches

    n = 32
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    extents = torch.arange(n, dtype=torch.float32).view(n, 1).expand(n, 2).contiguous()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for rank in (0, 1):
        b = _Batches(images, True, False, torch.device("cpu"), 8, 4, rank, 4, extents)
        for i in range(4):
            assert torch.equal(b.get(perm, i)[:, 0, 0, 0].float(), b.extent(perm, i)[:, 0])
            assert torch.equal(b.get(perm, i)[:, 0, 0, 0].long(), perm[i * 8 + rank * 4 : i * 8 + rank * 4 + 4])


def test_training_on_letterboxed_images_crops_inside_the_content(monkeypatch, digits_config):
    """A dataset whose images carry ``train_extents``: every view the task makes stays inside the content."""
    from pretextflow.core.data.dataset import Dataset
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    n, side = 128, 12
    images = _letterboxed(n, side, 12, 6).numpy()
    labels = np.arange(n) % 2
    meta = {"image_shape": [1, side, side], "mean": [0.3], "std": [0.3], "num_classes": 2, "class_names": ["a", "b"]}
    ds = Dataset("boxed", meta, images, labels, images[:16], labels[:16])
    ds.train_extents = np.tile(np.array([12, 6], np.int32), (n, 1))
    mins = []
    original = Augmenter.view

    def spy(self, images, spec=DEFAULT_VIEW, extent=None):
        out = original(self, images, spec, extent)
        mins.append(float(out.min()))
        return out

    monkeypatch.setattr(Augmenter, "view", spy)
    cfg = digits_config("data.source=null", "train.epochs=1", "train.batch_size=32", "train.image_size=8")
    pretrain(cfg, ds, ArtifactStore("memory://boxed"), "k", get_registry())
    assert len(mins) == 8 and min(mins) > 0  # 4 steps x 2 SimCLR views, none with padding in it


# -- reading images without copying them -----------------------------------------------------------
def _shards(tmp_path, sizes=(5, 7, 4)):
    parts, start = [], 0
    for i, k in enumerate(sizes):
        a = (np.arange(start, start + k, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8)).copy()
        np.save(tmp_path / f"p{i}.npy", a)
        parts.append(np.load(tmp_path / f"p{i}.npy", mmap_mode="r"))
        start += k
    return ShardedArray(parts, (1, 2, 2))


def test_sharded_head_is_a_view_of_the_memory_maps(tmp_path):
    arr = _shards(tmp_path)
    head = arr.head(9)
    assert isinstance(head, ShardedArray) and len(head) == 9 and len(head.parts) == 2
    assert all(isinstance(p, np.memmap) for p in head.parts)
    assert all(np.shares_memory(p, q) for p, q in zip(head.parts, arr.parts, strict=False))
    assert np.array_equal(np.asarray(head), np.asarray(arr)[:9])
    assert len(arr.head(100)) == 16 and len(arr.head(0)) == 0


def test_max_train_samples_trains_from_a_view_of_the_shards(tmp_path, digits_config):
    from pretextflow.core.data.dataset import Dataset
    from pretextflow.core.training.loop import _image_tensor

    arr = _shards(tmp_path)
    ds = Dataset("s", {"image_shape": [1, 2, 2]}, arr, np.zeros(16, np.int64), arr, np.zeros(16, np.int64))
    images = _image_tensor(ds, digits_config("train.max_train_samples=6").train, torch.device("cpu"))
    assert isinstance(images, ShardedArray) and len(images) == 6
    assert all(np.shares_memory(p, q) for p, q in zip(images.parts, arr.parts, strict=False))


@pytest.mark.parametrize("kind", ["sharded", "memmap", "array"])
def test_image_view_reads_only_what_is_asked(tmp_path, kind):
    arr = _shards(tmp_path)
    base = {"sharded": arr, "array": np.asarray(arr)}.get(kind)
    if base is None:
        np.save(tmp_path / "all.npy", np.asarray(arr))
        base = np.load(tmp_path / "all.npy", mmap_mode="r")
    full = np.asarray(arr)
    mask = full[:, 0, 0, 0] % 3 != 0
    idx = np.flatnonzero(mask)
    view = ImageView(base, idx)
    assert len(view) == len(idx) and view.shape == (len(idx), 1, 2, 2) and view.dtype == np.uint8
    assert view.nbytes == len(idx) * 4 and view.ndim == 4
    assert np.array_equal(view[2:5], full[idx][2:5]) and np.array_equal(np.asarray(view), full[idx])
    assert np.array_equal(view[np.array([3, 0])], full[idx][[3, 0]])
    assert np.array_equal(view[np.arange(len(idx)) % 2 == 0], full[idx][::2])
    assert np.array_equal(view[1], full[idx[1]])
    assert np.array_equal(np.array(view[:3]), full[idx][:3])


def test_probe_reads_the_labelled_images_through_views():
    from pretextflow.core.data.dataset import Dataset
    from pretextflow.core.evaluation.probe import _labelled, _labelled_extents

    images = _batch(10, 1, 4).numpy()
    labels = np.array([0, -1, 1, 0, -1, 1, 0, 1, 0, 1])
    ds = Dataset("v", {"image_shape": [1, 4, 4]}, images, labels, images, labels)
    xtr, ytr, xte, yte = _labelled(ds)
    assert isinstance(xtr, ImageView) and isinstance(xte, ImageView)
    assert np.array_equal(np.asarray(xtr), images[labels >= 0]) and np.array_equal(ytr, labels[labels >= 0])
    assert _labelled_extents(ds) == (None, None)
    ds.train_extents = np.tile(np.array([4, 2], np.int32), (10, 1))
    tr, te = _labelled_extents(ds)
    assert tr.shape == (8, 2) and te is None


def test_two_processes_crop_from_the_stored_images_like_one(digits_workspace, digits_config, tmp_path):
    """Under DDP the task still gets the prepared batch itself (so its views crop from the stored
    8-px images): 2 x 64 images per step at train.image_size=6 follow the 1-process trajectory."""
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    losses = {}
    for devices in (1, 2):
        cfg = digits_config("train.epochs=1", "train.threads=1", "train.image_size=6", f"train.devices={devices}")
        store = ArtifactStore(str(tmp_path / f"store-{devices}"))
        pretrain(cfg, load_dataset(str(digits_workspace.data_dir), "digits"), store, "key", get_registry())
        losses[devices] = store.read_json("pretrain", "key", "history.json")["step_loss"]
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-4)
