"""A config checked against the installed plugins before any work starts: the dataset format and
its options (when there is a source to ingest), the backbone and the pretext task and its params.
So a misspelt plugin name is refused in a second, not after an ingest and a DVC push.

Plugin names are only ever looked up in the registry (built-ins + installed entry points): a
value such as ``os:system`` or ``package.module.Class`` is an unknown name, never an import."""

from __future__ import annotations

from pretextflow.core.config import RunConfig, validate_plugin_params
from pretextflow.core.errors import ConfigError
from pretextflow.core.registry.registry import Registry, get_registry


def check_plugins(cfg: RunConfig, registry: Registry | None = None) -> None:
    """Raises ConfigError / PluginError naming the field and the fix; returns None when all is known."""

    registry = registry or get_registry()
    d = cfg.data
    if d.source is not None:
        if not d.format:
            raise ConfigError("data.format is required when data.source is set (e.g. idx, imagefolder).")
        fmt = registry.dataset_format(d.format)
        validate_plugin_params(fmt.Options, d.options, "data.options")
    registry.backbone(cfg.backbone.name)
    resolved_pretext_params(cfg, registry)  # the task exists and its params are valid


def resolved_pretext_params(cfg: RunConfig, registry: Registry) -> dict:
    """The task's params with defaults filled in: what the key and the manifest record."""
    task_cls = registry.pretext_task(cfg.pretext.name)
    return validate_plugin_params(task_cls.Params, cfg.pretext.params, "pretext.params").model_dump(mode="json")
