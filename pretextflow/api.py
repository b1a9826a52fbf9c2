"""The stable public API for plugin authors: import everything a plugin needs from here.

    from pretextflow.api import PretextTask, Params, StepOutput, Augmenter, ViewSpec, hookimpl

Names in ``__all__`` keep their meaning and signatures across minor releases; the modules they
come from (``pretextflow.core.*``) are internal and may move. The contracts and their invariants
are documented in ``docs/plugins.md``; ``pretextflow.testing`` checks a plugin against them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from pretextflow.core.export.teacher import Teacher

#: The version of this API; bumped (major) only when a name in ``__all__`` changes incompatibly.
API_VERSION = "2.2"


def load_teacher(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    sha256: str | None = None,
    trust_torchscript: bool = False,
) -> Teacher:
    """A frozen teacher for distillation: the backbone of a run folder (``artifacts/runs/<run id>``), its
    ``manifest.json`` or a folder written by ``pretextflow export`` (any fsspec URI; what
    ``pretextflow.load_backbone`` reads), as an ``nn.Module`` mapping images ``(N, C, H, W)`` — uint8, or
    float in [0, 1], as the training loop and ``Augmenter.view`` give them, at any size — to its
    embedding, float32 ``(N, D)`` (``.num_features`` = D). The images are resized to the teacher's input
    and converted between grey and RGB; it runs under ``torch.no_grad``, is always in eval mode with
    ``requires_grad`` off, and moves itself to its input's device on first use. Keep it out of your
    module tree (a plain attribute such as a list): it then stays out of the state dict, the
    optimizer and ``train()``. ``sha256`` (from :func:`teacher_sha256`) refuses other content at ``uri``.

    A plain weights file (timm's ``model.safetensors``, a ``.pth``) is not accepted: it records no
    architecture, input shape or normalisation; make it a run first (``backbone.weights``). A
    TorchScript export runs code when loaded: it loads only with ``trust_torchscript=True``. Errors
    are PluginErrors naming the URI and the fix."""
    from pretextflow.core.export.teacher import load_teacher as _load

    return _load(uri, storage_options, sha256, trust_torchscript)


def teacher_sha256(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """The sha256 of the files the teacher at ``uri`` is loaded from (a run's frozen backbone, an
    export's marker and model files), for a task's params to record: the stage key then changes when
    the teacher's content does, not only its URI. Re-read only when a file changed (size, mtime)."""
    from pretextflow.core.export.teacher import teacher_sha256 as _digest

    return _digest(uri, storage_options)


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
    # frozen teachers to distil from (run folders, manifests, export folders) and their content digest
    "load_teacher",
    "teacher_sha256",
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
