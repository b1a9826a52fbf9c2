"""The stable public API for plugin authors: import everything a plugin needs from here.

    from pretextflow.api import PretextTask, Params, StepOutput, Augmenter, ViewSpec, hookimpl

Names in ``__all__`` keep their meaning and signatures across minor releases; the modules they
come from (``pretextflow.core.*``) are internal and may move. The contracts and their invariants
are documented in ``docs/plugins.md``; ``pretextflow.testing`` checks a plugin against them.

Frozen teachers for distillation (``load_teacher``, ``teacher_sha256``) are in
:mod:`pretextflow.api.teachers`, part of the same stable API: a submodule, so that only the tasks that
import it have the teacher-loading code (and the export code it uses) in their stage keys.
"""

from __future__ import annotations

from pretextflow.core.data.sources import gunzip_bounded, join_uri, read_source_bytes
from pretextflow.core.errors import DataError, PluginError
from pretextflow.core.registry.contracts import (
    FAMILIES,
    ArrayDatasetFormat,
    Backbone,
    BackboneParams,
    BackboneSpec,
    DatasetArrays,
    DatasetFormat,
    DecodedImage,
    Family,
    Params,
    PretextTask,
    Requirements,
    RunInfo,
    RunLogger,
    SourceCatalog,
    SourceEntry,
    StepOutput,
    TokenAPI,
)
from pretextflow.core.registry.hookspecs import hookimpl
from pretextflow.core.security.redaction import redact
from pretextflow.core.toolkit.augment import Augmenter, ViewSpec, crop_boxes, to_float
from pretextflow.core.toolkit.collectives import all_reduce_mean, gather, gather_with_grad
from pretextflow.core.toolkit.heads import mlp, two_views
from pretextflow.core.toolkit.momentum import ema_update, frozen_copy
from pretextflow.core.toolkit.schedules import cosine_increase, linear_warmup

#: The version of this API; bumped (major) only when a name in ``__all__`` changes incompatibly.
API_VERSION = "2.2"


__all__ = [
    "API_VERSION",
    # hooks
    "hookimpl",
    # pretext tasks
    "PretextTask",
    "Params",
    "StepOutput",
    "Requirements",
    "Family",
    "FAMILIES",
    # views (batched, seeded, on-device augmentation)
    "Augmenter",
    "ViewSpec",
    "to_float",
    "crop_boxes",
    # heads and schedules shared by methods
    "mlp",
    "two_views",
    # losses over the global batch when training on several processes (identity in one process)
    "gather_with_grad",
    "gather",
    "all_reduce_mean",
    "frozen_copy",
    "ema_update",
    "cosine_increase",
    "linear_warmup",
    # backbones
    "Backbone",
    "BackboneSpec",
    "BackboneParams",
    "TokenAPI",
    # dataset formats
    "DatasetFormat",
    "SourceCatalog",
    "SourceEntry",
    "DecodedImage",
    "ArrayDatasetFormat",
    "DatasetArrays",
    # reading a dataset format's files through fsspec (local, s3://, http(s)://, memory://...)
    "read_source_bytes",
    "join_uri",
    "gunzip_bounded",
    # loggers (experiment trackers): the run's config, metrics, artifacts and end
    "RunLogger",
    "RunInfo",
    # a message without secrets (credentials in URLs, tokens the config named): for loggers' messages
    "redact",
    # errors a plugin may raise to tell the user what to fix (shown without a traceback)
    "PluginError",
    "DataError",
]
