"""The digits pipeline end to end through Prefect (temporary PREFECT_HOME, temporary server)."""

import asyncio
import json

import pytest

from pretextflow.core.errors import StageInputError
from pretextflow.core.stages import StageContext, run_probe, run_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(digits_workspace):
    from pretextflow.core.config import load_config
    from pretextflow.flows.pipeline import pipeline_flow

    from .conftest import REPO

    cfg = load_config(REPO / "configs" / "digits_smoke.yaml", ["train.epochs=3"]).model_dump(mode="json")
    result = pipeline_flow(cfg, str(digits_workspace.root))
    return cfg, result


def test_pipeline_writes_run_folder_manifest_and_report(first_run, digits_workspace):
    from pretextflow.core.store import ArtifactStore

    cfg, result = first_run
    run = ArtifactStore(result["run_uri"])
    assert set(run.listdir()) >= {
        "manifest.json",
        "report.md",
        "report.html",
        "pretrain_loss.png",
        "probe_accuracy.png",
    }
    m = run.read_json("manifest.json")
    from pretextflow.core.data.versioning import data_version

    assert m["data_version"] == data_version(digits_workspace) and m["data_version"].endswith(".dir")
    assert m["config"]["seed"] == 0 and m["config"]["pretext"]["params"]["proj_dim"] == 128
    assert m["code_version"]["pretextflow"] and "commit" in m["code_version"]
    assert m["packages"]["torch"] and m["packages"]["prefect"].startswith("3.")
    assert m["device"] == "cpu" and m["seed"] == 0
    assert set(m["artifacts"]) >= {"pretrain", "freeze", "probe", "report"}
    metrics = m["metrics"]
    for value in (
        metrics["linear_top1"],
        metrics["knn_top1"],
        metrics["baselines"]["random_init"]["linear_top1"],
        metrics["baselines"]["pixels"]["linear_top1"],
    ):
        assert 0.0 <= value <= 1.0
    assert metrics["linear_top1"] > 0.5  # far above the 10% chance level, on 450 test digits
    assert metrics["knn"]["k"] == 20 and metrics["knn"]["temperature"] == 0.07
    html = run.read_bytes("report.html").decode()
    assert "data:image/png;base64," in html and m["data_version"] in html
    report = run.read_bytes("report.md").decode()
    assert report.splitlines()[2].startswith("With 1% of the labels (")  # the headline answers the question
    assert "## Label efficiency" in report
    rows = metrics["label_efficiency"]
    assert [r["fraction"] for r in rows] == [0.01, 0.1, 1.0]
    for r in rows:
        assert {
            "fraction",
            "ssl_linear_top1",
            "supervised_top1",
            "random_init_linear_top1",
            "pixels_linear_top1",
            "knn",
        } <= set(r)
        assert r["knn"] == {"k": 20, "temperature": 0.07, "top1_by_k": r["knn"]["top1_by_k"]}
    assert rows[-1]["ssl_linear_top1"] == metrics["linear_top1"]  # 100% of the labels is the main probe
    assert set(run.listdir()) >= {"label_efficiency.png", "confusion.png", "retrieval.png", "projection.png"}


def test_prefect_recorded_the_flow_run_and_artifacts(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=["report-digits-smoke", "metrics-digits-smoke", "label-efficiency-digits-smoke"]
                    )
                )
            )
            runs = await client.read_flow_runs()
            return arts, runs

    arts, runs = asyncio.run(read())
    assert {(a.type, a.key) for a in arts} == {
        ("markdown", "report-digits-smoke"),
        ("table", "metrics-digits-smoke"),
        ("table", "label-efficiency-digits-smoke"),
    }
    assert any(r.state and r.state.is_completed() for r in runs)


def test_rerun_hits_every_cache_and_gives_identical_metrics(first_run, digits_workspace):
    from pretextflow.flows.pipeline import pipeline_flow

    cfg, result = first_run
    again = pipeline_flow(cfg, str(digits_workspace.root))
    from pretextflow.core.store import ArtifactStore

    stages = ArtifactStore(again["run_uri"]).read_json("manifest.json")["stages"]
    assert all(stages[s]["cached"] for s in ("ingest", "pretrain", "freeze", "probe"))
    assert again["metrics"] == result["metrics"]


def test_same_seed_twice_gives_identical_metrics_without_cache(first_run, digits_workspace):
    """A fresh artifact store recomputes everything: the numbers must match exactly (CPU)."""
    from pretextflow.flows.pipeline import pipeline_flow

    cfg, result = first_run
    fresh = json.loads(json.dumps(cfg))
    fresh["store"]["uri"] = "artifacts-second"
    again = pipeline_flow(fresh, str(digits_workspace.root))

    def timeless(rows):  # wall-clock seconds are the only thing allowed to differ
        return [
            {
                k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v)
                for k, v in r.items()
            }
            for r in rows
        ]

    for key in ("linear_top1", "knn_top1", "baselines", "confusion_matrix"):
        assert again["metrics"][key] == result["metrics"][key]
    assert timeless(again["metrics"]["label_efficiency"]) == timeless(result["metrics"]["label_efficiency"])


def test_stage_alone_without_upstream_says_what_to_run(digits_workspace, digits_config):
    ctx = StageContext.create(digits_config("store.uri=artifacts-empty"), str(digits_workspace.root))
    with pytest.raises(StageInputError, match="pretextflow freeze CONFIG"):
        run_probe(ctx)
    with pytest.raises(StageInputError, match="pretextflow pretrain CONFIG"):
        run_report(ctx)
