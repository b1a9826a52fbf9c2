"""Issue #16, start from pretrained weights: ``backbone.weights`` (a safetensors file on any fsspec
URI) is loaded by name and shape, its sha256 is in the stage keys and the manifest, and the report's
"random init" baseline becomes "initial weights"."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pretextflow.core.errors import ConfigError
from pretextflow.core.registry.registry import get_registry
from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe, run_report
from pretextflow.core.training.model import build_backbone

TIMM = ["backbone.name=timm/resnet10t", "backbone.small_image_stem=false", "backbone.kwargs={}"]
META = {"image_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}


def _timm_weights(path, seed=0, in_chans=1, num_classes=10):
    """A stock timm checkpoint, classifier included, as timm's model.safetensors would hold it."""
    import timm

    torch.manual_seed(seed)
    net = timm.create_model("resnet10t", num_classes=num_classes, in_chans=in_chans)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net.state_dict()


def test_weights_are_loaded_by_name_with_the_classifier_dropped(digits_config, tmp_path):
    state = _timm_weights(tmp_path / "w.safetensors")
    cfg = digits_config(*TIMM, f"backbone.weights={tmp_path / 'w.safetensors'}")
    backbone = build_backbone(cfg, META, get_registry(), seed=123)
    got = backbone.net.state_dict()
    assert "fc.weight" in state and "fc.weight" not in got
    assert all(torch.equal(got[k], state[k]) for k in got)


def test_the_weights_content_is_in_the_stage_keys(digits_config, digits_workspace, tmp_path):
    from pretextflow.core.data.dataset import Dataset  # noqa: F401  (the context loads it)

    path = tmp_path / "w.safetensors"
    _timm_weights(path, seed=0)

    def keys(*extra):
        ctx = StageContext.create(digits_config(*TIMM, "data.source=null", *extra), str(digits_workspace.root))
        return ctx.keys(ctx.dataset())

    none, first = keys(), keys(f"backbone.weights={path}")
    _timm_weights(path, seed=1)  # other weights at the same URI
    second = keys(f"backbone.weights={path}")
    assert len({none["pretrain"], first["pretrain"], second["pretrain"]}) == 3
    assert len({none["probe"], first["probe"], second["probe"]}) == 3


def test_a_run_from_weights_records_them_and_says_initial_weights(digits_config, digits_workspace, tmp_path):
    path = tmp_path / "w.safetensors"
    state = _timm_weights(path, seed=3)
    cfg = digits_config(
        *TIMM,
        "data.source=null",
        f"backbone.weights={path}",
        "train.epochs=1",
        "probe.label_fractions=[1.0]",
        "probe.baselines=[random_init]",
    )
    ctx = StageContext.create(cfg, str(digits_workspace.root))
    run_pretrain(ctx)
    run_freeze(ctx)
    run_probe(ctx)
    out = run_report(ctx)
    manifest = out["manifest"]
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["metrics"]["initial_weights"] == {"uri": str(path), "sha256": sha}
    assert manifest["config"]["backbone"]["weights"] == str(path)
    report = ctx.store.read_bytes("runs", out["run_id"], "report.md").decode()
    assert "same backbone, initial weights" in report and "random init" not in report
    assert "at its initial weights" in report
    # pretraining moved away from the weights it started at
    import pretextflow

    trained = pretextflow.load_backbone(out["run_uri"]).model.net.state_dict()
    assert not torch.equal(trained["conv1.0.weight"], state["conv1.0.weight"])


def test_bad_weights_are_clear_config_errors(digits_config, tmp_path):
    reg = get_registry()
    with pytest.raises(ConfigError, match="cannot be read"):
        build_backbone(digits_config(*TIMM, f"backbone.weights={tmp_path / 'nope.safetensors'}"), META, reg)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ConfigError, match="not a safetensors file.*save_file"):
        build_backbone(digits_config(*TIMM, f"backbone.weights={tmp_path / 'junk.safetensors'}"), META, reg)
    _timm_weights(tmp_path / "rgb.safetensors", in_chans=3)
    with pytest.raises(ConfigError, match=r"conv1.0.weight has shape \(24, 3, 3, 3\).*image channels"):
        build_backbone(digits_config(*TIMM, f"backbone.weights={tmp_path / 'rgb.safetensors'}"), META, reg)
    with pytest.raises(ConfigError, match="does not fit the backbone.*missing"):  # another architecture
        build_backbone(digits_config(f"backbone.weights={tmp_path / 'rgb.safetensors'}"), META, reg)


def test_a_frozen_pretextflow_backbone_is_a_valid_starting_point(digits_config, digits_workspace):
    cfg = digits_config("data.source=null", "train.epochs=1")
    ctx = StageContext.create(cfg, str(digits_workspace.root))
    run_pretrain(ctx)
    frozen = run_freeze(ctx)
    path = ctx.store.uri_of("freeze", frozen["key"], "backbone.safetensors")
    again = build_backbone(
        digits_config(f"backbone.weights={path}"), {**META, "image_shape": [1, 8, 8]}, get_registry()
    )
    from pretextflow.core.training.freeze import load_frozen_backbone

    want = load_frozen_backbone(ctx.store, frozen["key"], get_registry()).net.state_dict()
    assert all(torch.equal(again.net.state_dict()[k], v) for k, v in want.items())
