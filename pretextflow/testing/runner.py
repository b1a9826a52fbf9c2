"""One entry point for the CLI and for tests: which kind a plugin is, and running its checks."""

from __future__ import annotations

from typing import Any

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import BackboneSpec, DatasetFormat, RunLogger
from pretextflow.core.registry.registry import KINDS, Registry, get_registry
from pretextflow.testing.backbone import check_backbone
from pretextflow.testing.dataset import check_dataset_format
from pretextflow.testing.fixtures import _skipped_note
from pretextflow.testing.logger import check_logger
from pretextflow.testing.pretext import check_pretext_task
from pretextflow.testing.results import CheckResult, ConformanceError, format_results


def find_kind(name: str, registry: Registry | None = None) -> str:
    """Which kind of plugin ``name`` is: pretext, backbone, dataset or logger (PluginError if none or several)."""
    reg = registry or get_registry()
    kinds = [
        k
        for k, found in (
            ("pretext", name in reg.pretext),
            ("backbone", any(s.matches(name) for s in reg.backbones.values())),
            ("dataset", name in reg.formats),
            ("logger", name in reg.loggers),
        )
        if found
    ]
    if len(kinds) > 1:
        raise PluginError(f"{name!r} is a {' and a '.join(kinds)} plugin: pass --kind {'|'.join(kinds)}")
    if not kinds:
        known = sorted(reg.pretext) + sorted(reg.backbones) + sorted(reg.formats) + sorted(reg.loggers)
        raise PluginError(
            f"no plugin named {name!r}. Installed: {', '.join(known)}. Run `pretextflow plugins`."
            f"{_skipped_note(reg, name)}"
        )
    return kinds[0]


def check_plugin(plugin: Any, kind: str | None = None, **options: Any) -> list[CheckResult]:
    """Dispatch to :func:`check_pretext_task`, :func:`check_backbone`, :func:`check_dataset_format`
    or :func:`check_logger`."""
    if kind is None:
        if isinstance(plugin, str):
            kind = find_kind(plugin, options.get("registry"))
        elif isinstance(plugin, BackboneSpec):
            kind = "backbone"
        elif isinstance(plugin, type) and issubclass(plugin, DatasetFormat):
            kind = "dataset"
        elif isinstance(plugin, type) and issubclass(plugin, RunLogger):
            kind = "logger"
        else:
            kind = "pretext"
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}: use one of {', '.join(KINDS)}")
    fn = {
        "pretext": check_pretext_task,
        "backbone": check_backbone,
        "dataset": check_dataset_format,
        "logger": check_logger,
    }[kind]
    return fn(plugin, **options)


def assert_conforms(plugin: Any, kind: str | None = None, **options: Any) -> list[CheckResult]:
    """For pytest: run every check, raise :class:`ConformanceError` listing the failed ones."""
    results = check_plugin(plugin, kind, **options)
    failed = [r for r in results if r.failed]
    if failed:
        name = plugin if isinstance(plugin, str) else getattr(plugin, "name", repr(plugin))
        raise ConformanceError(f"{name!r} fails {len(failed)} check(s):\n" + format_results(results))
    return results
