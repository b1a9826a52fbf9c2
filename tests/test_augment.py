import torch

from pretextflow.core.toolkit.augment import Augmenter, ViewSpec


def batch(n=16, c=1, s=12):
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_views_have_shape_dtype_and_range():
    for c in (1, 3):
        x = batch(c=c)
        v = Augmenter(0).view(x, ViewSpec(blur_p=0.5, solarize_p=0.5))
        assert v.shape == x.shape and v.dtype == torch.float32
        assert 0.0 <= v.min() and v.max() <= 1.0
        assert Augmenter(0).view(x, ViewSpec(size=8)).shape == (16, c, 8, 8)


def test_same_seed_same_views_and_state_round_trip():
    x = batch()
    a, b = Augmenter(7), Augmenter(7)
    assert torch.equal(a.view(x), b.view(x))
    state = a.state_dict()
    first = a.view(x)
    a.load_state_dict(state)
    assert torch.equal(a.view(x), first)
    assert not torch.equal(Augmenter(8).view(x), Augmenter(7).view(x))


def test_parameters_differ_per_sample():
    x = batch(n=1).repeat(8, 1, 1, 1)  # eight copies of one image
    v = Augmenter(0).view(x)
    assert len({tuple(t.flatten().tolist()) for t in v}) == 8


def test_identity_spec_is_identity():
    x = batch()
    spec = ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    assert torch.allclose(Augmenter(0).view(x, spec), x.float() / 255, atol=1e-5)
