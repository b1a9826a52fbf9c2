"""Frozen backbone -> feature arrays. Eval mode (BatchNorm uses its running statistics and does
not update them), no autograd."""
from __future__ import annotations

import numpy as np
import torch

from .augment import to_float
from .contracts import Backbone


@torch.inference_mode()
def extract_features(backbone: Backbone, images: np.ndarray, batch_size: int = 1024,
                     device: torch.device | str = "cpu") -> np.ndarray:
    backbone.eval()
    device = torch.device(device)
    backbone.to(device)
    out = np.empty((len(images), backbone.num_features), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.array(images[start:start + batch_size])).to(device)
        out[start:start + len(chunk)] = backbone(to_float(chunk)).float().cpu().numpy()
    return out


def pixel_features(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: every pixel a feature, scaled to [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0
