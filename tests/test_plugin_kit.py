"""The plugin authoring kit: the public API, the conformance kit (pretextflow.testing), the
scaffold (`pretextflow plugins new`), `pretextflow plugins check`, loader isolation and versioned keys.

Each deliberately broken plugin below breaks one contract point and must fail exactly that check
(checks that need it are skipped, not failed)."""

import dataclasses
import hashlib
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

import pretextflow.api as api
from pretextflow.api import (
    BackboneSpec,
    DatasetFormat,
    DecodedImage,
    Params,
    PretextTask,
    SourceCatalog,
    SourceEntry,
    StepOutput,
    hookimpl,
)
from pretextflow.core.errors import PluginError
from pretextflow.core.registry.registry import build_registry
from pretextflow.testing import (
    BACKBONE_CHECKS,
    DATASET_CHECKS,
    LOGGER_CHECKS,
    PRETEXT_CHECKS,
    ConformanceError,
    assert_conforms,
    check_backbone,
    check_dataset_format,
    check_pretext_task,
    registry_with,
)


def cli(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pretextflow", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def failed(results):
    return {r.name for r in results if r.failed}


def test_the_public_api_exports_the_contracts_with_type_hints():
    from pretextflow.core.registry import contracts, hookspecs

    assert set(api.__all__) >= {
        "hookimpl",
        "PretextTask",
        "StepOutput",
        "Params",
        "Requirements",
        "Backbone",
        "BackboneSpec",
        "BackboneParams",
        "TokenAPI",
        "DatasetFormat",
        "DatasetArrays",
        "ArrayDatasetFormat",
        "SourceCatalog",
        "SourceEntry",
        "DecodedImage",
        "Augmenter",
        "ViewSpec",
        "mlp",
        "two_views",
    }
    assert all(hasattr(api, name) for name in api.__all__)
    assert api.PretextTask is contracts.PretextTask and api.hookimpl is hookspecs.hookimpl
    assert "pretextflow.api" in contracts.__doc__
    assert PretextTask.forward.__annotations__["return"] in ("StepOutput", StepOutput)


def test_the_docs_cover_every_hook_public_name_and_check():
    from pretextflow.core.registry import hookspecs

    from .conftest import REPO

    text = (REPO / "docs" / "plugins.md").read_text()
    hooks = [n for n in vars(hookspecs) if n.startswith("pretextflow_")]
    assert len(hooks) == 4 and all(f"`{h}()`" in text for h in hooks)
    assert [n for n in api.__all__ if f"`{n}`" not in text and f"`pretextflow.api.{n}`" not in text] == []
    checks = set(PRETEXT_CHECKS) | set(BACKBONE_CHECKS) | set(DATASET_CHECKS) | set(LOGGER_CHECKS)
    assert [c for c in sorted(checks) if f"`{c}`" not in text] == []
    assert "[project.entry-points.pretextflow]" in text and "PRETEXTFLOW_BLOCK_PLUGINS" in text
    assert "docs/plugins.md" in (REPO / "README.md").read_text()


# --------------------------------------------------------------------------------------------
# Pretext tasks: a conforming one, and one broken plugin per check
# --------------------------------------------------------------------------------------------
class Good(PretextTask):
    """Is the image upside down? Every hook a broken variant overrides is a small method."""

    name, family = "kit-good", "predictive"

    class Params(Params):
        flip_p: float = 0.5

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.head = nn.Linear(backbone.num_features, 2)

    def targets(self, x, aug):
        return aug.bernoulli(x.shape[0], self.params.flip_p).long()

    def features(self, x):
        return self.backbone(x)

    def loss(self, logits, target):
        return F.cross_entropy(logits, target)

    def forward(self, images, aug):
        x = aug.view(images)
        t = self.targets(x, aug)
        x = torch.where(t.view(-1, 1, 1, 1).bool(), x.flip(2), x)
        return StepOutput(self.loss(self.head(self.features(x)), t), {"acc": 0.5})


class Unregistered(Good):
    name = "kit-unregistered"


class Clash(Good):
    name = "rotation"  # the built-in owns it


class LaxParams(Good):
    name = "kit-lax-params"

    class Params(BaseModel):  # not pretextflow's Params: extra keys are silently ignored
        flip_p: float = 0.5


class NotScalar(Good):
    name = "kit-not-scalar"

    def loss(self, logits, target):
        return F.cross_entropy(logits, target, reduction="none")


class NotFinite(Good):
    name = "kit-not-finite"

    def loss(self, logits, target):
        return F.cross_entropy(logits, target) * float("nan")


class NoGrad(Good):
    name = "kit-no-grad"

    def forward(self, images, aug):
        return StepOutput(super().forward(images, aug).loss.detach())


class Detached(Good):
    name = "kit-detached"

    def features(self, x):
        return self.backbone(x).detach()


class Nondeterministic(Good):
    name = "kit-nondeterministic"

    def features(self, x):
        return self.backbone(x * (0.9 + 0.1 * random.random()))  # Python's RNG: nobody seeds it


class HiddenState(Good):
    name = "kit-hidden-state"

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.steps = 0  # a schedule's state as a plain attribute: not in the state dict

    def on_step_end(self, step, total_steps):
        self.steps += 1

    def loss(self, logits, target):
        return F.cross_entropy(logits, target) * (1 + self.steps)


class HostTensor(Good):
    name = "kit-host-tensor"

    def targets(self, x, aug):
        return torch.arange(x.shape[0]) % 2  # no device=: on the CPU even when the batch is on a GPU


class PlainTensorAttribute(Good):
    name = "kit-plain-tensor"

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.class_weights = torch.ones(2)  # not a buffer: .to(device) leaves it behind

    def loss(self, logits, target):
        return F.cross_entropy(logits, target, weight=self.class_weights)


class NeedsLargerImages(Good):
    name = "kit-needs-12px"  # reconstructs a 12x12 corner but does not declare requires.min_image_size

    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.decoder = nn.Linear(backbone.num_features, 144)

    def forward(self, images, aug):
        x = aug.view(images)
        return StepOutput(F.mse_loss(self.decoder(self.backbone(x)), x[:, :1, :12, :12].flatten(1)))


def test_a_conforming_task_passes_every_check():
    results = check_pretext_task(Good, registry=registry_with(Good))
    assert [r.name for r in results] == list(PRETEXT_CHECKS)
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)
    assert "from (registry_with)" in results[0].detail and "linear top-1" in results[-1].detail


@pytest.mark.parametrize(
    "name",
    [
        "rotation",
        "jigsaw",
        "relative-location",
        "inpainting",
        "mae",
        "simclr",
        "moco",
        "byol",
        "simsiam",
        "barlow-twins",
        "vicreg",
        "dino",
    ],
)
def test_every_built_in_task_conforms(name):
    """The built-ins go through the same contract (the pipeline check is the one above, on Good)."""
    results = check_pretext_task(name, registry=build_registry(load_entry_points=False), pipeline=False)
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)


BROKEN_TASKS = [
    ("registered", Unregistered, "no installed plugin provides pretext 'kit-unregistered'"),
    ("registered", Clash, "provided by pretextflow"),
    ("params", LaxParams, "accepts an unknown key"),
    ("forward", NotScalar, "must be a scalar"),
    ("forward", NotFinite, "not finite"),
    ("forward", NoGrad, "does not require grad"),
    ("gradients", Detached, "no gradient reaches the backbone"),
    ("determinism", Nondeterministic, "same seed gave different losses"),
    ("state_dict", HiddenState, "registered buffers or parameters"),
    ("device", HostTensor, "would fail on a GPU: where at"),
    ("device", PlainTensorAttribute, "['class_weights'] are neither parameters nor buffers"),
    ("pipeline", NeedsLargerImages, "min_image_size"),
]


@pytest.mark.filterwarnings("ignore:Using a target size")  # NeedsLargerImages on 8px digits
@pytest.mark.parametrize("check, task, reason", BROKEN_TASKS, ids=[f"{c}-{t.__name__}" for c, t, _ in BROKEN_TASKS])
def test_a_task_that_breaks_one_contract_point_fails_exactly_that_check(check, task, reason):
    registry = build_registry(load_entry_points=False) if check == "registered" else registry_with(task)
    results = check_pretext_task(task, registry=registry)
    by_name = {r.name: r for r in results}
    assert failed(results) == {check}, "\n".join(r.line() for r in results)
    assert reason in by_name[check].detail, by_name[check].detail
    assert all(r.passed or r.skipped for r in results if r.name != check)
    with pytest.raises(ConformanceError, match=f"FAIL  {check}"):
        assert_conforms(task, registry=registry)


def test_downstream_checks_are_skipped_when_forward_fails():
    results = {r.name: r for r in check_pretext_task(NotScalar, registry=registry_with(NotScalar), pipeline=False)}
    assert {n for n, r in results.items() if r.skipped} == {"gradients", "determinism", "state_dict", "device"}
    assert results["state_dict"].detail == "needs forward, determinism to pass"


def test_a_task_that_hides_its_backbone_is_caught_before_freeze_exports_nothing():
    class Renamed(Good):
        name = "kit-renamed"

        def __init__(self, backbone, params):
            super().__init__(backbone, params)
            del self.backbone
            self.encoder = backbone

        def features(self, x):
            return self.encoder(x)

    results = {r.name: r for r in check_pretext_task(Renamed, registry=registry_with(Renamed), pipeline=False)}
    assert (
        results["state_dict"].failed
        and "keep the backbone you were given as `self.backbone`" in results["state_dict"].detail
    )
    assert results["gradients"].passed and results["forward"].passed


def test_the_host_tensor_guard_finds_tensors_made_without_device_and_nothing_else():
    from pretextflow.testing import HostTensorGuard

    x = torch.rand(4, 3)

    def problems(fn):
        with HostTensorGuard() as guard:
            fn()
        return guard.problems

    assert problems(lambda: x + torch.arange(3))[0].startswith("add at ")
    assert problems(lambda: F.cross_entropy(x, torch.zeros(4, dtype=torch.long)))
    assert problems(lambda: x + (torch.ones(3) * 2).exp())  # host-ness follows the computation
    for fine in (
        lambda: x + torch.arange(3, device=x.device),
        lambda: x + torch.arange(3).to(x.device),
        lambda: x * torch.tensor(2.0),
        lambda: x + x.new_zeros(4, 3),
        lambda: x[torch.tensor([0, 1])],
        lambda: x + torch.ones(3).type_as(x),
        lambda: x.clone().copy_(torch.ones(4, 3)),
        lambda: (x.cpu(), x + x),
    ):
        assert problems(fine) == []


def test_unknown_plugin_names_are_user_errors():
    with pytest.raises(PluginError, match=r"unknown pretext task 'nope'.*pip install -e \."):
        check_pretext_task("nope")
    with pytest.raises(PluginError, match="needs a source"):
        check_dataset_format("sklearn-digits")


# --------------------------------------------------------------------------------------------
# Backbones and dataset formats
# --------------------------------------------------------------------------------------------
def _body(in_chans, width=8):
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class _Wrap(nn.Module):
    def __init__(self, in_chans):
        super().__init__()
        self.body = _body(in_chans)


class WithUnused(_Wrap):
    def __init__(self, in_chans):
        super().__init__(in_chans)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        return self.body(x)


class HiddenScale(_Wrap):
    def __init__(self, in_chans):
        super().__init__(in_chans)
        self.scale = 1.0  # running statistic as a Python float: not saved

    def forward(self, x):
        if self.training:
            self.scale = max(self.scale, float(x.abs().max()) * 2)
        return self.body(x) / self.scale


class HostOnes(_Wrap):
    def forward(self, x):
        return self.body(x) * torch.ones(x.shape[0], 1)


def _randomly_initialised(name, p):
    net = _body(p.in_chans)
    g = torch.Generator()
    g.seed()  # from the OS: not reproducible
    with torch.no_grad():
        net[0].weight.normal_(generator=g)
    return net, 8


BROKEN_BACKBONES = [
    ("build", lambda name, p: _body(p.in_chans), "must return (nn.Module, num_features)"),
    ("forward", lambda name, p: (nn.Conv2d(p.in_chans, 8, 3, padding=1), 8), "must return (N, num_features)"),
    ("gradients", lambda name, p: (WithUnused(p.in_chans), 8), "get no gradient"),
    ("determinism", _randomly_initialised, "the same seed initialised different weights"),
    ("state_dict", lambda name, p: (HiddenScale(p.in_chans), 8), "computes other features"),
    ("device", lambda name, p: (HostOnes(p.in_chans), 8), "would fail on a GPU"),
]


def test_a_conforming_backbone_passes_and_a_foreign_one_fails_registration():
    spec = BackboneSpec(name="kit-cnn", build=lambda name, p: (_body(p.in_chans), 8))
    results = check_backbone(spec, registry=registry_with(spec))
    assert [r.name for r in results] == list(BACKBONE_CHECKS) and all(r.passed for r in results), results
    assert failed(check_backbone(spec, registry=build_registry(load_entry_points=False), pipeline=False)) == {
        "registered"
    }


@pytest.mark.parametrize("check, build, reason", BROKEN_BACKBONES, ids=[c for c, _, _ in BROKEN_BACKBONES])
def test_a_backbone_that_breaks_one_contract_point_fails_exactly_that_check(check, build, reason):
    spec = BackboneSpec(name=f"kit-{check}", build=build)
    results = check_backbone(spec, registry=registry_with(spec))
    assert failed(results) == {check}, "\n".join(r.line() for r in results)
    assert reason in next(r.detail for r in results if r.name == check)


def _blobs(n, rng, label=None):
    labels = (np.arange(n) % 4 if label is None else np.full(n, label)).astype(np.int64)
    images = rng.integers(0, 60, size=(n, 1, 8, 8)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, :, r * 4 : r * 4 + 4, q * 4 : q * 4 + 4] += 150
    return images, labels


class GoodFormat(DatasetFormat):
    """Blobs made up from their keys: scan lists them, read decodes exactly the entries given."""

    name = "kit-blobs"

    class Options(Params):
        n: int = 128

    def scan(self, source, options, storage_options):
        entries = [
            SourceEntry(f"{split}/{i:04d}", split, i % 4, "", f"{split}:{i}")
            for split, n in (("train", options.n), ("test", 32))
            for i in range(n)
        ]
        return SourceCatalog(["a", "b", "c", "d"], entries)

    def image(self, entry):
        split, i = entry.location.split(":")
        return _blobs(1, np.random.default_rng([int(i), split == "test"]), label=entry.label)[0][0]

    def read(self, source, entries, options, storage_options):
        for e in entries:
            image = self.image(e)
            yield DecodedImage(image, hashlib.sha256(image.tobytes()).hexdigest())


class LaxOptions(GoodFormat):
    class Options(BaseModel):
        n: int = 128


class ScansAList(GoodFormat):
    def scan(self, source, options, storage_options):
        return super().scan(source, options, storage_options).entries


class FloatImages(GoodFormat):
    def read(self, source, entries, options, storage_options):
        for item in super().read(source, entries, options, storage_options):
            yield dataclasses.replace(item, image=item.image.astype(np.float32) / 255)


class Unseeded(GoodFormat):
    def image(self, entry):
        return _blobs(1, np.random.default_rng(), label=entry.label)[0][0]  # another sample on every read


class IgnoresEntries(GoodFormat):
    def read(self, source, entries, options, storage_options):  # the first len(entries) images, whatever asked
        everything = sorted(self.scan(source, options, storage_options).entries, key=lambda e: (e.split, e.key))
        return super().read(source, everything[: len(entries)], options, storage_options)


BROKEN_FORMATS = [
    ("options", LaxOptions, "accepts an unknown key"),
    ("scan", ScansAList, "must return a SourceCatalog"),
    ("read", FloatImages, "must yield uint8"),
    ("determinism", Unseeded, "gave different images"),
    ("chunks", IgnoresEntries, "must decode exactly the entries"),
]


def test_a_conforming_dataset_format_passes_every_check():
    results = check_dataset_format(GoodFormat, source="memory://none", registry=registry_with(GoodFormat))
    assert [r.name for r in results] == list(DATASET_CHECKS) and all(r.passed for r in results), results


@pytest.mark.parametrize("check, fmt, reason", BROKEN_FORMATS, ids=[c for c, _, _ in BROKEN_FORMATS])
def test_a_dataset_format_that_breaks_one_contract_point_fails_exactly_that_check(check, fmt, reason):
    results = check_dataset_format(fmt, source="memory://none", registry=registry_with(fmt))
    assert failed(results) == {check}, "\n".join(r.line() for r in results)
    assert reason in next(r.detail for r in results if r.name == check)


# --------------------------------------------------------------------------------------------
# Loading stays robust: contract-breaking returns are reported by name and isolated
# --------------------------------------------------------------------------------------------
def test_contract_breaking_hook_returns_are_reported_and_the_rest_keep_working():
    class NotAList:
        @hookimpl
        def pretextflow_pretext_tasks(self):
            return Good

    class NotATask:
        @hookimpl
        def pretextflow_pretext_tasks(self):
            return [object()]

    class BadFamily:
        @hookimpl
        def pretextflow_pretext_tasks(self):
            return [type("Odd", (Good,), {"name": "kit-odd", "family": "telepathic"})]

    class Fine:
        @hookimpl
        def pretextflow_pretext_tasks(self):
            return [Good]

    reg = build_registry(
        extra_plugins=[
            ("not-a-list", NotAList()),
            ("not-a-task", NotATask()),
            ("bad-family", BadFamily()),
            ("fine", Fine()),
        ],
        load_entry_points=False,
    )
    reasons = {s.plugin: s.reason for s in reg.skipped}
    assert "must return a list, got type" in reasons["not-a-list"]
    assert "is not a PretextTask subclass" in reasons["not-a-task"]
    assert "family must be one of" in reasons["bad-family"]
    assert reg.pretext["kit-good"] is Good and "simclr" in reg.pretext


# --------------------------------------------------------------------------------------------
# Versions: upgrading a plugin retrains
# --------------------------------------------------------------------------------------------
def test_a_changed_plugin_version_changes_the_stage_keys(tmp_path, digits_config):
    from pretextflow.core.data.dataset import Dataset
    from pretextflow.core.stages import StageContext
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.workspace import Workspace

    images = np.zeros((4, 1, 8, 8), np.uint8)
    ds = Dataset(
        "digits",
        {"image_shape": [1, 8, 8], "md5": {"x": "0"}},
        images,
        np.zeros(4, np.int64),
        images,
        np.zeros(4, np.int64),
    )
    cfg = digits_config("pretext.name=kit-good", "pretext.params={}")
    base = registry_with(Good)

    def keys(pretext_version, backbone_version="0.1.0"):
        reg = dataclasses.replace(
            base,
            info=[
                dataclasses.replace(i, version=pretext_version)
                if i.name == "kit-good"
                else dataclasses.replace(i, version=backbone_version)
                if i.name == "convnet-s"
                else i
                for i in base.info
            ],
        )
        return StageContext(Workspace(tmp_path), cfg, reg, ArtifactStore("memory://kit-keys")).keys(ds)

    v1, v1_again, v2 = keys("1.0.0"), keys("1.0.0"), keys("1.1.0")
    assert v1 == v1_again
    assert v1["pretrain"] != v2["pretrain"] and v1["freeze"] != v2["freeze"] and v1["probe"] != v2["probe"]
    assert keys("1.0.0", backbone_version="0.2.0")["pretrain"] != v1["pretrain"]


# --------------------------------------------------------------------------------------------
# The scaffold and the CLI
# --------------------------------------------------------------------------------------------
BROKEN_PACKAGE = """
import random
import torch.nn.functional as F
from torch import nn
from pretextflow.api import Params, PretextTask, StepOutput, hookimpl

class Flaky(PretextTask):
    name, family = "kit-flaky", "predictive"
    class Params(Params):
        pass
    def __init__(self, backbone, params):
        super().__init__(backbone, params)
        self.head = nn.Linear(backbone.num_features, 2)
    def forward(self, images, aug):
        x = aug.view(images) * (0.9 + 0.1 * random.random())
        t = aug.bernoulli(x.shape[0], 0.5).long()
        return StepOutput(F.cross_entropy(self.head(self.backbone(x)), t))

@hookimpl
def pretextflow_pretext_tasks():
    return [Flaky]
"""


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory):
    """`pretextflow plugins new` from the command line, then pip-installed (with a broken package)."""
    root = tmp_path_factory.mktemp("scaffold")
    made = cli("plugins", "new", "upside-down", "--kind", "pretext", "--dir", str(root / "pkg"))
    assert made.returncode == 0, made.stderr
    files = {str(p.relative_to(root / "pkg")) for p in (root / "pkg").rglob("*") if p.is_file()}
    site = root / "site"
    broken = root / "broken"
    (broken / "kit_flaky").mkdir(parents=True)
    (broken / "kit_flaky" / "__init__.py").write_text(BROKEN_PACKAGE)
    (broken / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "kit-flaky"
        version = "0.0.1"
        [project.entry-points.pretextflow]
        kit-flaky = "kit_flaky"
        [tool.setuptools]
        packages = ["kit_flaky"]
    """)
    )
    for src in (root / "pkg", broken):
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
                str(site),
                str(src),
            ],
            check=True,
            capture_output=True,
        )
    return root / "pkg", made.stdout, site, files


@pytest.mark.slow
def test_scaffold_creates_an_installable_package_whose_tests_pass(scaffolded):
    pkg, out, site, files = scaffolded
    assert out.startswith(f"created {pkg}")
    assert files == {
        "pyproject.toml",
        "README.md",
        ".gitignore",
        "pretextflow_upside_down/__init__.py",
        "pretextflow_upside_down/task.py",
        "tests/test_conformance.py",
    }
    assert (
        '[project.entry-points.pretextflow]\nupside-down = "pretextflow_upside_down.task"'
        in (pkg / "pyproject.toml").read_text()
    )
    assert "from pretextflow.api import" in (pkg / "pretextflow_upside_down" / "task.py").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=pkg,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout


@pytest.mark.slow
def test_plugins_check_prints_a_line_per_check_and_exits_by_the_verdict(scaffolded):
    site = scaffolded[2]
    env = {"PYTHONPATH": str(site)}
    good = cli("plugins", "check", "upside-down", env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", c] for c in PRETEXT_CHECKS]
    assert "from pretextflow-upside-down 0.1.0" in lines[0]
    assert lines[-1] == "pretext 'upside-down': 8 passed, 0 failed, 0 skipped"

    bad = cli("plugins", "check", "kit-flaky", "--no-pipeline", env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL  determinism  the same seed gave different losses" in bad.stdout
    assert "SKIP  state_dict   needs determinism to pass" in bad.stdout
    assert bad.stdout.strip().splitlines()[-1] == "pretext 'kit-flaky': 5 passed, 1 failed, 1 skipped"


def test_scaffolded_backbone_and_dataset_packages_pass_the_kit(tmp_path, monkeypatch):
    import importlib

    from pretextflow.scaffold import scaffold

    scaffold("kit-tiny-cnn", "backbone", tmp_path / "bb")
    scaffold("kit-npz", "dataset", tmp_path / "ds")
    monkeypatch.syspath_prepend(str(tmp_path / "bb"))
    monkeypatch.syspath_prepend(str(tmp_path / "ds"))
    spec = importlib.import_module("pretextflow_kit_tiny_cnn.backbone").pretextflow_backbones()[0]
    fmt = importlib.import_module("pretextflow_kit_npz.dataset_format").KitNpz
    results = check_backbone(spec, registry=registry_with(spec))
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)

    rng = np.random.default_rng(0)
    x, y = _blobs(96, rng)
    xt, yt = _blobs(32, rng)
    np.savez(tmp_path / "tiny.npz", x_train=x[:, 0], y_train=y, x_test=xt[:, 0], y_test=yt)
    results = check_dataset_format(fmt, source=str(tmp_path / "tiny.npz"), registry=registry_with(fmt))
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)
    for rel in ("tests/test_conformance.py", "pyproject.toml", "README.md"):
        assert (tmp_path / "ds" / rel).exists() and (tmp_path / "bb" / rel).exists()


def test_plugins_new_refuses_bad_or_taken_names_and_plugins_still_lists(tmp_path):
    from typer.testing import CliRunner

    from pretextflow.cli import app

    runner = CliRunner()
    taken = runner.invoke(app, ["plugins", "new", "rotation", "--dir", str(tmp_path / "a")])
    assert taken.exit_code == 2 and "already provided" in taken.output
    bad = runner.invoke(app, ["plugins", "new", "My_Task", "--dir", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "is invalid" in bad.output
    kind = runner.invoke(app, ["plugins", "new", "x-task", "--kind", "loss", "--dir", str(tmp_path / "c")])
    assert kind.exit_code == 2 and "unknown plugin kind" in kind.output
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    busy = runner.invoke(app, ["plugins", "new", "x-task", "--dir", str(tmp_path / "d")])
    assert busy.exit_code == 2 and "not empty" in busy.output
    unknown = runner.invoke(app, ["plugins", "check", "no-such-plugin"])
    assert unknown.exit_code == 2 and "no plugin named 'no-such-plugin'" in unknown.output
    listing = runner.invoke(app, ["plugins"])
    assert listing.exit_code == 0 and "rotation" in listing.output and "sklearn-digits" in listing.output
