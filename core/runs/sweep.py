"""Sweeps: ``--grid KEY=v1,v2`` specs expanded into validated point configs, and the comparison of
the points' runs (``sweep.json``, ``sweep.md``, ``sweep.html`` under ``sweeps/<sweep id>/`` in the
artifact store). Also which points run when: one ingest per distinct data config, points that
share a pretrain key one after the other (``PointQueue``). No Prefect here:
``pretextflow.flows.sweep`` submits the points to a task runner and waits for them.

Every point config is validated before any work starts; a bad key or value is a ConfigError that
names the grid key. The comparison reports every point's test accuracies side by side, best
linear top-1 first; nothing is chosen by them."""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pretextflow.core.config import RunConfig, load_config, parse_override
from pretextflow.core.errors import ConfigError, PretextflowError
from pretextflow.core.evaluation.metrics import (
    KNN_TOP1,
    LINEAR_TOP1,
    LINEAR_TOP5,
    RANDOM_INIT_LINEAR,
    SSL_KNN,
    SSL_LINEAR,
    SUPERVISED,
)
from pretextflow.core.runs.tables import SORT_SCRIPT, SORTABLE_CSS, escape, html_page, html_table, link, markdown_table

# Grid keys a user types most often; anything else is a dotted config path (train.lr, probe.knn_k).
SHORTHANDS = {"pretext": "pretext.name", "backbone": "backbone.name"}
# A pretext task's params and a backbone's kwargs belong to that plugin: a point that switches to
# another task (backbone) starts from that plugin's defaults unless the grid sets them too.
PLUGIN_OPTIONS = {"pretext.name": "pretext.params", "backbone.name": "backbone.kwargs"}
SWEEPS = "sweeps"  # the folder of sweep reports in the artifact store


class SweepFailed(PretextflowError):
    """Some points failed; the comparison of the others was written. ``summary`` is that comparison."""

    exit_code = 1

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.message, self.summary = message, summary

    def __reduce__(self):  # picklable with its summary (Prefect may serialise a flow's exception)
        return (type(self), (self.message, self.summary))

    def __str__(self) -> str:
        return self.message

    @classmethod
    def of(cls, summary: dict[str, Any]) -> SweepFailed | None:
        """The error of a written comparison with failed points; None when every point finished."""
        if not summary["failed"]:
            return None
        lines = [
            f"{len(summary['failed'])} of {len(summary['points'])} sweep points failed:",
            *(f"  {f['point']}: {f['error']}" for f in summary["failed"]),
            f"The comparison of the others: {summary['uri']}/sweep.html",
        ]
        return cls("\n".join(lines), summary)


@dataclass(frozen=True)
class GridAxis:
    spec: str  # as typed: pretext=simclr,byol
    label: str  # the key as typed (shorthands kept): names the points and the report's columns
    key: str  # the full dotted config path: pretext.name
    values: tuple[Any, ...]


@dataclass
class SweepPoint:
    name: str  # <config name>-pretext=byol-seed=1; also the point config's `name`
    values: dict[str, Any]  # grid label -> value
    config: dict[str, Any]  # the validated config (JSON), ready for the stages
    reset: list[str] = field(default_factory=list)  # plugin options reset to that plugin's defaults
    duplicates: list[str] = field(default_factory=list)  # names of identical points dropped

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": self.values, "reset": self.reset, "duplicates": self.duplicates}


# -- parsing -----------------------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """Split ``v1,v2`` on the commas that are not inside [], {} or quotes: ``[20,5],[200]`` is two."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _field_names(model: type) -> list[str]:
    return list(getattr(model, "model_fields", {}))


def check_key(key: str, spec: str) -> None:
    """The dotted path must name a config field (or lie inside a free-form mapping such as
    ``pretext.params``); an unknown key is reported with the known keys beside it."""
    from pydantic import BaseModel

    model: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        names = _field_names(model)
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" Did you mean {'.'.join([*parts[:i], close[0]])}?" if close else ""
            shorthand = " (or the shorthands pretext, backbone)" if i == 0 else ""
            raise ConfigError(
                f"--grid {spec!r}: {key} is not a config key.{hint} Known keys"
                f"{' under ' + where if where else ''}: {', '.join(names)}{shorthand}."
            )
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if i < len(parts) - 1 and getattr(annotation, "__origin__", annotation) is not dict:
            raise ConfigError(
                f"--grid {spec!r}: {'.'.join(parts[: i + 1])} is a single value, not a section; "
                f"grid it as --grid {'.'.join(parts[: i + 1])}=v1,v2."
            )
        return  # a value, or a free-form mapping (pretext.params, backbone.kwargs, data.options)


def parse_grid(specs: list[str] | None) -> list[GridAxis]:
    """``["pretext=simclr,byol", "seed=0,1"]`` -> axes; values are YAML, as with ``--set``."""
    if not specs:
        raise ConfigError(
            "a sweep needs at least one --grid KEY=v1,v2, e.g. --grid pretext=simclr,byol --grid seed=0,1"
        )
    axes: list[GridAxis] = []
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(
                f"--grid {spec!r}: expected KEY=v1,v2,..., e.g. --grid pretext=simclr,byol "
                f"or --grid train.lr=0.001,0.002"
            )
        label, raw = (s.strip() for s in spec.split("=", 1))
        key = SHORTHANDS.get(label, label)
        if not label or any(not p for p in key.split(".")):
            raise ConfigError(f"--grid {spec!r}: {label!r} is not a config key; e.g. --grid train.lr=0.001,0.002")
        check_key(key, spec)
        if raw == "":
            raise ConfigError(f"--grid {spec!r}: no values; give one or more, comma-separated: --grid {label}=v1,v2")
        values = []
        for n, text in enumerate(split_values(raw), 1):
            if text == "":
                raise ConfigError(
                    f"--grid {spec!r}: value {n} is empty; remove the extra comma "
                    f"(a list value is written in brackets: --grid probe.knn_k=[20,5],[200])"
                )
            try:
                _, value = parse_override(f"{key}={text}")  # the same YAML parsing as --set
            except ConfigError:
                raise ConfigError(
                    f"--grid {spec!r}: value {text!r} is not valid YAML; quote it or fix the brackets"
                ) from None
            values.append(value)
        for other in axes:
            if other.key == key or other.key.startswith(key + ".") or key.startswith(other.key + "."):
                raise ConfigError(
                    f"--grid {spec!r} and --grid {other.spec!r} both set {min(key, other.key)}; "
                    f"give each key once, with all its values: --grid {other.label}=v1,v2,v3"
                )
        axes.append(GridAxis(spec=spec, label=label, key=key, values=tuple(values)))
    return axes


# -- expanding and validating ------------------------------------------------------------------
def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def _get(raw: dict[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _blamed(axes: list[GridAxis], values: dict[str, Any], message: str) -> list[GridAxis]:
    """The grid keys an error is about: named in it (a plugin's options count for the plugin's
    name), or whose value it quotes (an unknown task); all of them when it names none."""
    hits = [
        a
        for a in axes
        if a.key in message or PLUGIN_OPTIONS.get(a.key, "\0") in message or repr(values[a.label]) in message
    ]
    return hits or axes


def validate_point(raw: dict[str, Any], registry=None) -> tuple[RunConfig, dict[str, Any]]:
    """The config loader, then the plugins: the task and backbone exist and the task's params are
    valid. Returns the config and its signature (the dump with the task's params resolved)."""
    from pretextflow.core.registry.preflight import resolved_pretext_params
    from pretextflow.core.registry.registry import get_registry

    cfg = load_config(raw=copy.deepcopy(raw))
    registry = registry or get_registry()
    registry.backbone(cfg.backbone.name)
    params = resolved_pretext_params(cfg, registry)  # also: the task exists
    signature = cfg.model_dump(mode="json")
    signature["pretext"]["params"] = params
    signature.pop("name")
    return cfg, signature


def expand_grid(base: dict[str, Any], axes: list[GridAxis], registry=None) -> list[SweepPoint]:
    """The cartesian product of the axes over the base config (already validated, ``--set`` applied).
    Every point is validated; identical points (same validated config) run once."""
    base_name = str(base.get("name") or "run")
    keys = {a.key for a in axes}
    points: list[SweepPoint] = []
    seen: dict[str, SweepPoint] = {}
    for combo in itertools.product(*(a.values for a in axes)):
        raw = copy.deepcopy(base)
        values = {a.label: v for a, v in zip(axes, combo, strict=False)}
        name = "-".join([base_name, *(f"{a.label}={format_value(v)}" for a, v in zip(axes, combo, strict=False))])
        reset = []
        chosen = {a.key: v for a, v in zip(axes, combo, strict=False)}
        for name_key, options_key in PLUGIN_OPTIONS.items():
            if name_key in chosen and chosen[name_key] != _get(base, name_key) and options_key not in keys:
                if _get(base, options_key):
                    reset.append(options_key)
                _set(raw, options_key, {})
        for a, v in zip(axes, combo, strict=False):
            _set(raw, a.key, v)
        try:
            cfg, signature = validate_point(raw, registry)
        except PretextflowError as exc:
            blamed = _blamed(axes, values, str(exc))
            which = ", ".join(f"{a.label}={format_value(values[a.label])}" for a in blamed)
            keys_text = " / ".join(f"--grid {a.label}" for a in blamed)
            reset_note = (
                (
                    f" ({', '.join(reset)} of the base config belong to its "
                    f"{' and '.join(_get(base, k.rsplit('.', 1)[0] + '.name') for k in reset)} and were "
                    f"dropped for this point; set them with --grid too)"
                )
                if reset
                else ""
            )
            raise ConfigError(
                f"--grid: the point {name} ({which}) is not a valid config{reset_note}:\n{exc}\n"
                f"Fix or drop that value of {keys_text} (nothing has run yet)."
            ) from None
        point_config = cfg.model_dump(mode="json")
        point_config["name"] = name
        sig = json.dumps(signature, sort_keys=True, default=str)
        if sig in seen:
            seen[sig].duplicates.append(name)
            continue
        point = SweepPoint(name=name, values=values, config=point_config, reset=reset)
        seen[sig] = point
        points.append(point)
    return points


def plan_sweep(base: dict[str, Any], specs: list[str] | None, registry=None) -> tuple[list[GridAxis], list[SweepPoint]]:
    axes = parse_grid(specs)
    return axes, expand_grid(base, axes, registry)


def with_threads(points: list[SweepPoint], threads: int | None) -> None:
    """``train.threads`` for each point that does not set it (the base config, ``--set`` or the grid)."""
    if threads is None:
        return
    for p in points:
        if p.config["train"].get("threads") is None:
            p.config["train"]["threads"] = threads


def new_sweep_id(name: str, points: list[SweepPoint]) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "sweep"
    digest = hashlib.sha256(json.dumps([p.config for p in points], sort_keys=True).encode()).hexdigest()[:8]
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{slug}-{digest}"


@dataclass
class SweepPlan:
    """A sweep before it runs: the base config, its grid axes, the validated points, the sweep id."""

    config: dict[str, Any]
    axes: list[GridAxis]
    points: list[SweepPoint]
    sweep_id: str

    @classmethod
    def build(cls, config: dict[str, Any], grid: list[str] | None, threads: int | None = None, registry=None):
        """Every point validated (a ConfigError before anything runs); ``threads``: see with_threads."""
        axes, points = plan_sweep(config, grid, registry)
        with_threads(points, threads)
        return cls(config, axes, points, new_sweep_id(str(config.get("name") or "sweep"), points))


# -- scheduling the points ---------------------------------------------------------------------
def data_key(point: SweepPoint) -> str:
    """Points with the same data config share one ingest."""
    return json.dumps(point.config["data"], sort_keys=True)


def ingest_points(points: list[SweepPoint]) -> list[SweepPoint]:
    """The first point of each distinct data config, in grid order: ingest once for each."""
    first: dict[str, SweepPoint] = {}
    for p in points:
        first.setdefault(data_key(p), p)
    return list(first.values())


def stamp_data_version(ingested: dict[str, dict[str, Any]], workspace: str | None) -> str:
    """The workspace's data version after the ingests, recorded in each ingest's result. data.dvc
    tracks all of data/: after several ingests, the last version holds every dataset."""
    from pretextflow.core.data.versioning import data_version
    from pretextflow.core.workspace import Workspace

    version = data_version(Workspace.at(workspace))
    for info in ingested.values():
        info["data_version"] = version
    return version


def error_text(exc: BaseException | None) -> str:
    """A failed point's error as its row shows it: our errors by their message, others with their type."""
    if exc is None:
        return "failed (no error recorded)"
    if isinstance(exc, PretextflowError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class PointQueue:
    """Which points run when, and the row of each. Points that share a pretrain key run one after
    the other, so the second finds the first's complete artifacts instead of training the same
    thing concurrently; points with different keys run at once. A point whose key cannot be
    computed fails here; a point that fails does not hold back the others."""

    def __init__(self, points: list[SweepPoint], pretrain_key: Callable[[SweepPoint], str]):
        self.points = list(points)
        self.rows: dict[str, dict[str, Any]] = {}  # point name -> its row of the comparison
        self._waiting: dict[str, list[SweepPoint]] = {}  # pretrain key -> its points not started yet
        self._key: dict[str, str] = {}  # point name -> its pretrain key
        for p in self.points:
            try:
                key = pretrain_key(p)
            except Exception as exc:  # noqa: BLE001 - that point fails, the others run
                self.rows[p.name] = failed_row(p, error_text(exc))
                continue
            self._key[p.name] = key
            self._waiting.setdefault(key, []).append(p)

    def start(self) -> list[SweepPoint]:
        """The points to run first: the first of each pretrain key."""
        return [queue.pop(0) for queue in self._waiting.values()]

    def finished(self, point: SweepPoint, row: dict[str, Any]) -> SweepPoint | None:
        """Record a point's row; returns the next point of its pretrain key, to run now (None: none left)."""
        self.rows[point.name] = row
        queue = self._waiting[self._key[point.name]]
        return queue.pop(0) if queue else None

    def failed(self, point: SweepPoint, exc: BaseException | None) -> SweepPoint | None:
        """Record a point's failure; returns the next point of its pretrain key, as ``finished``."""
        return self.finished(point, failed_row(point, error_text(exc)))

    def results(self) -> list[dict[str, Any]]:
        """Every point's row, in grid order (once every started point has finished or failed)."""
        return [self.rows[p.name] for p in self.points]


# -- the comparison ----------------------------------------------------------------------------
def _r(value: Any, digits: int = 4) -> Any:
    return None if value is None else round(float(value), digits)


def result_row(point: SweepPoint | dict[str, Any], manifest: dict[str, Any], run_uri: str) -> dict[str, Any]:
    """One point's row, from its run's manifest."""
    p = point.as_dict() if isinstance(point, SweepPoint) else point
    m = manifest["metrics"]
    stages = manifest.get("stages", {})
    efficiency = [
        {
            "fraction": r["fraction"],
            "labels": r.get("num_labels"),
            SSL_LINEAR.key: _r(r.get(SSL_LINEAR.key)),
            SSL_KNN.key: _r(r.get(SSL_KNN.key)),
            SUPERVISED.key: _r(r.get(SUPERVISED.key)),
        }
        for r in m.get("label_efficiency", [])
        if r["fraction"] < 1
    ]
    return {
        "point": p["name"],
        "status": "ok",
        "values": p["values"],
        "run_id": manifest["run_id"],
        "run_uri": run_uri,
        LINEAR_TOP1: _r(m.get(LINEAR_TOP1)),
        LINEAR_TOP5: _r(m.get(LINEAR_TOP5)),
        KNN_TOP1: _r(m.get(KNN_TOP1)),
        RANDOM_INIT_LINEAR.key: _r(m.get("baselines", {}).get("random_init", {}).get(LINEAR_TOP1)),
        "label_efficiency": efficiency,
        "pretrain_seconds": _r(manifest.get("pretrain", {}).get("seconds"), 1),
        "cached": {s: bool(stages.get(s, {}).get("cached")) for s in ("pretrain", "freeze", "probe")},
        "keys": {s: a.get("key") for s, a in manifest.get("artifacts", {}).items() if a.get("key")},
        "threads": manifest.get("threads"),
        "error": None,
    }


def failed_row(point: SweepPoint | dict[str, Any], error: str) -> dict[str, Any]:
    p = point.as_dict() if isinstance(point, SweepPoint) else point
    return {
        "point": p["name"],
        "status": "failed",
        "values": p["values"],
        "run_id": None,
        "run_uri": None,
        LINEAR_TOP1: None,
        LINEAR_TOP5: None,
        KNN_TOP1: None,
        RANDOM_INIT_LINEAR.key: None,
        "label_efficiency": [],
        "pretrain_seconds": None,
        "cached": {},
        "keys": {},
        "threads": None,
        "error": error,
    }


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best linear top-1 first; failed points last, in grid order."""
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (-(r[LINEAR_TOP1] or 0.0), r["point"]))
    return ok + [r for r in rows if r["status"] != "ok"]


def build_summary(
    *,
    sweep_id: str,
    base: dict[str, Any],
    axes: list[GridAxis],
    points: list[SweepPoint],
    rows: list[dict[str, Any]],
    runner: str,
    workers: int | None,
    data_versions: list[str] | None = None,
) -> dict[str, Any]:
    rows = sort_rows(rows)
    return {
        "schema_version": 1,
        "sweep_id": sweep_id,
        "name": base.get("name"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runner": runner,
        "workers": workers,
        "grid": [{"key": a.key, "label": a.label, "values": list(a.values)} for a in axes],
        "points": [p.as_dict() for p in points],
        "data_versions": sorted(set(data_versions or [])),
        "rows": rows,
        "failed": [{"point": r["point"], "error": r["error"]} for r in rows if r["status"] != "ok"],
        "note": "Test-set accuracies of every point, for comparison only; the sweep selects nothing.",
    }


def _fractions(rows: list[dict[str, Any]]) -> list[float]:
    return sorted({e["fraction"] for r in rows for e in r["label_efficiency"]})


def table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The comparison as text cells: header and rows (the CLI, the Markdown and the HTML use it)."""
    rows = summary["rows"]
    labels = [g["label"] for g in summary["grid"]]
    fractions = _fractions(rows)
    header = [
        "#",
        *labels,
        "linear top-1",
        "kNN top-1",
        *[f"linear @ {f * 100:g}%" for f in fractions],
        *[f"supervised @ {f * 100:g}%" for f in fractions],
        "pretrain s",
        "cached",
        "run",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    cells = []
    for i, r in enumerate(rows, 1):
        eff = {e["fraction"]: e for e in r["label_efficiency"]}
        cached = ", ".join(s for s, c in r["cached"].items() if c) or "-"
        if r["status"] != "ok":
            cached, run = "-", f"FAILED: {r['error']}"
        else:
            run = r["run_id"]
        cells.append(
            [
                str(i),
                *[format_value(r["values"].get(k)) for k in labels],
                fmt(r[LINEAR_TOP1]),
                fmt(r[KNN_TOP1]),
                *[fmt(eff.get(f, {}).get(SSL_LINEAR.key)) for f in fractions],
                *[fmt(eff.get(f, {}).get(SUPERVISED.key)) for f in fractions],
                "-" if r["pretrain_seconds"] is None else f"{r['pretrain_seconds']:.1f}",
                cached,
                run,
            ]
        )
    return header, cells


def _intro(summary: dict[str, Any]) -> list[str]:
    n, failed = len(summary["rows"]), len(summary["failed"])
    grid = " x ".join(f"{g['label']} ({', '.join(format_value(v) for v in g['values'])})" for g in summary["grid"])
    lines = [
        f"{n} points ({grid}); {n - failed} finished, {failed} failed. Runner: {summary['runner']}"
        f"{'' if summary['workers'] is None else ' x ' + str(summary['workers'])}. "
        f"Data version: {', '.join(summary['data_versions']) or '-'}."
    ]
    dups = [(p["name"], d) for p in summary["points"] for d in p["duplicates"]]
    if dups:
        lines.append("Identical configs ran once: " + "; ".join(f"{d} = {n}" for n, d in dups) + ".")
    resets = [(p["name"], p["reset"]) for p in summary["points"] if p["reset"]]
    if resets:
        lines.append(
            "Plugin options of the base config dropped (another plugin, its defaults): "
            + "; ".join(f"{n}: {', '.join(r)}" for n, r in resets)
            + "."
        )
    lines.append(summary["note"] + " Sorted by linear top-1 (100% of the labels), best first.")
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    header, cells = table(summary)
    out = [
        f"# pretextflow sweep: {summary['name']}",
        "",
        f"Sweep `{summary['sweep_id']}`.",
        "",
        *[line + "\n" for line in _intro(summary)],
        *markdown_table(header, cells),
        "",
        "Run folders (report.html, manifest.json):",
        "",
        *[f"- {r['point']}: `{r['run_uri']}`" for r in summary["rows"] if r["run_uri"]],
    ]
    if summary["failed"]:
        out += ["", "## Failed points", "", *[f"- {f['point']}: {f['error']}" for f in summary["failed"]]]
    return "\n".join(out) + "\n"


def render_html(summary: dict[str, Any]) -> str:
    e = escape
    header, cells = table(summary)
    for row, r in zip(cells, summary["rows"], strict=False):
        if r["run_uri"]:  # the run id links to the point's report
            row[-1] = link(row[-1], f"{r['run_uri']}/report.html")
    name = str(summary["name"])
    body = [
        f"<h1>pretextflow sweep: {e(name)}</h1>",
        f"<p>Sweep <code>{e(summary['sweep_id'])}</code>.</p>",
        *[f"<p>{e(line)}</p>" for line in _intro(summary)],
        *html_table(header, cells, sortable=True),
        SORT_SCRIPT,
    ]
    return html_page(f"pretextflow sweep: {name}", body, width=1200, css=SORTABLE_CSS)


def write_comparison(store, summary: dict[str, Any]) -> str:
    """``sweeps/<sweep id>/{sweep.json, sweep.md, sweep.html}`` in the artifact store; returns the folder."""
    sid = summary["sweep_id"]
    store.write_bytes(render_markdown(summary).encode(), SWEEPS, sid, "sweep.md")
    store.write_bytes(render_html(summary).encode(), SWEEPS, sid, "sweep.html")
    store.write_json(summary, SWEEPS, sid, "sweep.json")  # last: its presence means the report is complete
    summary["uri"] = store.uri_of(SWEEPS, sid)
    return summary["uri"]


def compare(
    plan: SweepPlan, rows: list[dict[str, Any]], *, runner: str, workers: int | None, data_version: str, workspace
) -> dict[str, Any]:
    """The comparison of the points' rows, written to the base config's artifact store; returns the
    summary (its ``uri``: the report folder)."""
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.workspace import Workspace

    summary = build_summary(
        sweep_id=plan.sweep_id,
        base=plan.config,
        axes=plan.axes,
        points=plan.points,
        rows=rows,
        workers=workers,
        runner=runner,
        data_versions=[data_version],
    )
    store_config = plan.config["store"]
    store = ArtifactStore(Workspace.at(workspace).store_uri(store_config["uri"]), store_config.get("storage_options"))
    write_comparison(store, summary)
    return summary
