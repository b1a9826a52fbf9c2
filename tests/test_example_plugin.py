"""The example third-party package (examples/pretextflow-denoising), installed with pip by
`make example` (which `make test`, hence CI, runs first): it passes the conformance checks from the
command line and its own tests, and trains through the real pipeline, recorded in the manifest."""

import math
import os
import subprocess
import sys
import uuid
from importlib import metadata

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "pretextflow-denoising"


@pytest.fixture(scope="module")
def example_installed():
    eps = [ep for ep in metadata.entry_points(group="pretextflow") if ep.name == "denoising"]
    if not eps:
        message = "the example plugin is not installed: run `make example` (pip install examples/pretextflow-denoising)"
        if os.environ.get("CI"):
            pytest.fail(message + " - CI must install it (make test depends on make example)")
        pytest.skip(message)
    return eps[0].dist.version


def test_plugins_check_passes_from_the_command_line(example_installed):
    proc = subprocess.run(
        [sys.executable, "-m", "pretextflow", "plugins", "check", "denoising"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["PASS", c]
        for c in ("registered", "params", "forward", "gradients", "determinism", "state_dict", "device", "pipeline")
    ]
    assert "from pretextflow-denoising 0.1.0" in lines[0]
    assert lines[-1] == "pretext 'denoising': 8 passed, 0 failed, 0 skipped"


def test_the_example_package_own_tests_pass(example_installed):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout


def test_trains_through_the_pipeline_and_the_manifest_names_the_package(example_installed, digits_workspace):
    import fsspec

    from pretextflow.core.config import load_config
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe, run_report

    store = f"memory://example-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        EXAMPLE / "digits.yaml",
        [
            "train.epochs=1",
            "probe.label_fractions=[1.0]",
            "probe.baselines=[]",
            "data.source=null",
            f"store.uri={store}",
        ],
    )
    ctx = StageContext.create(cfg, str(digits_workspace.root))
    try:
        pretrained = run_pretrain(ctx)
        assert not pretrained["cached"] and math.isfinite(pretrained["final_loss"])
        run_freeze(ctx)
        metrics = run_probe(ctx)["metrics"]
        assert metrics["linear_top1"] > 0.5 and metrics["knn_top1"] > 0.5  # 10 classes: chance is 0.1
        manifest = run_report(ctx)["manifest"]
        assert manifest["plugins"]["pretext"] == {
            "name": "denoising",
            "package": "pretextflow-denoising",
            "version": example_installed,
        }
        assert manifest["packages"]["pretextflow-denoising"] == example_installed
        assert manifest["config"]["pretext"]["params"] == {
            "noise_std": 0.3,
            "drop_p": 0.25,
            "decoder_hidden": 256,
            "crop_scale_min": 0.6,
        }
    finally:
        fsspec.filesystem("memory").rm(store.split("://", 1)[1], recursive=True)
