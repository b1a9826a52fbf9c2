"""Sweeps: --grid parsing and up-front validation (no training), then real sweeps on the digits
config through the thread and Dask task runners, the `sweep` command, and a failing point.
Small budgets (2 epochs on 640 images, short probes): the whole file runs in about a minute on 2 cores."""

import asyncio
import json

import pytest

from pretextflow.core.config import load_config
from pretextflow.core.errors import ConfigError
from pretextflow.core.runs.sweep import SWEEPS, parse_grid, plan_sweep, split_values, with_threads
from pretextflow.core.store import ArtifactStore

from .conftest import REPO

CONFIG = REPO / "configs" / "digits_smoke.yaml"
SMALL = [
    "train.epochs=2",
    "train.max_train_samples=640",
    "probe.label_fractions=[0.1,1.0]",
    "probe.baselines=[supervised]",
    "probe.supervised.min_steps=30",
    "probe.linear_max_iter=50",
    "probe.linear_weight_decays=[0.0001,0.001]",
    "probe.knn_k=[20]",
]


def base(*overrides: str) -> dict:
    return load_config(CONFIG, [*SMALL, *overrides]).model_dump(mode="json")


# -- parsing, expansion, validation (no training) -------------------------------------------------
def test_grid_values_are_yaml_and_shorthands_expand():
    axes = parse_grid(
        [
            "pretext=simclr,byol",
            "train.lr=0.001,0.002",
            "probe.knn_k=[20,5],[200]",
            "train.amp=true,false",
            "backbone=convnet-s",
        ]
    )
    assert [a.key for a in axes] == ["pretext.name", "train.lr", "probe.knn_k", "train.amp", "backbone.name"]
    assert [a.label for a in axes][0] == "pretext"
    assert axes[0].values == ("simclr", "byol")
    assert axes[1].values == (0.001, 0.002) and all(isinstance(v, float) for v in axes[1].values)
    assert axes[2].values == ([20, 5], [200])
    assert axes[3].values == (True, False)
    assert split_values("[1,2], {a: 1, b: 2},'x,y'") == ["[1,2]", "{a: 1, b: 2}", "'x,y'"]


def test_expansion_names_points_resets_plugin_params_and_dedupes():
    cfg = base()
    _, points = plan_sweep(cfg, ["pretext=simclr,rotation", "seed=0,1"])
    assert [p.name for p in points] == [
        "digits-smoke-pretext=simclr-seed=0",
        "digits-smoke-pretext=simclr-seed=1",
        "digits-smoke-pretext=rotation-seed=0",
        "digits-smoke-pretext=rotation-seed=1",
    ]
    simclr, rotation = points[0].config, points[2].config
    assert simclr["pretext"] == {"name": "simclr", "params": cfg["pretext"]["params"]} and points[0].reset == []
    # simclr's params (temperature, ...) belong to simclr: a rotation point starts from rotation's defaults
    assert rotation["pretext"] == {"name": "rotation", "params": {}} and points[2].reset == ["pretext.params"]
    assert [p.config["seed"] for p in points] == [0, 1, 0, 1]
    assert all(p.config["name"] == p.name and p.config["train"]["epochs"] == 2 for p in points)  # --set kept

    # 0.001 and 1e-3 are the same validated config: it runs once, the duplicate is recorded
    _, points = plan_sweep(cfg, ["train.lr=0.001,1e-3,0.004"])
    assert [p.name for p in points] == ["digits-smoke-train.lr=0.001", "digits-smoke-train.lr=0.004"]
    assert points[0].duplicates == ["digits-smoke-train.lr=1e-3"]

    # train.threads: filled in unless the user set it (here: through the grid)
    _, points = plan_sweep(cfg, ["train.threads=3,4", "seed=5"])
    with_threads(points, 1)
    assert [p.config["train"]["threads"] for p in points] == [3, 4]
    _, points = plan_sweep(cfg, ["seed=5"])
    with_threads(points, 1)
    assert points[0].config["train"]["threads"] == 1


@pytest.mark.parametrize(
    "grid, expected",
    [
        (
            ["train.lrr=0.1,0.2"],
            ["--grid 'train.lrr=0.1,0.2'", "train.lrr is not a config key", "Did you mean train.lr?"],
        ),
        (
            ["pretext=simclr,byoll"],
            ["digits-smoke-pretext=byoll", "unknown pretext task 'byoll'", "--grid pretext", "nothing has run yet"],
        ),
        (
            ["train.lr=0.001,-1"],
            ["train.lr=-1", "train.lr: Input should be greater than 0", "Fix or drop that value of --grid train.lr"],
        ),
        (["probe.label_fractions=[0.1],[2]"], ["probe.label_fractions", "every fraction must be in (0, 1]"]),
        (
            ["pretext=rotation", "pretext.params.temperature=0.2"],
            ["pretext.params.temperature: unknown key", "belong to its simclr"],
        ),
        (["seed="], ["--grid 'seed='", "no values"]),
        (["seed=0,,1"], ["value 2 is empty", "remove the extra comma"]),
        (["seed"], ["expected KEY=v1,v2"]),
        (["seed=0,1", "seed=2"], ["both set seed", "give each key once"]),
        (["pretext=simclr", "pretext.name=byol"], ["both set pretext.name"]),
        (["train.epochs.max=1"], ["train.epochs is a single value, not a section"]),
        (["seed=[0,"], ["is not valid YAML"]),
        ([], ["at least one --grid"]),
    ],
)
def test_bad_grids_fail_up_front_naming_the_grid_key_and_the_fix(grid, expected):
    with pytest.raises(ConfigError) as err:
        plan_sweep(base(), grid)
    for text in expected:
        assert text in str(err.value), str(err.value)


def test_prefect_sweep_yaml_deploys_a_loadable_flow_with_a_valid_grid():
    import inspect

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((REPO / "prefect-sweep.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        loaded = load_flow_from_entrypoint(f"{REPO / path}:{func}")
        assert loaded.name == "pretextflow-sweep-config" and not dep.get("schedules")
        params = dep["parameters"]
        assert set(params) <= set(inspect.signature(loaded.fn).parameters)
        cfg = load_config(REPO / params["config_path"], params.get("overrides", [])).model_dump(mode="json")
        assert len(plan_sweep(cfg, params["grid"])[1]) == 4


# -- real sweeps ----------------------------------------------------------------------------------
def run_sweep(workspace, grid, runner="thread", workers=2, store="artifacts-sweep", return_state=False):
    from pretextflow.flows.sweep import point_threads, sweep_flow, task_runner

    flow = sweep_flow.with_options(task_runner=task_runner(runner, workers))
    return flow(
        base(f"store.uri={store}"),
        grid,
        str(workspace.root),
        False,
        point_threads(runner, workers),
        runner,
        workers,
        return_state=return_state,
    )


def read_artifacts(keys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))

    return asyncio.run(read())


@pytest.fixture(scope="module")
def thread_sweep(digits_workspace):
    return run_sweep(digits_workspace, ["pretext=simclr,rotation", "seed=0,1"])


def test_thread_sweep_runs_every_point_and_writes_one_comparison(thread_sweep, digits_workspace):
    from pretextflow.flows.sweep import cpu_cores

    summary = thread_sweep
    store = ArtifactStore(str(digits_workspace.root / "artifacts-sweep"))
    assert summary["uri"] == store.uri_of(SWEEPS, summary["sweep_id"])
    on_disk = store.read_json(SWEEPS, summary["sweep_id"], "sweep.json")
    rows = on_disk["rows"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows) and on_disk["failed"] == []
    assert {(r["values"]["pretext"], r["values"]["seed"]) for r in rows} == {
        ("simclr", 0),
        ("simclr", 1),
        ("rotation", 0),
        ("rotation", 1),
    }
    tops = [r["linear_top1"] for r in rows]
    assert tops == sorted(tops, reverse=True) and all(0.5 < t <= 1 for t in tops)  # best first; far above chance
    assert len({r["keys"]["probe"] for r in rows}) == 4 and len({r["keys"]["pretrain"] for r in rows}) == 4
    for r in rows:
        assert r["label_efficiency"] and r["label_efficiency"][0]["fraction"] == 0.1
        assert r["label_efficiency"][0]["supervised_top1"] is not None and r["pretrain_seconds"] > 0
        assert r["cached"] == {"pretrain": False, "freeze": False, "probe": False}
        manifest = ArtifactStore(r["run_uri"]).read_json("manifest.json")
        assert manifest["run_id"] == r["run_id"] and manifest["name"] == r["point"]
        assert manifest["config"]["pretext"]["name"] == r["values"]["pretext"]
        assert manifest["seed"] == r["values"]["seed"] and manifest["metrics"]["linear_top1"] == pytest.approx(
            r["linear_top1"], abs=5e-5
        )
        assert manifest["config"]["train"]["threads"] == max(1, cpu_cores() // 2)  # cores shared by 2 workers
        assert manifest["artifacts"]["probe"]["key"] == r["keys"]["probe"]
    from pretextflow.core.registry.registry import get_registry

    rotation = next(r for r in rows if r["values"]["pretext"] == "rotation")  # rotation's own defaults
    defaults = get_registry().pretext_task("rotation").Params().model_dump(mode="json")
    assert ArtifactStore(rotation["run_uri"]).read_json("manifest.json")["config"]["pretext"]["params"] == defaults
    md = store.read_bytes(SWEEPS, summary["sweep_id"], "sweep.md").decode()
    html = store.read_bytes(SWEEPS, summary["sweep_id"], "sweep.html").decode()
    for r in rows:
        assert r["point"] in md and r["run_id"] in md and r["run_id"] in html
    assert "| # | pretext | seed | linear top-1 | kNN top-1 | linear @ 10% |" in md
    assert html.count("<tr>") == 5 and "report.html" in html  # header + 4 points, each linked to its report


def test_thread_sweep_is_recorded_in_prefect_with_its_artifacts(thread_sweep):
    from prefect.client.orchestration import get_client

    arts = read_artifacts(
        [
            "sweep-digits-smoke",
            "sweep-table-digits-smoke",
            "report-digits-smoke-pretext-simclr-seed-0",
            "report-digits-smoke-pretext-rotation-seed-1",
        ]
    )
    kinds = {(a.type, a.key) for a in arts}
    assert {
        ("markdown", "sweep-digits-smoke"),
        ("table", "sweep-table-digits-smoke"),
        ("markdown", "report-digits-smoke-pretext-simclr-seed-0"),
        ("markdown", "report-digits-smoke-pretext-rotation-seed-1"),
    } <= kinds
    md = next(a for a in arts if a.key == "sweep-digits-smoke" and thread_sweep["sweep_id"] in a.description)
    assert all(r["point"] in md.data for r in thread_sweep["rows"])

    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def runs():
        async with get_client() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pretextflow-sweep"])))

    sweeps = asyncio.run(runs())
    assert sweeps and any(r.state.is_completed() for r in sweeps)


def test_dask_sweep_on_a_local_cluster(thread_sweep, digits_workspace):
    """Two points on a LocalCluster of two worker processes. To keep the test short they reuse the
    thread sweep's pretraining and probe with another kNN k: the probes (features, linear and kNN
    probes, the supervised baseline) are computed in the Dask workers."""
    summary = run_sweep(digits_workspace, ["pretext=rotation", "seed=0,1", "probe.knn_k=[10]"], runner="dask")
    rows = summary["rows"]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows) and summary["runner"] == "dask"
    assert {r["values"]["seed"] for r in rows} == {0, 1}
    earlier = {r["keys"]["pretrain"]: r["keys"]["probe"] for r in thread_sweep["rows"]}
    for r in rows:
        assert r["cached"] == {"pretrain": True, "freeze": True, "probe": False}
        assert r["keys"]["probe"] != earlier[r["keys"]["pretrain"]]  # same pretraining, a new probe
        m = ArtifactStore(r["run_uri"]).read_json("manifest.json")
        assert m["metrics"]["knn"]["k"] == 10 and 0.5 < m["metrics"]["linear_top1"] <= 1
    # the points ran in the Dask worker processes and reported to this Prefect server
    keys = [f"report-digits-smoke-pretext-rotation-seed-{s}-probe-knn-k-10" for s in (0, 1)]
    assert {a.key for a in read_artifacts(keys)} == set(keys)


def test_sweep_command_prints_the_table_and_the_report(thread_sweep, digits_workspace):
    """The same grid again from the command line: every stage is cached, only reports are new."""
    from typer.testing import CliRunner

    from pretextflow.cli import app

    args = [
        "sweep",
        str(CONFIG),
        "--grid",
        "pretext=simclr,rotation",
        "--grid",
        "seed=0",
        "-w",
        str(digits_workspace.root),
        "--no-push",
        "--workers",
        "2",
        "--set",
        "store.uri=artifacts-sweep",
    ]
    for s in SMALL:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "linear top-1" in result.output and "sweep report:" in result.output
    assert "pretrain, freeze, probe" in result.output  # the cached stages of each point
    uri = result.output.split("sweep report:")[1].split()[0]
    summary = json.loads(open(uri.replace("sweep.html", "sweep.json")).read())
    assert len(summary["rows"]) == 2
    earlier = {r["point"]: r["linear_top1"] for r in thread_sweep["rows"]}
    for r in summary["rows"]:
        assert r["cached"] == {"pretrain": True, "freeze": True, "probe": True}
        assert r["linear_top1"] == earlier[r["point"]]  # same point name, same artifacts, same numbers
        assert r["run_id"] in result.output
    bad = CliRunner().invoke(app, ["sweep", str(CONFIG), "--grid", "train.lrr=1", "-w", str(digits_workspace.root)])
    assert bad.exit_code == 2 and "Did you mean train.lr?" in bad.output


def test_a_failing_point_fails_the_flow_after_reporting_the_others(thread_sweep, digits_workspace):
    """batch_size 4096 is valid config but larger than the 640 training images: it fails when it runs."""
    from pretextflow.core.runs.sweep import SweepFailed

    state = run_sweep(digits_workspace, ["pretext=rotation", "seed=0", "train.batch_size=128,4096"], return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, SweepFailed) and "1 of 2 sweep points failed" in str(exc)
    assert "train.batch_size=4096 is larger than the 640 training images" in str(exc)
    summary = json.loads(open(exc.summary["uri"] + "/sweep.json").read())
    ok, failed = summary["rows"]
    assert ok["status"] == "ok" and ok["values"]["train.batch_size"] == 128 and ok["linear_top1"] > 0.5
    assert ArtifactStore(ok["run_uri"]).exists("manifest.json")
    assert failed["status"] == "failed" and failed["values"]["train.batch_size"] == 4096 and failed["run_id"] is None
    assert summary["failed"] == [{"point": failed["point"], "error": failed["error"]}]
    assert "FAILED" in open(exc.summary["uri"] + "/sweep.md").read()
