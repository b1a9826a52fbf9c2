"""Frozen teachers for distillation: the backbone of a run folder, its ``manifest.json`` or an export
folder (what :func:`~pretextflow.core.export.loading.load_backbone` reads) as a module that maps a
student's augmented views to the teacher's embedding, and the sha256 of the files it is read from
(for stage keys: another teacher at the same URI is another stage).

A plain weights file (timm's ``model.safetensors``, a ``.pth``) is not a teacher: it does not record
the architecture, input shape and normalisation that a run or an export does. Make it one first: a
pretextflow run whose ``backbone.weights`` is that file, frozen and exported."""

from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretextflow.core.errors import PluginError, PretextflowError
from pretextflow.core.export.extractor import FeatureExtractor
from pretextflow.core.export.loading import MARKER, _locate, _manifest_path, frozen_location, load_backbone
from pretextflow.core.security.redaction import redact
from pretextflow.core.toolkit.augment import to_float

FIX = (
    "Pass a run folder (artifacts/runs/<run id>: `pretextflow runs` lists them), its manifest.json, or a "
    "folder written by `pretextflow export`; a plain weights file is not a teacher (it records no "
    "architecture): start a run from it with backbone.weights, then use that run."
)

_DIGESTS: dict[tuple, str] = {}  # the stamps of a teacher's files -> their digest (files unchanged: not re-read)


def teacher_sha256(where: str, storage_options: dict[str, Any] | None = None) -> str:
    """The sha256 of what the teacher of ``where`` is loaded from: a run's frozen backbone.safetensors,
    or an export's marker and model files. Re-read only when a file's size or modification time
    changed. A PluginError names the URI and the fix when there is no teacher there."""
    try:
        files = _content_files(where, storage_options)
        stamps = tuple(_stamp(fs, path) for fs, path in files)
        if stamps in _DIGESTS:
            return _DIGESTS[stamps]
        h = hashlib.sha256()
        for fs, path in files:
            h.update(posixpath.basename(path).encode() + b"\0" + hashlib.sha256(fs.cat_file(path)).digest())
        digest = h.hexdigest()
    except PluginError:
        raise
    except Exception as exc:  # any URI a user may type: unknown protocol, missing package, unreadable file
        raise PluginError(f"teacher {redact(str(where))} cannot be read: {_reason(exc)} {FIX}") from None
    if all(s[-1] is not None for s in stamps):  # without a modification time, a changed file could not be told
        if len(_DIGESTS) > 64:
            _DIGESTS.clear()
        _DIGESTS[stamps] = digest
    return digest


def _content_files(where: str, storage_options: dict[str, Any] | None) -> list[tuple[Any, str]]:
    """``(filesystem, path)`` of each file that defines the teacher of ``where``, in a fixed order."""
    fs, path, options = _locate(where, storage_options)
    marker = posixpath.join(path, MARKER)
    if not path.endswith(".json") and fs.exists(marker):
        files = json.loads(fs.cat_file(marker)).get("files", [])
        return [(fs, marker)] + [(fs, posixpath.join(path, name)) for name in sorted(files)]
    manifest_path = _manifest_path(path)
    if not fs.exists(manifest_path):
        if not fs.exists(path):
            what = "does not exist"
        elif fs.isfile(path):
            what = "is a file, not a run's manifest.json"
        else:
            what = f"holds no manifest.json and no {MARKER}"
        raise PluginError(f"teacher {redact(str(where))} {what}. {FIX}")
    manifest = json.loads(fs.cat_file(manifest_path))
    return [frozen_location(fs, manifest_path, manifest, options)]


def _stamp(fs, path: str) -> tuple:
    info = fs.info(path)
    when = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
    return (fs.unstrip_protocol(path), info.get("size"), None if when is None else str(when))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if isinstance(exc, PretextflowError) else f"{type(exc).__name__}: {text}"
    return text if text.endswith((".", ")")) else text + "."


def load_teacher(
    where: str,
    storage_options: dict[str, Any] | None = None,
    sha256: str | None = None,
    trust_torchscript: bool = False,
) -> Teacher:
    """The frozen teacher of ``where`` (see :class:`Teacher`). ``sha256``: the digest the stage key
    recorded (:func:`teacher_sha256`); other content at ``where`` is a PluginError. Loading does not
    touch torch's global RNG, so a task that loads its teacher stays seeded as it was."""
    digest = teacher_sha256(where, storage_options)
    if sha256 is not None and sha256 != digest:
        raise PluginError(
            f"teacher {redact(str(where))} has changed: its files' sha256 is {digest}, the config pins "
            f"{sha256}. Point the teacher at the run or export the config was made for, or drop the pinned "
            f"teacher_sha256 to distil from this one (a new stage key)."
        )
    try:
        with torch.random.fork_rng(devices=[]):
            extractor = load_backbone(where, storage_options, trust_torchscript=trust_torchscript)
    except PretextflowError as exc:
        raise PluginError(f"teacher {redact(str(where))}: {_reason(exc)}") from None
    return Teacher(extractor, digest, str(where))


class Teacher(nn.Module):
    """A frozen embedding: images ``(N, C, H, W)`` (uint8, or float in [0, 1]) at any size -> float32
    ``(N, num_features)``, computed without autograd. The views are brought to the teacher's input:
    resized (antialiased bilinear) to ``image_size`` and, between 1 and 3 channels, converted
    (grey repeated; RGB to luma). Always in eval mode (``train()`` leaves it there), ``requires_grad``
    off; it follows its input to the input's device on first use. ``sha256``: its content digest."""

    def __init__(self, extractor: FeatureExtractor, sha256: str, uri: str):
        super().__init__()
        self.extractor = extractor
        self.in_chans, self.image_size = extractor.in_chans, extractor.image_size
        self.num_features, self.info = extractor.num_features, extractor.info
        self.sha256, self.uri = sha256, uri
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def check_channels(self, channels: int) -> None:
        """A PluginError unless images with ``channels`` channels can be brought to the teacher's."""
        if channels != self.in_chans and {channels, self.in_chans} != {1, 3}:
            raise PluginError(
                f"teacher {redact(self.uri)} takes {self.in_chans}-channel images, the student's have "
                f"{channels}: distil between data of the same channels (or grey and RGB, which are converted)."
            )

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` as float in [0, 1] with the teacher's channels and side."""
        x = to_float(images)
        self.check_channels(x.shape[1])
        if x.shape[1] == 1 and self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.in_chans == 1:
            w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x * w).sum(dim=1, keepdim=True)
        s = self.image_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
        return x.contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.adapt(images)
            self._follow(x.device)
            return self.extractor(x).float()

    def _follow(self, device: torch.device) -> None:
        first = next(itertools.chain(self.extractor.parameters(), self.extractor.buffers()), None)
        if first is not None and first.device != device:  # an ONNX session has none: it moves its input itself
            self.extractor.to(device)
