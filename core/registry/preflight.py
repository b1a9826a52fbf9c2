"""A config checked against the installed plugins before any work starts: the dataset format and
its options (when there is a source to ingest), the backbone, the pretext task and its params, and
the loggers and their options.
So a misspelt plugin name is refused in a second, not after an ingest and a DVC push.

Plugin names are only ever looked up in the registry (built-ins + installed entry points): a
value such as ``os:system`` or ``package.module.Class`` is an unknown name, never an import."""

from __future__ import annotations

from pydantic import BaseModel

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
    logger_options(cfg, registry)


def logger_options(cfg: RunConfig, registry: Registry) -> dict[str, BaseModel]:
    """Each logger the config turns on (``logging.loggers``), in order, with its validated options.
    Options for a logger that is not installed are an error (a misspelt name would be ignored)."""
    logging_cfg = cfg.logging
    unknown = sorted(set(logging_cfg.options) - set(registry.loggers))
    if unknown:
        raise ConfigError(
            f"logging.options.{unknown[0]}: no installed logger is named {unknown[0]!r} (installed: "
            f"{', '.join(sorted(registry.loggers)) or 'none'}). Check the spelling; `pretextflow plugins` lists them."
        )
    return {
        name: validate_plugin_params(
            registry.logger(name).Options, logging_cfg.options.get(name, {}), f"logging.options.{name}"
        )
        for name in logging_cfg.loggers
    }


def resolved_pretext_params(cfg: RunConfig, registry: Registry) -> dict:
    """The task's params with defaults filled in: what the key and the manifest record."""
    task_cls = registry.pretext_task(cfg.pretext.name)
    return validate_plugin_params(task_cls.Params, cfg.pretext.params, "pretext.params").model_dump(mode="json")
