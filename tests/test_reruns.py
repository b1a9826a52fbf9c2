"""Issue 5: content-addressed stages, exact reruns, refresh-and-retrain, regressions, the lock."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretextflow.core.errors import StageInputError

from .conftest import REPO

pytestmark = pytest.mark.slow

FAST = ["train.epochs=2", "probe.supervised.min_steps=50", "probe.supervised.epochs=5"]


def write_digits_idx(folder: Path, drop: int = 0) -> None:
    """The real 8x8 digits as an IDX source; ``drop`` removes training images (a new data version)."""
    from sklearn.datasets import load_digits

    from pretextflow.plugins.datasets.idx import FILES

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target.astype(np.uint8)
    arrays = {
        "train_images": images[drop:1400],
        "train_labels": labels[drop:1400],
        "test_images": images[1400:],
        "test_labels": labels[1400:],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        a = arrays[key]
        payload = bytes([0, 0, 8, a.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in a.shape) + a.tobytes()
        (folder / f"{stem}.gz").write_bytes(gzip.compress(payload, mtime=0))


def config(source: Path, *overrides: str) -> dict:
    from pretextflow.core.config import load_config

    return load_config(
        REPO / "configs" / "digits_smoke.yaml",
        ["name=digits-idx", "data.name=digits-idx", f"data.source={source}", "data.format=idx", *FAST, *overrides],
    ).model_dump(mode="json")


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.flows.pipeline import pipeline_flow

    root = tmp_path_factory.mktemp("reruns")
    write_digits_idx(root / "source")
    ws = init_workspace(root / "ws")
    cfg = config(root / "source")
    return root, ws, cfg, pipeline_flow(cfg, str(ws.root))


def manifest_of(result: dict) -> dict:
    from pretextflow.core.store import ArtifactStore

    return ArtifactStore(result["run_uri"]).read_json("manifest.json")


def test_rerun_without_cache_is_bit_identical(first, tmp_path):
    from pretextflow.flows.rerun import rerun

    root, ws, cfg, result = first
    out = rerun(result["run_uri"], workspace=str(tmp_path / "rerun"), no_cache=True)
    assert out["identical"] and out["tolerance"] == 0.0
    assert {r["metric"] for r in out["rows"]} >= {"linear_top1", "knn_top1", "label_efficiency.1%.supervised_top1"}
    assert not any(out["stages"][s]["cached"] for s in ("pretrain", "freeze", "probe"))  # really recomputed
    # the data came from the DVC remote recorded in the manifest, into a workspace of its own
    assert (tmp_path / "rerun" / "data.dvc").exists() and (tmp_path / "rerun" / "data" / "digits-idx").is_dir()
    assert manifest_of(result)["dvc_remote"].endswith(".dvc-remote")


def test_rerun_from_the_command_line_reports_and_exits_zero(first, tmp_path):
    root, ws, cfg, result = first
    proc = subprocess.run(
        [sys.executable, "-m", "pretextflow", "rerun", result["run_uri"], "-w", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "identical: every metric matches" in proc.stdout
    assert "cached stages: pretrain, freeze, probe" in proc.stdout  # the recorded store still has them
    runs = subprocess.run(
        [sys.executable, "-m", "pretextflow", "runs", "--store", str(ws.root / "artifacts"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    listed = json.loads(runs.stdout)
    assert result["run_id"] in [r["run_id"] for r in listed]
    assert {"run_id", "created_at", "data_version", "name", "linear_top1", "knn_top1"} <= set(listed[0])


def test_rerun_of_a_missing_run_says_what_to_pass(tmp_path):
    from pretextflow.flows.rerun import rerun

    with pytest.raises(StageInputError, match="pretextflow runs"):
        rerun(str(tmp_path / "nope"))


def test_changing_only_the_probe_recomputes_only_probe_and_report(first):
    from pretextflow.flows.pipeline import pipeline_flow

    root, ws, cfg, result = first
    changed = json.loads(json.dumps(cfg))
    changed["probe"]["knn_k"] = [10]
    stages = manifest_of(pipeline_flow(changed, str(ws.root)))["stages"]
    assert stages["pretrain"]["cached"] and stages["freeze"]["cached"]
    assert not stages["probe"]["cached"]


def test_a_deleted_artifact_is_recomputed_not_served_from_prefect_cache(first):
    from pretextflow.core.store import ArtifactStore
    from pretextflow.flows.pipeline import pipeline_flow

    root, ws, cfg, result = first
    m = manifest_of(result)
    store = ArtifactStore(m["artifacts"]["freeze"]["uri"].rsplit("/freeze/", 1)[0])
    store.fs.rm(store.path("freeze", m["artifacts"]["freeze"]["key"]), recursive=True)
    again = pipeline_flow(cfg, str(ws.root))
    stages = manifest_of(again)["stages"]
    assert stages["pretrain"]["cached"] and not stages["freeze"]["cached"] and stages["probe"]["cached"]
    assert store.is_complete("freeze", m["artifacts"]["freeze"]["key"])
    assert again["metrics"]["linear_top1"] == result["metrics"]["linear_top1"]


def test_new_data_version_retrains_and_compares_with_the_previous_run(first):
    from pretextflow.flows.pipeline import pipeline_flow

    root, ws, cfg, result = first
    unchanged = manifest_of(pipeline_flow(cfg, str(ws.root), refresh=True))
    assert all(unchanged["stages"][s]["cached"] for s in ("pretrain", "freeze", "probe"))
    assert unchanged["previous_run"]["same_keys"] is True

    write_digits_idx(root / "source", drop=200)  # the source changed: a new data version
    after = manifest_of(pipeline_flow(cfg, str(ws.root), refresh=True))
    assert after["data_version"] != unchanged["data_version"]
    assert not any(after["stages"][s]["cached"] for s in ("pretrain", "freeze", "probe"))
    prev = after["previous_run"]
    assert prev["data_version"] == unchanged["data_version"] and prev["same_keys"] is False
    row = next(r for r in prev["comparison"] if r["metric"] == "linear_top1")
    assert row["before"] == unchanged["metrics"]["linear_top1"] and row["after"] == after["metrics"]["linear_top1"]
    from pretextflow.core.store import ArtifactStore

    html = ArtifactStore(after["artifacts"]["report"]["uri"]).read_bytes("report.md").decode()
    assert "Compared with the previous run" in html
    write_digits_idx(root / "source")  # back to the first version for the other tests


def test_regression_threshold_fails_the_run_and_says_why():
    from pretextflow.core.runs.history import check_regression

    prev = {"run_id": "r1", "data_version": "a.dir", "metrics": {"linear_top1": 0.90}}
    now = {"data_version": "b.dir", "metrics": {"linear_top1": 0.87}}
    msg = check_regression(now, prev, threshold=0.02)
    assert msg and "0.9000" in msg and "0.8700" in msg and "3.00 points" in msg and "regression_threshold" in msg
    assert check_regression(now, prev, threshold=0.05) is None
    assert check_regression(now, None, threshold=0.0) is None


def test_regression_marks_the_flow_run_failed(first):
    from pretextflow.core.runs.history import RegressionError, previous_run
    from pretextflow.core.store import ArtifactStore
    from pretextflow.flows.pipeline import pipeline_flow

    root, ws, cfg, result = first
    worse = json.loads(json.dumps(cfg))
    worse["train"]["epochs"] = 1  # retrained for less: the probe accuracy changes
    worse["report"]["regression_threshold"] = 0.0
    store = ArtifactStore(str(ws.root / "artifacts"))
    before = previous_run(store, "digits-idx")["metrics"]["linear_top1"]
    try:
        out = pipeline_flow(worse, str(ws.root))
    except RegressionError as exc:  # the flow run fails, saying why; the report is still written
        assert "more than the allowed report.regression_threshold=0 points" in str(exc) and "Report:" in str(exc)
        latest = previous_run(store, "digits-idx")
        assert latest["regression"] and latest["metrics"]["linear_top1"] < before
    else:  # deterministic: this only happens if one epoch is no worse, and then nothing is flagged
        assert out["metrics"]["linear_top1"] >= before


def test_code_version_is_part_of_the_key(tmp_path):
    from pretextflow.core.keys import code_digest

    mod = tmp_path / "stage_mod.py"
    mod.write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        import stage_mod

        first_digest = code_digest(stage_mod)
        mod.write_text("X = 2\n")
        importlib.reload(stage_mod)
        assert code_digest(stage_mod) != first_digest
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("stage_mod", None)


def test_two_runs_at_once_do_not_corrupt_the_workspace(first, tmp_path):
    """A scheduled and a manual ingest of two versions at the same time: DVC operations are
    serialised by the workspace lock; data/ and data.dvc end consistent (dvc status clean)."""
    from pretextflow.core.data.versioning import data_version, dvc

    root, ws, cfg, result = first
    write_digits_idx(tmp_path / "v2", drop=100)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pretextflow",
                "ingest",
                str(src),
                "--format",
                "idx",
                "--name",
                name,
                "-w",
                str(ws.root),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for src, name in ((root / "source", "digits-idx"), (tmp_path / "v2", "digits-v2"))
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    assert "modified" not in dvc(ws, "status") and data_version(ws).endswith(".dir")
    assert (ws.root / "data" / "digits-v2" / "meta.json").exists()
