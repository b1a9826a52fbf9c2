"""Test set-up: Prefect and DVC never touch the user's home; every workspace is a temp folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Must happen before prefect is imported anywhere: a throw-away Prefect home, no telemetry,
# and a temporary local server (no PREFECT_API_URL) for flow runs.
_PREFECT_HOME = tempfile.mkdtemp(prefix="pretextflow-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")  # 20 s is tight on 2 busy cores
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["PRETEXTFLOW_CACHE_DIR"] = os.path.join(_PREFECT_HOME, "pretextflow-cache")  # the plugin listing cache
os.environ.pop("PRETEXTFLOW_LOAD_PLUGINS", None)
os.environ.pop("PRETEXTFLOW_BLOCK_PLUGINS", None)

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def finished_run(cfg, workspace_root) -> str:
    """pretrain -> freeze -> probe -> report for ``cfg`` in process; the run folder's URI."""
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe, run_report

    ctx = StageContext.create(cfg, str(workspace_root))
    run_pretrain(ctx)
    run_freeze(ctx)
    run_probe(ctx)
    return run_report(ctx)["run_uri"]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


@pytest.fixture
def workspace(tmp_path):
    from pretextflow.core.data.versioning import init_workspace

    return init_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def digits_workspace(tmp_path_factory):
    """A workspace with the digits dataset ingested (and pushed to its local DVC remote)."""
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace

    ws = init_workspace(tmp_path_factory.mktemp("digits") / "ws")
    ingest(ws, "sklearn:digits", "sklearn-digits", "digits")
    return ws


@pytest.fixture
def crash_then_resume():
    """``run(ctx, at_step)``: pretrain ``ctx``, crash it after optimizer step ``at_step`` (the
    checkpoints it wrote stay), then run it again, resuming from its last checkpoint."""
    from pretextflow.core.stages import run_pretrain

    class Crash(Exception):
        pass

    def crash_at(step: int):
        def on_step(done: int) -> None:
            if done == step:
                raise Crash

        return on_step

    def run(ctx, at_step: int) -> None:
        with pytest.raises(Crash):
            run_pretrain(ctx, on_step=crash_at(at_step))
        run_pretrain(ctx)

    return run


@pytest.fixture
def digits_config():
    from pretextflow.core.config import load_config

    def make(*overrides: str):
        return load_config(REPO / "configs" / "digits_smoke.yaml", ["train.epochs=3", *overrides])

    return make


def require_fashion_mnist():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION_DIR} is missing in CI: .ci/run must install dataset-fashion-mnist")
        pytest.skip(f"{FASHION_DIR} not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR
