"""The commands a user types, as subprocesses: exit codes, output, and the run they leave behind."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pretextflow", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"},
    )


def test_init_ingest_and_run_from_the_command_line(tmp_path):
    ws = tmp_path / "ws"
    assert cli("init", str(ws)).returncode == 0
    ingested = cli("ingest", "sklearn:digits", "--format", "sklearn-digits", cwd=ws)
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["name"] == "digits"
    assert (ws / "data.dvc").exists() and (ws / "data" / "digits" / "meta.json").exists()

    run = cli("run", str(REPO / "configs" / "digits_smoke.yaml"), "--set", "train.epochs=2", "-w", str(ws))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    folder = lines[0].removeprefix("run folder:").strip()
    assert folder.startswith(str(ws / "artifacts" / "runs"))
    assert os.path.exists(os.path.join(folder, "report.html")) and "features learned without labels" in lines[-1]
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["config"]["train"]["epochs"] == 2


def test_bad_input_exits_non_zero_with_the_fix(tmp_path):
    ws = tmp_path / "ws"
    cli("init", str(ws))
    out = cli("ingest", str(tmp_path / "nowhere"), "--format", "idx", "--name", "x", cwd=ws)
    assert out.returncode == 2 and "An idx source is a folder" in out.stderr and "Traceback" not in out.stderr
    out = cli("ingest", "sklearn:digits", "--format", "parquet", cwd=ws)
    assert out.returncode == 2 and "unknown dataset format 'parquet'" in out.stderr
    out = cli("probe", str(REPO / "configs" / "digits_smoke.yaml"), "-w", str(ws))
    assert out.returncode == 2 and "Ingest it first" in out.stderr
    assert not (ws / "data").exists()  # nothing half-written
