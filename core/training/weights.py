"""``backbone.weights``: initial weights for the backbone's network from a safetensors file (any fsspec
URI, or ``hf-hub:ORG/NAME`` through huggingface_hub), matched to the network by name and shape.

Only safetensors are read: nothing is unpickled. The file's sha256 goes into the pretrain and probe
keys and the manifest, so other weights at the same URI are other stages."""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from torch import nn

from pretextflow.core.errors import ConfigError
from pretextflow.core.security.redaction import redact

HF_PREFIX = "hf-hub:"
# a classifier the backbone does not have (timm builds it with num_classes=0): dropped, not an error
HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head_dist.", "last_linear.")
# where a network's own names sit inside files pretextflow writes (freeze/export, pretrain checkpoints)
PREFIXES = ("", "net.", "backbone/net.", "model/backbone.net.", "backbone.net.", "module.", "model.")

_CACHE: dict[str, tuple[Any, bytes, str]] = {}  # uri -> (size and mtime, bytes, sha256): the latest only


def read_weights(uri: str) -> tuple[bytes, str]:
    """The file's bytes and sha256, read once per process while the file is unchanged."""
    if uri.startswith(HF_PREFIX):
        return _read_hf(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        info = fs.info(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone.weights {redact(uri)}: cannot be read ({exc}). Check the path.") from None
    stamp = (info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"))
    if uri not in _CACHE or _CACHE[uri][0] != stamp:  # a changed file replaces its old bytes
        data = fs.cat_file(path)
        _CACHE[uri] = (stamp, data, hashlib.sha256(data).hexdigest())
    return _CACHE[uri][1:]


def weights_sha256(uri: str | None) -> str | None:
    return None if uri is None else read_weights(uri)[1]


def _read_hf(uri: str) -> tuple[bytes, str]:
    repo = uri[len(HF_PREFIX) :]
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo, "model.safetensors")
    except Exception as exc:  # offline, no such repo, no safetensors file in it
        raise ConfigError(
            f"backbone.weights {uri}: could not get model.safetensors from the Hugging Face Hub "
            f"({exc.__class__.__name__}: {exc}). Offline? Download it elsewhere and give its path."
        ) from None
    return read_weights(local)


def load_initial_weights(net: nn.Module, uri: str) -> str:
    """Copy the weights of ``uri`` into ``net`` (every parameter and buffer must be found with its
    shape); returns the file's sha256."""
    data, digest = read_weights(uri)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ConfigError(
            f"backbone.weights {redact(uri)} is not a safetensors file ({exc}). Convert a .pth checkpoint "
            f"with safetensors.torch.save_file(torch.load(path, weights_only=True), 'weights.safetensors')."
        ) from None
    state = _match(net.state_dict(), tensors, uri)
    net.load_state_dict(state, strict=True)
    return digest


def _match(want: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], uri: str) -> dict[str, torch.Tensor]:
    prefix = max(PREFIXES, key=lambda p: sum(p + k in tensors for k in want))
    found = {k: tensors[prefix + k] for k in want if prefix + k in tensors}
    missing = [k for k in want if k not in found]
    extra = [
        k[len(prefix) :]
        for k in tensors
        if k.startswith(prefix) and k[len(prefix) :] not in want and not k[len(prefix) :].startswith(HEAD_PREFIXES)
    ]
    if missing or (extra and len(found) < len(want)):
        raise ConfigError(
            f"backbone.weights {redact(uri)} does not fit the backbone: {len(missing)} of its {len(want)} "
            f"tensors are missing (e.g. {', '.join(missing[:3])}); the file has {', '.join(extra[:3]) or 'no others'}. "
            f"Use weights of the same architecture (backbone.name, backbone.kwargs, backbone.small_image_stem)."
        )
    for k, v in found.items():
        if v.shape != want[k].shape:
            raise ConfigError(
                f"backbone.weights {redact(uri)}: {k} has shape {tuple(v.shape)}, the backbone {tuple(want[k].shape)}"
                + (" (the weights were trained on another number of image channels)" if v.ndim == 4 else "")
                + ". Use weights of the same architecture and input channels."
            )
    return {k: v.to(want[k].dtype) for k, v in found.items()}
