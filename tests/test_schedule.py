"""Scheduled retraining against a real Prefect server: `prefect server start` on 127.0.0.1 (a free
port, its own PREFECT_HOME), `pretextflow serve CONFIG --cron ...`, a run of the deployment
triggered through the API, and the completed flow run and its artifacts read back from the API.
Both processes are stopped at the end."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop(proc)


def test_serve_on_a_schedule_and_run_through_a_real_prefect_server(prefect_server, digits_workspace, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "serve-home"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pretextflow",
            "serve",
            str(REPO / "configs" / "digits_smoke.yaml"),
            "--cron",
            "0 4 * * *",
            "--name",
            "digits-nightly",
            "-w",
            str(digits_workspace.root),
            "--set",
            "data.source=null",
            "--set",
            "train.epochs=2",
            "--set",
            "probe.supervised.min_steps=50",
            "--set",
            "store.uri=artifacts-served",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    async def scenario():
        async with get_client() as client:
            deadline = time.monotonic() + 120
            while True:  # the served deployment appears once `serve` has registered it
                try:
                    dep = await client.read_deployment_by_name("pretextflow-pipeline/digits-nightly")
                    break
                except Exception:
                    if serve.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"serve did not register the deployment: {serve.stdout.read()[-3000:]}"
                        ) from None
                    await asyncio.sleep(1)
            crons = [s.schedule.cron for s in dep.schedules]
            run = await client.create_flow_run_from_deployment(dep.id)
            deadline = time.monotonic() + 600
            while True:
                fr = await client.read_flow_run(run.id)
                if fr.state and fr.state.is_final():
                    break
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"flow run not finished ({fr.state}): {serve.stdout.read()[-3000:]}")
                await asyncio.sleep(2)
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            return crons, fr, arts

    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            crons, flow_run, artifacts = asyncio.run(scenario())
    finally:
        stop(serve)
    assert crons == ["0 4 * * *"]
    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.parameters["refresh"] is True  # a scheduled run refreshes the data first
    kinds = sorted((a.type, a.key) for a in artifacts)
    assert ("markdown", "report-digits-smoke") in kinds and ("table", "label-efficiency-digits-smoke") in kinds


def test_prefect_yaml_deployments_point_at_a_loadable_flow():
    import inspect

    import yaml
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    from pretextflow.core.config import load_config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        loaded = load_flow_from_entrypoint(f"{REPO / path}:{func}")
        assert set(dep["parameters"]) <= set(inspect.signature(loaded.fn).parameters)
        cfg = load_config(REPO / dep["parameters"]["config_path"], dep["parameters"].get("overrides", []))
        assert cfg.report.regression_threshold == 0.01
        for s in dep["schedules"]:
            CronSchedule(cron=s["cron"], timezone=s.get("timezone"))


def test_serve_refuses_a_bad_cron_and_a_missing_server(monkeypatch):
    from typer.testing import CliRunner

    from pretextflow.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    config = str(REPO / "configs" / "digits_smoke.yaml")
    bad = CliRunner().invoke(app, ["serve", config, "--cron", "every night"])
    assert bad.exit_code == 2 and "not a cron expression" in bad.output
    no_server = CliRunner().invoke(app, ["serve", config, "--cron", "0 3 * * *"])
    assert no_server.exit_code == 2 and "prefect server start" in no_server.output
