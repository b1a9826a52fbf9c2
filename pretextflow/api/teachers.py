"""Frozen teachers for distillation, part of the stable plugin API (``pretextflow.api``, 2.2).

    from pretextflow.api.teachers import load_teacher, teacher_sha256

A submodule of its own: the code version in a pretrain stage key is the import closure of the task's
module, so only a task that imports this module (``distill``) has the teacher loader, and the export
code it reads runs and export folders with, in its key; every other task's key stays clear of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the export code is imported on the first call, not when the plugins are loaded
    from pretextflow.core.export.teacher import Teacher


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


__all__ = ["load_teacher", "teacher_sha256"]
