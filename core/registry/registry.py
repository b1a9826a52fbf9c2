"""The plugin manager: built-ins first, then third-party entry points, each isolated.

One broken third-party plugin (import error, exception in a hook, a return value that breaks the
contract, a name already taken) is recorded in ``Registry.skipped`` with the reason and skipped;
everything else keeps working. Built-ins load first, so a third party cannot shadow them.

Environment:
  PRETEXTFLOW_LOAD_PLUGINS   comma-separated entry-point names to load (allowlist; empty = none)
  PRETEXTFLOW_BLOCK_PLUGINS  comma-separated entry-point names never to load
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel

from pretextflow.core.errors import PluginError
from pretextflow.core.registry import hookspecs
from pretextflow.core.registry.contracts import FAMILIES, BackboneSpec, DatasetFormat, PretextTask, RunLogger

ENTRY_POINT_GROUP = "pretextflow"
ENV_LOAD = "PRETEXTFLOW_LOAD_PLUGINS"
ENV_BLOCK = "PRETEXTFLOW_BLOCK_PLUGINS"

# The built-in plugin modules, registered through the same hooks a third party uses.
BUILTIN_PLUGINS = (
    "pretextflow.plugins.pretext.rotation",
    "pretextflow.plugins.pretext.simclr",
    "pretextflow.plugins.pretext.inpainting",
    "pretextflow.plugins.pretext.jigsaw",
    "pretextflow.plugins.pretext.relative_location",
    "pretextflow.plugins.pretext.moco",
    "pretextflow.plugins.pretext.byol",
    "pretextflow.plugins.pretext.simsiam",
    "pretextflow.plugins.pretext.barlow_twins",
    "pretextflow.plugins.pretext.vicreg",
    "pretextflow.plugins.pretext.dino",
    "pretextflow.plugins.pretext.mae",
    "pretextflow.plugins.pretext.distill",
    "pretextflow.plugins.backbones.convnet",
    "pretextflow.plugins.backbones.timm_models",
    "pretextflow.plugins.datasets.csv_table",
    "pretextflow.plugins.datasets.idx",
    "pretextflow.plugins.datasets.imagefolder",
    "pretextflow.plugins.datasets.sklearn_digits",
    "pretextflow.plugins.loggers.tensorboard_logger",
    "pretextflow.plugins.loggers.mlflow_logger",
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str  # one of KINDS
    family: str | None
    package: str
    version: str
    description: str = ""
    plugin: str = ""  # the registering module / entry point


@dataclass(frozen=True)
class SkippedPlugin:
    plugin: str
    package: str
    reason: str


KINDS = ("pretext", "backbone", "dataset", "logger")
"""The plugin kinds, in the order listings show them; :meth:`Registry.table` maps each to its table."""


@dataclass
class Registry:
    pretext: dict[str, type[PretextTask]] = field(default_factory=dict)
    backbones: dict[str, BackboneSpec] = field(default_factory=dict)
    formats: dict[str, type[DatasetFormat]] = field(default_factory=dict)
    loggers: dict[str, type[RunLogger]] = field(default_factory=dict)
    info: list[PluginInfo] = field(default_factory=list)
    skipped: list[SkippedPlugin] = field(default_factory=list)

    def table(self, kind: str) -> dict[str, Any]:
        """The name → plugin table of one kind (the one place that maps a kind to its table)."""
        tables = {"pretext": self.pretext, "backbone": self.backbones, "dataset": self.formats, "logger": self.loggers}
        if kind not in tables:
            raise PluginError(f"unknown plugin kind {kind!r}: use one of {', '.join(KINDS)}")
        return tables[kind]

    # -- lookups with errors that list what exists ----------------------------------------
    def pretext_task(self, name: str) -> type[PretextTask]:
        if name not in self.pretext:
            raise PluginError(_unknown("pretext task", name, self.pretext))
        return self.pretext[name]

    def backbone(self, name: str) -> BackboneSpec:
        for spec in self.backbones.values():
            if spec.matches(name):
                return spec
        raise PluginError(_unknown("backbone", name, self.backbones))

    def dataset_format(self, name: str) -> type[DatasetFormat]:
        if name not in self.formats:
            raise PluginError(_unknown("dataset format", name, self.formats))
        return self.formats[name]

    def logger(self, name: str) -> type[RunLogger]:
        if name not in self.loggers:
            raise PluginError(
                _unknown("logger", name, self.loggers)
                + " Loggers are turned on by name in the config: logging: {loggers: [tensorboard, mlflow]}."
            )
        return self.loggers[name]

    def describe(self, kind: str, name: str) -> PluginInfo:
        """The listing entry (package, version) that provides ``name``."""
        for item in self.info:
            if item.kind == kind and (
                item.name == name or (item.name.endswith("/*") and name.startswith(item.name[:-1]))
            ):
                return item
        raise PluginError(f"no {kind} plugin named {name!r}")

    def as_rows(self) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in asdict(i).items() if k in ("name", "kind", "family", "package", "version")}
            for i in self.info
        ]


def _unknown(kind: str, name: str, known: dict) -> str:
    names = ", ".join(sorted(known)) or "(none installed)"
    return (
        f"unknown {kind} {name!r}. Installed: {names}. "
        f"Run `pretextflow plugins` to list plugins, or install the package that provides it."
    )


# --------------------------------------------------------------------------------------------
_REGISTRY: Registry | None = None


def get_registry(reload: bool = False) -> Registry:
    """The process-wide registry, built on first use (imports plugins lazily: CLI start-up stays fast)."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        _REGISTRY = build_registry()
    return _REGISTRY


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def build_registry(extra_plugins: list[tuple[str, object]] | None = None, load_entry_points: bool = True) -> Registry:
    """Register built-ins, then entry points (and ``extra_plugins``, for tests), then collect."""
    from pretextflow.core.version import __version__

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    origin: dict[str, tuple[str, str]] = {}  # plugin name -> (package, version)

    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
        origin[module_name] = ("pretextflow", __version__)

    if load_entry_points:
        allow, block = _env_names(ENV_LOAD), _env_names(ENV_BLOCK) or set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            package = dist.name if dist else "?"
            version = dist.version if dist else "?"
            if ep.name in block or (allow is not None and ep.name not in allow):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third party must not take the others down
                registry.skipped.append(SkippedPlugin(ep.name, package, f"failed to import: {exc!r}"))
                continue
            try:
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                registry.skipped.append(SkippedPlugin(ep.name, package, f"failed to register: {exc!r}"))
                continue
            origin[ep.name] = (package, version)

    for name, plugin in extra_plugins or []:
        pm.register(plugin, name=name)
        origin[name] = (getattr(plugin, "__package_name__", name), getattr(plugin, "__version__", "0"))

    _collect(pm, registry, origin)
    return registry


def _hook_results(pm: pluggy.PluginManager, hook_name: str, registry: Registry, origin: dict[str, tuple[str, str]]):
    """Call one hook plugin by plugin, so an exception in one is isolated to it."""
    hook = getattr(pm.hook, hook_name)
    # get_hookimpls() is in registration order: built-ins first, so they own their names
    for impl in hook.get_hookimpls():
        package, version = origin.get(impl.plugin_name, ("?", "?"))
        try:
            result = impl.function()
        except Exception as exc:
            registry.skipped.append(SkippedPlugin(impl.plugin_name, package, f"{hook_name}() raised {exc!r}"))
            continue
        if not isinstance(result, (list, tuple)):
            registry.skipped.append(
                SkippedPlugin(
                    impl.plugin_name, package, f"{hook_name}() must return a list, got {type(result).__name__}"
                )
            )
            continue
        yield impl.plugin_name, package, version, result


def _collect(pm, registry: Registry, origin) -> None:
    checks: list[tuple[str, str, Callable[[Any], str | None], Callable[[Any], str]]] = [
        ("pretextflow_pretext_tasks", "pretext", _check_pretext, lambda o: o.name),
        ("pretextflow_backbones", "backbone", _check_backbone, lambda o: o.name),
        ("pretextflow_dataset_formats", "dataset", _check_format, lambda o: o.name),
        ("pretextflow_loggers", "logger", _check_logger, lambda o: o.name),
    ]
    for hook_name, kind, check, name_of in checks:
        table = registry.table(kind)
        for plugin_name, package, version, items in _hook_results(pm, hook_name, registry, origin):
            for obj in items:
                problem = check(obj)
                label = getattr(obj, "name", None) or repr(obj)
                if problem:
                    registry.skipped.append(SkippedPlugin(plugin_name, package, f"{kind} {label!r}: {problem}"))
                    continue
                name = name_of(obj)
                if name in table:
                    owner = next(i for i in registry.info if i.kind == kind and i.name == name)
                    registry.skipped.append(
                        SkippedPlugin(
                            plugin_name,
                            package,
                            f"{kind} name {name!r} is already provided by {owner.package} ({owner.plugin})",
                        )
                    )
                    continue
                table[name] = obj
                registry.info.append(
                    PluginInfo(
                        name=name,
                        kind=kind,
                        family=getattr(obj, "family", None) if kind == "pretext" else None,
                        package=package,
                        version=version,
                        description=(getattr(obj, "description", "") or "").strip(),
                        plugin=plugin_name,
                    )
                )


def _check_pretext(obj: Any) -> str | None:
    if not (inspect.isclass(obj) and issubclass(obj, PretextTask)):
        return "is not a PretextTask subclass"
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        return "has no string `name`"
    if getattr(obj, "family", None) not in FAMILIES:
        return f"family must be one of {FAMILIES}, got {getattr(obj, 'family', None)!r}"
    if not (inspect.isclass(obj.Params) and issubclass(obj.Params, BaseModel)):
        return "`Params` must be a pydantic model"
    return None


def _check_backbone(obj: Any) -> str | None:
    if not isinstance(obj, BackboneSpec):
        return "is not a BackboneSpec"
    if not callable(obj.build):
        return "`build` is not callable"
    return None


def _check_format(obj: Any) -> str | None:
    if not (inspect.isclass(obj) and issubclass(obj, DatasetFormat)):
        return "is not a DatasetFormat subclass"
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        return "has no string `name`"
    return None


def _check_logger(obj: Any) -> str | None:
    if not (inspect.isclass(obj) and issubclass(obj, RunLogger)):
        return "is not a RunLogger subclass"
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        return "has no string `name`"
    if not (inspect.isclass(obj.Options) and issubclass(obj.Options, BaseModel)):
        return "`Options` must be a pydantic model"
    return None
