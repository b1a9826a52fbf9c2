"""Stage code versions come from the import graph: each stage's key covers every project module it
imports, transitively, and only those."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretextflow.core import keys
from pretextflow.core.config import load_config
from pretextflow.core.registry.registry import get_registry
from pretextflow.core.stages import StageContext

STAGES = ("pretrain", "freeze", "probe")


@pytest.fixture
def ctx():
    cfg = load_config("configs/digits_smoke.yaml")
    return StageContext(ws=None, cfg=cfg, registry=get_registry(), store=None)


def _versions(ctx) -> dict[str, str]:
    return {stage: ctx.code_version(stage) for stage in STAGES}


def _edit(monkeypatch, suffix: str) -> None:
    """Stand in an edited copy of the one source file whose path ends with ``suffix``."""
    real = keys.read_source
    hits = []

    def edited(path: str) -> bytes:
        data = real(path)
        if path.replace("\\", "/").endswith(suffix):
            hits.append(path)
            return data + b"\n# one edited log line\n"
        return data

    monkeypatch.setattr(keys, "read_source", edited)
    return hits


@pytest.mark.parametrize(
    ("module", "changed"),
    [
        ("core/training/loop.py", {"pretrain"}),  # imported only by pretraining
        ("core/training/launch.py", {"pretrain"}),  # reached only through the loop
        ("core/evaluation/supervised.py", {"probe"}),  # imported only by the probe stage
        ("core/evaluation/features.py", {"probe"}),
        ("core/training/checkpoint.py", {"pretrain", "freeze", "probe"}),  # the probe loads the frozen weights
        ("core/toolkit/augment.py", {"pretrain", "freeze", "probe"}),  # the contracts (every stage) use it
        ("plugins/pretext/simclr.py", {"pretrain"}),  # the config's pretext task
        ("plugins/pretext/byol.py", set()),  # another task: no stage of this config runs it
        ("plugins/backbones/convnet.py", {"pretrain", "probe"}),
        ("core/runs/report.py", set()),  # the report stage is never cached
    ],
)
def test_editing_a_module_changes_exactly_the_keys_of_the_stages_that_import_it(ctx, monkeypatch, module, changed):
    assert ctx.cfg.pretext.name == "simclr" and ctx.cfg.backbone.name == "convnet-s"
    before = _versions(ctx)
    _edit(monkeypatch, module)
    after = _versions(ctx)
    assert {s for s in STAGES if before[s] != after[s]} == changed


def test_the_supervised_baseline_key_ignores_the_training_loop(monkeypatch):
    from pretextflow.core.evaluation import supervised

    backbone = get_registry().backbone("convnet-s").build
    before = keys.code_digest(supervised, backbone)
    _edit(monkeypatch, "core/training/loop.py")
    assert keys.code_digest(supervised, backbone) == before
    _edit(monkeypatch, "core/toolkit/schedules.py")  # its lr schedule
    assert keys.code_digest(supervised, backbone) != before


@pytest.mark.parametrize("module", ["pretextflow.core.training.loop", "pretextflow.core.evaluation.probe"])
def test_the_closure_holds_every_project_module_that_importing_the_stage_loads(module):
    """Computed, not listed: whatever a fresh interpreter loads of pretextflow when it imports the
    stage's module is in the stage's code version (plugin modules are added per config)."""
    code = (
        f"import json, sys, {module} as m\n"
        "print(json.dumps([getattr(v, '__file__', None) for k, v in sys.modules.items()"
        " if k.startswith('pretextflow') and not k.startswith('pretextflow.plugins')]))"
    )
    loaded = {f for f in json.loads(subprocess.check_output([sys.executable, "-c", code], text=True)) if f}
    mod = __import__(module, fromlist=["_"])
    closure = keys.import_closure(mod.__name__, mod.__file__)
    assert loaded - closure == set()


def test_the_digest_names_files_relative_to_their_package():
    """Keys agree between a checkout and an installed wheel: the digest hashes package-relative
    names and contents, not absolute paths."""
    from pretextflow.core.training import loop

    closure = keys.import_closure(loop.__name__, loop.__file__)
    assert all("/" in keys._relative(p) and not keys._relative(p).startswith("/") for p in closure)
