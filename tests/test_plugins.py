import json
import os
import subprocess
import sys
import textwrap

import pytest

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.registry import build_registry, get_registry

BUILTINS = {
    ("rotation", "pretext", "predictive"),
    ("jigsaw", "pretext", "predictive"),
    ("relative-location", "pretext", "predictive"),
    ("inpainting", "pretext", "generative"),
    ("mae", "pretext", "generative"),
    ("simclr", "pretext", "contrastive"),
    ("moco", "pretext", "contrastive"),
    ("byol", "pretext", "contrastive"),
    ("simsiam", "pretext", "contrastive"),
    ("barlow-twins", "pretext", "contrastive"),
    ("vicreg", "pretext", "contrastive"),
    ("dino", "pretext", "contrastive"),
    ("distill", "pretext", "contrastive"),
    ("convnet-s", "backbone", None),
    ("timm/*", "backbone", None),
    ("csv", "dataset", None),
    ("idx", "dataset", None),
    ("imagefolder", "dataset", None),
    ("sklearn-digits", "dataset", None),
    ("tensorboard", "logger", None),
    ("mlflow", "logger", None),
}


def test_builtins_register_through_the_hooks():
    reg = build_registry(load_entry_points=False)
    assert {(i.name, i.kind, i.family) for i in reg.info} == BUILTINS
    assert all(i.package == "pretextflow" for i in reg.info)
    assert not reg.skipped


def test_unknown_names_list_what_is_installed():
    reg = get_registry()
    with pytest.raises(PluginError, match=r"unknown pretext task 'simclear'.*simclr"):
        reg.pretext_task("simclear")
    with pytest.raises(PluginError, match="unknown backbone"):
        reg.backbone("resnet-huge")
    with pytest.raises(PluginError, match="unknown dataset format"):
        reg.dataset_format("parquet")


def test_timm_namespace_builds_any_timm_model():
    from pretextflow.core.registry.contracts import BackboneParams

    spec = get_registry().backbone("timm/resnet18")
    net, nf = spec.build("timm/resnet18", BackboneParams(in_chans=1, image_size=28, small_image_stem=True))
    assert nf == 512 and net.conv1.kernel_size == (3, 3) and net.conv1.in_channels == 1
    with pytest.raises(PluginError, match="timm has no model"):
        spec.build("timm/not_a_model", BackboneParams(in_chans=1, image_size=28))


PLUGIN_SRC = """
from pretextflow.core.registry.contracts import PretextTask, StepOutput, Params
from pretextflow.core.registry.hookspecs import hookimpl

class Identity(PretextTask):
    name = "{name}"
    family = "predictive"
    class Params(Params):
        pass
    def forward(self, images, aug):
        return StepOutput(self.backbone(aug.view(images)).pow(2).mean())

@hookimpl
def pretextflow_pretext_tasks():
    return [Identity]
"""


def _install_plugin(target, dist: str, module: str, body: str, ep_name: str):
    """Build and pip-install a real package that declares a `pretextflow` entry point."""
    src = target.parent / f"src-{dist}"
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(body)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "1.2.3"
        [project.entry-points.pretextflow]
        {ep_name} = "{module}"
        [tool.setuptools]
        packages = ["{module}"]
    """)
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
    )


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("site") / "site-packages"
    _install_plugin(target, "pf-good", "pf_good", PLUGIN_SRC.format(name="identity"), "good")
    _install_plugin(target, "pf-broken", "pf_broken", "raise ImportError('boom: missing dependency')", "broken")
    _install_plugin(target, "pf-clash", "pf_clash", PLUGIN_SRC.format(name="simclr"), "clash")
    _install_plugin(
        target,
        "pf-raises",
        "pf_raises",
        "from pretextflow.core.registry.hookspecs import hookimpl\n"
        "@hookimpl\ndef pretextflow_backbones():\n    raise RuntimeError('hook exploded')\n",
        "raises",
    )
    return target


def test_entry_point_plugins_are_discovered_and_broken_ones_isolated(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    reg = build_registry()
    good = next(i for i in reg.info if i.name == "identity")
    assert (good.kind, good.family, good.package, good.version) == ("pretext", "predictive", "pf-good", "1.2.3")
    skipped = {s.plugin: s.reason for s in reg.skipped}
    assert "boom: missing dependency" in skipped["broken"]
    assert "already provided by pretextflow" in skipped["clash"]
    assert "hook exploded" in skipped["raises"]
    assert reg.pretext["simclr"].__module__.startswith("pretextflow.")  # the built-in kept its name
    assert {"rotation", "simclr", "inpainting", "mae", "identity"} <= set(reg.pretext)


def test_allow_and_block_lists(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.setenv("PRETEXTFLOW_LOAD_PLUGINS", "good")
    reg = build_registry()
    assert "identity" in reg.pretext and not reg.skipped
    monkeypatch.delenv("PRETEXTFLOW_LOAD_PLUGINS")
    monkeypatch.setenv("PRETEXTFLOW_BLOCK_PLUGINS", "good,broken,clash,raises")
    reg = build_registry()
    assert "identity" not in reg.pretext and not reg.skipped


def test_cli_lists_plugins_as_json(plugin_dir):
    env = {**os.environ, "PYTHONPATH": str(plugin_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "pretextflow", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert all(set(r) == {"name", "kind", "family", "package", "version"} for r in rows)
    assert {
        "name": "identity",
        "kind": "pretext",
        "family": "predictive",
        "package": "pf-good",
        "version": "1.2.3",
    } in rows
    assert "skipped plugin broken (pf-broken)" in proc.stderr


@pytest.mark.parametrize(
    "name, kwargs",
    [("timm/resnet10t", {}), ("timm/vit_tiny_patch16_224", {"patch_size": 4}), ("convnet-s", {"width": 8})],
)
def test_backbones_train_one_step_on_small_grayscale_images(name, kwargs, digits_config):
    import torch

    from pretextflow.core.toolkit.augment import Augmenter
    from pretextflow.core.training.model import build_backbone, build_task

    cfg = digits_config(
        f"backbone.name={name}", f"backbone.kwargs={kwargs}", "pretext.name=rotation", "pretext.params={}"
    )
    reg = get_registry()
    backbone = build_backbone(cfg, {"image_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]}, reg, seed=0)
    feats = backbone(torch.rand(4, 1, 8, 8))
    assert feats.shape == (4, backbone.num_features)
    task = build_task(cfg, backbone, reg)
    out = task(torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), Augmenter(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_small_image_stem_auto_uses_the_small_stem_only_below_64_px():
    """The default, ``auto``: a timm ResNet keeps its ImageNet stem (stride-2 conv, max-pool) at
    96 px and gets the small one at 28 px; an explicit true/false is obeyed at any size."""
    import torch

    from pretextflow.core.config import load_config
    from pretextflow.core.training.model import build_backbone, small_stem

    assert small_stem("auto", 28) and not small_stem("auto", 64) and not small_stem("auto", 224)
    assert small_stem(True, 224) and not small_stem(False, 28)
    cfg = load_config(raw={"name": "t", "data": {"name": "d"}, "backbone": {"name": "timm/resnet10t", "kwargs": {}}})
    assert cfg.backbone.small_image_stem == "auto"
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3}
    big = build_backbone(cfg, {**meta, "image_shape": [3, 96, 96]}, get_registry()).net
    small = build_backbone(cfg, {**meta, "image_shape": [3, 28, 28]}, get_registry()).net
    first = [m for m in big.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert not isinstance(big.maxpool, torch.nn.Identity) and first.stride == (2, 2)
    assert isinstance(small.maxpool, torch.nn.Identity)
