"""The ``pretextflow`` command. Heavy imports (torch, prefect, dvc) happen inside the commands,
so ``pretextflow --help`` and ``pretextflow plugins`` start fast."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Self-supervised visual features from unlabeled images, as a reproducible pipeline.",
)

WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="workspace folder (default: current folder)")
SetOpt = typer.Option(None, "--set", help="override a config field: --set train.epochs=3 (repeatable)")
QuietOpt = typer.Option(
    False, "--quiet", "-q", help="no progress bars or progress lines (progress.mode=off); the logs stay"
)
QUIET = "progress.mode=off"


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors the user can act on: one clear message on stderr, exit code 2, no traceback."""
    from pretextflow.core.errors import PretextflowError

    try:
        yield
    except PretextflowError as exc:
        from pretextflow.core.security.redaction import redact

        typer.secho(f"error: {redact(str(exc))}", fg="red", err=True)  # no credentials in what is printed
        raise typer.Exit(exc.exit_code) from None


def _workspace(path: Path | None) -> str:
    return str((path or Path(os.environ.get("PRETEXTFLOW_WORKSPACE") or Path.cwd())).resolve())


def _config(config: Path, overrides: list[str] | None) -> dict:
    from pretextflow.core.config import load_config

    return load_config(config, overrides or []).model_dump(mode="json")


def _checked_config(config: Path, overrides: list[str] | None) -> dict:
    """The config, also checked against the installed plugins, before anything runs."""
    from pretextflow.core.config import load_config
    from pretextflow.core.registry.preflight import check_plugins

    cfg = load_config(config, overrides or [])
    check_plugins(cfg)
    return cfg.model_dump(mode="json")


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server may need more than its default 20 s to start on a busy small machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


# -- plugins -----------------------------------------------------------------------------------
plugins_app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="List installed plugins; scaffold a new plugin package; check a plugin.",
)
app.add_typer(plugins_app, name="plugins")


@plugins_app.callback(invoke_without_command=True)
def plugins(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of objects"),
    refresh: bool = typer.Option(False, "--refresh", help="rebuild the cached listing (imports every plugin)"),
) -> None:
    """List installed plugins: name, kind, family (pretext tasks), providing package and version."""
    if ctx.invoked_subcommand is not None:
        return
    from pretextflow.core.registry.listing import listing

    with user_errors():
        rows, skipped, _ = listing(refresh=refresh)  # cached: no torch import when nothing changed
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "kind", "family", "package", "version")
        for r in rows:
            table.add_row(r["name"], r["kind"], r["family"] or "", r["package"], r["version"])
        Console().print(table)
    for s in skipped:
        typer.secho(f"skipped plugin {s['plugin']} ({s['package']}): {s['reason']}", fg="yellow", err=True)


@plugins_app.command("new")
def plugins_new(
    name: str = typer.Argument(..., help="the plugin's name, e.g. my-task"),
    kind: str = typer.Option("pretext", "--kind", "-k", help="pretext | backbone | dataset | logger"),
    directory: Path | None = typer.Option(None, "--dir", "-d", help="folder to create (default: ./pretextflow-NAME)"),
) -> None:
    """Scaffold an installable plugin package that passes its own tests as generated.

    The package has a pyproject.toml with the entry point, a small working module, conformance
    tests using pretextflow.testing, and a README."""
    from pretextflow.scaffold import scaffold

    with user_errors():
        from pretextflow.core.registry.registry import KINDS, get_registry

        registry = get_registry()
        taken = set(registry.table(kind)) if kind in KINDS else set()
        root = scaffold(name, kind, directory, taken)
    typer.echo(f"created {root}")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        typer.echo(f"  {path.relative_to(root)}")
    typer.echo(
        f"next: cd {root} && pip install -e '.[test]' && pytest && pretextflow plugins check {name}"
        + (" --source DATA" if kind == "dataset" else "")
    )


@plugins_app.command("check")
def plugins_check(
    name: str = typer.Argument(..., help="an installed plugin's name (e.g. my-task, timm/resnet18)"),
    kind: str | None = typer.Option(None, "--kind", "-k", help="pretext | backbone | dataset (default: found by name)"),
    option: list[str] | None = typer.Option(
        None,
        "--option",
        "-o",
        help="key=value (YAML): the task's params, the backbone's kwargs or the dataset format's options (repeatable)",
    ),
    source: str | None = typer.Option(None, "--source", help="what a dataset format reads (path/URI)"),
    backbone: str | None = typer.Option(
        None, "--backbone", help="backbone for a pretext task's checks (default: a small convnet-s)"
    ),
    pipeline: bool = typer.Option(
        True, "--pipeline/--no-pipeline", help="also pretrain -> freeze -> probe on digits (seconds)"
    ),
) -> None:
    """Check an installed plugin against its contract: one PASS/FAIL line per check.

    The checks of pretextflow.testing, on tiny data in seconds. Exit 1 if any check fails, 2 if
    there is no such plugin."""
    from pretextflow.core.config import apply_overrides

    with user_errors():
        from pretextflow.testing import check_plugin, find_kind

        kind = kind or find_kind(name)
        values = apply_overrides({}, option or [])
        options: dict = {"pipeline": pipeline}
        if kind == "pretext":
            options.update(params=values, backbone=backbone)
        elif kind == "backbone":
            options.update(kwargs=values)
        else:
            options.update(options=values, source=source)
        results = check_plugin(name, kind, **options)
    colours = {"pass": "green", "fail": "red", "skip": "yellow"}
    for r in results:
        typer.secho(r.line(), fg=colours[r.status])
    failed = sum(r.failed for r in results)
    passed = sum(r.passed for r in results)
    typer.echo(f"{kind} {name!r}: {passed} passed, {failed} failed, {len(results) - passed - failed} skipped")
    if failed:
        raise typer.Exit(1)


# -- workspace and data ------------------------------------------------------------------------
@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="folder to make a workspace"),
    remote: str | None = typer.Option(None, help="DVC remote URL (default: DIR/.dvc-remote), e.g. s3://b/dvc"),
    endpoint_url: str | None = typer.Option(
        None,
        help="S3-compatible server for an s3:// remote (credentials: AWS_* environment variables, never the config)",
    ),
) -> None:
    """Make a folder a workspace: git repository, DVC, a default DVC remote."""
    from pretextflow.core.data.versioning import configure_s3_remote, init_workspace

    with user_errors():
        s3 = bool(remote and remote.startswith("s3://"))
        ws = init_workspace(directory, None if s3 else remote)
        if s3:
            configure_s3_remote(ws, remote, endpoint_url)
    typer.echo(f"workspace ready: {ws.root}")


@app.command()
def fetch(
    name: str = typer.Argument(..., help="known dataset, e.g. fashion-mnist"),
    dest: Path = typer.Argument(..., help="folder to download into"),
    mirror: str | None = typer.Option(None, help="base URL or fsspec URI replacing the official one"),
) -> None:
    """Download a known dataset with checksum verification."""
    from pretextflow.plugins.datasets.known import fetch_known

    with user_errors():
        out = fetch_known(name, dest, mirror)
    typer.echo(str(out))


@app.command()
def ingest(
    source: str = typer.Argument(..., help="fsspec URI or path of the source"),
    fmt: str = typer.Option(..., "--format", "-f", help="dataset-format plugin (idx, imagefolder, ...)"),
    name: str | None = typer.Option(
        None, "--name", "-n", help="dataset name in the workspace (default: from the source)"
    ),
    option: list[str] | None = typer.Option(None, "--option", "-o", help="format option key=value"),
    push: bool = typer.Option(True, "--push/--no-push", help="dvc push after dvc add"),
    shard_mb: float = typer.Option(256.0, "--shard-mb", help="largest shard file, MiB"),
    workers: int | None = typer.Option(None, "--workers", help="decode processes (default: the cores)"),
    runner: str = typer.Option("local", "--runner", help="local, or dask (a cluster, see --dask-address)"),
    dask_address: str | None = typer.Option(None, "--dask-address", help="tcp://HOST:8786; none = LocalCluster"),
    workspace: Path | None = WorkspaceOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Ingest a dataset into the workspace's data/ and version it with DVC. Re-ingesting reads and
    decodes only the images that were added or changed, and rewrites only the shards they touch."""
    from pretextflow.core.config import apply_overrides
    from pretextflow.core.data.dataset import default_name

    _quiet_prefect()
    with user_errors():  # a bad name or -o value is a user error too
        name = name or default_name(source)
        config = {
            "name": f"ingest-{name}",
            "data": {
                "name": name,
                "source": source,
                "format": fmt,
                "options": apply_overrides({}, option or []),
                "ingest": {"shard_mb": shard_mb, "workers": workers, "runner": runner, "dask_address": dask_address},
            },
            "progress": {"mode": "off" if quiet else "auto"},
        }
        from pretextflow.core.config import load_config
        from pretextflow.core.registry.preflight import check_plugins
        from pretextflow.flows.stages import ingest_flow

        cfg = load_config(raw=config)
        check_plugins(cfg)  # the format and its options, before a flow starts
        result = ingest_flow(cfg.model_dump(mode="json"), _workspace(workspace), push)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def migrate(
    name: str = typer.Argument(..., help="dataset in the workspace's data/"),
    shard_mb: float = typer.Option(256.0, "--shard-mb", help="largest shard file, MiB"),
    push: bool = typer.Option(True, "--push/--no-push", help="dvc push after dvc add"),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Rewrite a schema-1 dataset (one .npy per split) as schema 2 (shards), and version it."""
    from pretextflow.core.data.migrate import migrate_dataset
    from pretextflow.core.workspace import Workspace

    with user_errors():
        result = migrate_dataset(Workspace.at(_workspace(workspace)), name, shard_mb, push=push)
    typer.echo(json.dumps(result, indent=2))


# -- the pipeline and its stages -------------------------------------------------------------
@app.command()
def run(
    config: Path = typer.Argument(..., help="experiment YAML, e.g. configs/fashion_mnist.yaml"),
    set_: list[str] | None = SetOpt,
    workspace: Path | None = WorkspaceOpt,
    push: bool = typer.Option(True, "--push/--no-push", help="dvc push after ingest"),
    quiet: bool = QuietOpt,
) -> None:
    """Run the whole pipeline (ingest, pretrain, freeze, probe, report); prints the run folder.

    Progress shows as bars on a terminal, as plain lines elsewhere (--quiet: neither);
    `pretextflow runs --live` lists the pretrainings running now."""
    _quiet_prefect()
    with user_errors():
        cfg = _checked_config(config, [*(set_ or []), *([QUIET] if quiet else [])])
        from pretextflow.core.runs.report import headline
        from pretextflow.core.security.redaction import redact
        from pretextflow.core.store import ArtifactStore
        from pretextflow.flows.pipeline import pipeline_flow

        result = pipeline_flow(cfg, _workspace(workspace), push)
        manifest = ArtifactStore(result["run_uri"], cfg["store"]["storage_options"]).read_json("manifest.json")
    typer.echo(f"run folder: {redact(result['run_uri'])}")
    typer.echo(f"report:     {redact(result['run_uri'])}/report.html")
    typer.echo(headline(manifest))


def _stage_command(stage: str):
    def command(
        config: Path = typer.Argument(..., help="experiment YAML"),
        set_: list[str] | None = SetOpt,
        workspace: Path | None = WorkspaceOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        _quiet_prefect()
        with user_errors():
            cfg = _checked_config(config, [*(set_ or []), *([QUIET] if quiet else [])])
            from pretextflow.core.security.redaction import redact
            from pretextflow.flows import stages as flows

            result = getattr(flows, f"{stage}_flow")(cfg, _workspace(workspace))
        if stage == "report":
            result = {"run_id": result["run_id"], "run_uri": result["run_uri"]}
        typer.echo(redact(json.dumps(result, indent=2, default=str)))

    command.__doc__ = f"Run the {stage} stage alone (its upstream artifacts must exist)."
    return command


for _stage in ("pretrain", "freeze", "probe", "report"):
    app.command(name=_stage)(_stage_command(_stage))


# -- sweeps ------------------------------------------------------------------------------------
@app.command()
def sweep(
    config: Path = typer.Argument(..., help="experiment YAML: the base config of every point"),
    grid: list[str] = typer.Option(
        ...,
        "--grid",
        help="KEY=v1,v2 (repeatable; values are YAML): every "
        "combination runs, e.g. --grid pretext=simclr,byol --grid seed=0,1",
    ),
    set_: list[str] | None = SetOpt,
    runner: str = typer.Option(
        "process",
        "--runner",
        help="process | dask | thread (process and dask "
        "reproduce a solo run exactly; thread points share torch's process-wide RNG "
        "while building models, so their numbers can differ from a solo run)",
    ),
    workers: int = typer.Option(2, "--workers", help="points at once (dask: LocalCluster worker processes)"),
    dask_address: str | None = typer.Option(
        None, "--dask-address", help="a running Dask scheduler, tcp://host:8786 (--runner dask)"
    ),
    workspace: Path | None = WorkspaceOpt,
    push: bool = typer.Option(True, "--push/--no-push", help="dvc push after ingest"),
    quiet: bool = QuietOpt,
) -> None:
    """Run the pipeline for every combination of --grid values, in parallel through a Prefect task
    runner, and write one comparison report (sweeps/<sweep id>/sweep.html in the artifact store).

    Every point is validated before anything runs. A failing point does not stop the others: the
    report of those that finished is written, then the command exits 1 naming the failed points."""
    _quiet_prefect()
    if runner == "dask":
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # the cluster's start-up chatter
    with user_errors():
        cfg = _config(config, [*(set_ or []), *([QUIET] if quiet else [])])
        summary, failed = _run_sweep(cfg, grid, runner, workers, dask_address, workspace, push)
    _print_sweep(summary)
    if failed is not None:
        typer.secho(f"error: {failed}", fg="red", err=True)
        raise typer.Exit(failed.exit_code)


def _run_sweep(
    cfg: dict,
    grid: list[str],
    runner: str,
    workers: int,
    dask_address: str | None,
    workspace: Path | None,
    push: bool,
) -> tuple[dict, Exception | None]:
    """The sweep flow on the chosen task runner: its summary, and its SweepFailed (None if every
    point finished). Every point is validated before Prefect starts."""
    from pretextflow.core.runs.sweep import SweepFailed, plan_sweep
    from pretextflow.flows.sweep import point_threads, sweep_flow, task_runner

    _, points = plan_sweep(cfg, grid)  # every point validated before Prefect starts
    chosen = task_runner(runner, workers, dask_address)
    threads = point_threads(runner, workers, dask_address)
    typer.echo(
        f"sweep: {len(points)} points, --runner {runner}"
        f"{' at ' + dask_address if dask_address else f' x {workers}'}, train.threads "
        f"{threads or 'as configured'} unless set"
    )
    try:
        summary = sweep_flow.with_options(task_runner=chosen)(
            cfg, grid, _workspace(workspace), push, threads, runner, None if dask_address else workers, dask_address
        )
    except SweepFailed as exc:
        if exc.summary is None:
            raise
        return exc.summary, exc
    return summary, None


def _print_sweep(summary: dict) -> None:
    """The comparison table (best linear top-1 first) and where the report is."""
    from rich.console import Console
    from rich.table import Table

    from pretextflow.core.runs.sweep import table

    header, cells = table(summary)
    out = Table(title=f"sweep {summary['sweep_id']}: best linear top-1 first (test set; nothing selected)")
    for name in header:
        out.add_column(name, overflow="fold")  # run ids and errors wrap, never cut
    for row in cells:
        out.add_row(*row)
    console = Console()
    (console if console.is_terminal else Console(width=240)).print(out)  # piped: no terminal width to fit
    typer.echo(f"sweep report: {summary['uri']}/sweep.html (sweep.md, sweep.json)")


# -- past runs, reruns, schedules --------------------------------------------------------------
@app.command()
def runs(
    store: str | None = typer.Option(None, help="artifact store URI (default: the workspace's artifacts/)"),
    workspace: Path | None = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="print a JSON list"),
    live: bool = typer.Option(
        False,
        "--live",
        help="the pretrainings running now (and those that died): step, loss, images/s, ETA, from their live history",
    ),
) -> None:
    """List past runs: id, time, data version, config name, headline metrics. With --live: the
    pretrainings running now, and those whose process died before they completed."""
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.workspace import Workspace

    with user_errors():
        artifacts = ArtifactStore(store or Workspace.at(_workspace(workspace)).store_uri("artifacts"))
        if live:
            from pretextflow.core.runs.live import live_pretrainings

            rows = live_pretrainings(artifacts)
        else:
            from pretextflow.core.runs.history import list_runs

            rows = list_runs(artifacts)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif live:
        _print_live(rows)
    else:
        _print_runs(rows)


def _print_runs(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("run id", "created (UTC)", "name", "data version", "pretext", "linear", "kNN", "fewest labels")
    for r in rows:
        low = r["low_label"]
        few = (
            f"{low['fraction'] * 100:g}%: {low['ssl_linear_top1']:.4f} vs sup. {low['supervised_top1']:.4f}"
            if low and low.get("supervised_top1") is not None
            else "-"
        )
        table.add_row(
            r["run_id"],
            r["created_at"],
            r["name"],
            r["data_version"][:12],
            r["pretext"],
            f"{r['linear_top1']:.4f}",
            f"{r['knn_top1']:.4f}",
            few,
        )
    Console().print(table)


LIVE_COLUMNS = ("pretrain key", "status", "run id", "pid", "step", "epoch", "loss", "images/s", "ETA", "updated")


def _live_cells(r: dict) -> list[str]:
    """One live pretraining as table cells."""
    import time

    from pretextflow.core.training.progress import format_seconds

    step = "-" if r["step"] is None else f"{r['step']}/{r['total_steps'] or '?'}"
    epoch = "-" if r["epoch"] is None else f"{min(r['epoch'] + 1, r['epochs'] or r['epoch'] + 1)}/{r['epochs'] or '?'}"
    ago = "-" if r["updated"] is None else f"{format_seconds(time.time() - r['updated'])} ago"
    return [
        r["key"],
        r["status"] + (f" (resumed x{r['resumes']})" if r["resumes"] else ""),
        r["run_id"] or "-",
        f"{r['pid']}@{r['host']}",
        step,
        epoch,
        "-" if r["loss"] is None else f"{r['loss']:.4f}",
        "-" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}",
        format_seconds(r["eta_s"]),
        ago,
    ]


def _print_live(rows: list[dict]) -> None:
    """A rich table on a terminal, plain aligned text otherwise (a pipe, a log file, watch -n)."""
    from rich.console import Console

    console = Console()
    if not rows:
        typer.echo("no pretraining is running (and none died before completing)")
        return
    cells = [_live_cells(r) for r in rows]
    if console.is_terminal:
        from rich.table import Table

        table = Table(*LIVE_COLUMNS, title="pretrainings (live history)")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max(len(c) for c in col) for col in zip(LIVE_COLUMNS, *cells, strict=False)]
    for row in (LIVE_COLUMNS, *cells):
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


@app.command()
def rerun(
    run: str = typer.Argument(..., help="a run folder (artifacts/runs/<id>) or its manifest.json"),
    no_cache: bool = typer.Option(False, "--no-cache", help="recompute every stage in a fresh store"),
    workspace: Path | None = typer.Option(
        None, "--workspace", "-w", help="empty folder to rerun in (default: a new temp folder)"
    ),
    tolerance: float | None = typer.Option(
        None, help="allowed |difference| per metric (default: 0 on CPU, 0.005 on GPU)"
    ),
    remote: str | None = typer.Option(None, help="DVC remote holding the data (default: the recorded one)"),
    quiet: bool = QuietOpt,
) -> None:
    """Rerun a past run exactly (data version via DVC, recorded config and seed) and compare every
    metric. Exit 0 only if all are identical (or within the tolerance)."""
    _quiet_prefect()
    from pretextflow.flows.rerun import rerun as do_rerun

    with user_errors():
        out = do_rerun(run, str(workspace) if workspace else None, no_cache, tolerance, remote, quiet=quiet)
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", f"recorded ({out['before'][:15]})", "rerun", "difference", "")
    for r in out["rows"]:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(
            r["metric"],
            fmt(r["before"]),
            fmt(r["after"]),
            "-" if r["diff"] is None else f"{r['diff']:+.6f}",
            "same" if r["ok"] else "DIFFERENT",
        )
    console = Console()
    console.print(table)
    for w in out["warnings"]:
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    cached = [s for s in ("pretrain", "freeze", "probe") if out["stages"].get(s, {}).get("cached")]
    typer.echo(
        f"rerun {out['after']} in {out['workspace']} ({'no cache' if out['no_cache'] else 'cached stages: ' + (', '.join(cached) or 'none')})"
    )
    if out["identical"]:
        typer.echo(f"identical: every metric matches (tolerance {out['tolerance']:g})")
    else:
        n = sum(not r["ok"] for r in out["rows"])
        typer.secho(f"different: {n} metric(s) differ by more than {out['tolerance']:g}", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def export(
    run: str = typer.Argument(..., help="a run folder (artifacts/runs/<id>) or its manifest.json, any fsspec URI"),
    fmt: str = typer.Option(..., "--format", "-f", help="timm | torchscript | onnx | safetensors"),
    out: str = typer.Option(..., "--out", "-o", help="folder to write (must not exist, or be empty)"),
) -> None:
    """Export a run's frozen backbone, checked against PyTorch on one batch, with a model card
    (README.md). `pretextflow.load_backbone(OUT)` loads any of them; a timm export also loads with
    `timm.create_model("local-dir:OUT", pretrained=True)`."""
    from pretextflow.core.export.formats import export_backbone

    with user_errors():
        marker = export_backbone(run, fmt, out)
    info = marker["info"]
    typer.echo(
        f"exported {info['backbone']['name']} ({info['num_features']} features, input "
        f"{'x'.join(map(str, info['image_shape']))}) as {fmt} to {out}: {', '.join(marker['files'])}, README.md; "
        f"max |difference| from PyTorch {marker['max_abs_error']:.1e}"
    )


@app.command()
def embed(
    run: str = typer.Argument(..., help="a run folder, its manifest.json, or an export folder"),
    source: str = typer.Argument(..., help="a folder of images, a .zip/.tar[.gz] of one, or a .csv with a path column"),
    out: str = typer.Option(..., "--out", "-o", help="FILE.npy (+ FILE.index.csv) or FILE.parquet, any fsspec URI"),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="images per batch (bounds the memory)"),
    device: str = typer.Option("auto", help="auto (the GPU when there is one) | cpu | cuda"),
    trust_torchscript: bool = typer.Option(
        False, "--trust-torchscript", help="RUN is a TorchScript export you trust (loading one runs its code)"
    ),
) -> None:
    """Embed every image of SOURCE with the run's frozen backbone, in sorted path order: one row
    per image (path, sha256, vector), streamed in batches."""
    from pretextflow.core.export.embed import embed as do_embed
    from pretextflow.core.export.loading import load_backbone

    with user_errors():
        backbone = load_backbone(run, trust_torchscript=trust_torchscript)
        result = do_embed(backbone, source, out, batch_size=batch_size, device=device)
    where = f"{result.out}" + (f" (+ {result.index})" if result.index else "")
    typer.echo(f"embedded {result.count} images -> {result.dim} features each on {result.device}: {where}")


@app.command()
def serve(
    config: Path = typer.Argument(..., help="experiment YAML"),
    set_: list[str] | None = SetOpt,
    cron: str = typer.Option(..., "--cron", help='schedule, e.g. "0 3 * * *" (03:00 every day)'),
    name: str | None = typer.Option(None, help="deployment name (default: the config's name)"),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Serve the pipeline on a schedule through Prefect (needs PREFECT_API_URL of a running
    `prefect server start`). Each scheduled run first refreshes the data, then recomputes only
    what changed, and compares its report with the previous run."""
    _quiet_prefect()
    with user_errors():
        cfg = _checked_config(config, set_)
        from prefect.client.schemas.schedules import CronSchedule

        from pretextflow.core.errors import ConfigError

        try:
            CronSchedule(cron=cron)
        except ValueError:
            raise ConfigError(
                f'--cron {cron!r} is not a cron expression; e.g. "0 3 * * *" runs at 03:00 daily.'
            ) from None
        if not os.environ.get("PREFECT_API_URL"):
            raise ConfigError(
                "serving a schedule needs a Prefect server: run `prefect server start` and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api (see the README, Scheduled retraining)."
            )
        from pretextflow.flows.pipeline import pipeline_flow

        deployment = name or cfg["name"]
        typer.echo(f"serving pretextflow-pipeline/{deployment} on {cron!r}; Ctrl-C stops")
        pipeline_flow.serve(
            name=deployment,
            cron=cron,
            parameters={"config": cfg, "workspace": _workspace(workspace), "push": True, "refresh": True},
        )


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
