"""The plugin hooks. A plugin is any module or object with functions marked ``@hookimpl`` whose
names match these; the built-ins in ``pretextflow.plugins`` use exactly the same hooks.

Each hook returns a list of contract objects (the style of conda's plugin hooks): returning is
easier to validate and to report on than a register callback.
"""

from __future__ import annotations

import pluggy

PROJECT = "pretextflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pretextflow_pretext_tasks() -> list[type]:
    """Return :class:`~pretextflow.core.registry.contracts.PretextTask` subclasses."""


@hookspec
def pretextflow_backbones() -> list:
    """Return :class:`~pretextflow.core.registry.contracts.BackboneSpec` objects."""


@hookspec
def pretextflow_dataset_formats() -> list[type]:
    """Return :class:`~pretextflow.core.registry.contracts.DatasetFormat` subclasses."""


@hookspec
def pretextflow_loggers() -> list[type]:
    """Return :class:`~pretextflow.core.registry.contracts.RunLogger` subclasses."""
