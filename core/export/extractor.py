"""The one module users get back: images in, features out, normalisation inside, no gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pretextflow.core.errors import StageInputError


class FeatureExtractor(nn.Module):
    """Maps images ``(N, C, H, W)`` — uint8 in [0, 255] or float in [0, 1] — to features ``(N, D)``.

    ``model`` takes float images in [0, 1] and normalises them itself (a pretextflow ``Backbone``, a
    TorchScript module, an ONNX session wrapper, or a timm network behind :class:`Normalize`).
    ``info`` is the export's description: backbone, data version, method, mean/std, input size."""

    def __init__(self, model: nn.Module, *, in_chans: int, image_size: int, num_features: int, info: dict[str, Any]):
        super().__init__()
        self.model = model
        self.in_chans, self.image_size, self.num_features = int(in_chans), int(image_size), int(num_features)
        self.info = dict(info)
        self.eval().requires_grad_(False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.image_size, self.image_size)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [0, 1]; a shape or dtype the backbone cannot take is a clear error."""
        if not isinstance(images, torch.Tensor):
            raise StageInputError(f"images must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
        if images.ndim == 3:
            raise StageInputError(
                f"images of shape {tuple(images.shape)} lack the batch dimension: pass (N, C, H, W), "
                f"e.g. images[None] for one image of shape {self.input_shape}."
            )
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise StageInputError(
                f"this backbone takes images of shape (N, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(images.shape)}. Convert to {self.in_chans} channel(s) and resize to "
                f"{self.image_size}x{self.image_size} first (pretextflow embed does this for image files)."
            )
        if images.dtype == torch.uint8:
            return images.float().div_(255.0)
        if not images.is_floating_point():
            raise StageInputError(f"images must be uint8 (0-255) or float (0-1), got {images.dtype}")
        return images.float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(images))


class Normalize(nn.Module):
    """``(x - mean) / std`` in front of a network that expects normalised inputs (a timm model)."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)
