"""A labelled dataset brought to a backbone's input shape, for probing a backbone pretrained on other
data (``probe.data``): images resized (antialiased bilinear) to the backbone's size, their extents
(a dataset stored with aspect ratios) scaled with them; another channel count is refused, naming
the fix."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from pretextflow.core.data.dataset import Dataset
from pretextflow.core.errors import DataError

CHUNK = 2048  # images resized at a time: bounds the float copy


def adapt_dataset(ds: Dataset, image_shape: list[int] | tuple[int, ...]) -> Dataset:
    """``ds`` with its images at ``image_shape`` (C, H, W); ``ds`` itself when they already are."""
    c, h, w = (int(v) for v in image_shape)
    if ds.in_chans != c:
        raise DataError(
            f"probe.data {ds.name!r} has {ds.in_chans}-channel images, but the backbone was pretrained on "
            f"{c}-channel images. Ingest it with {c} channel(s) (imagefolder: --option channels={c}), or "
            f"probe a dataset with {c}-channel images."
        )
    if list(ds.meta["image_shape"]) == [c, h, w]:
        return ds
    meta = {**ds.meta, "image_shape": [c, h, w], "adapted_from": {"image_shape": ds.meta["image_shape"]}}
    old = (int(ds.meta["image_shape"][1]), int(ds.meta["image_shape"][2]))
    return dataclasses.replace(
        ds,
        meta=meta,
        train_images=resize_images(ds.train_images, h, w),
        test_images=resize_images(ds.test_images, h, w),
        train_extents=scale_extents(ds.train_extents, old, (h, w)),
        test_extents=scale_extents(ds.test_extents, old, (h, w)),
        location=None,  # exists only in memory now
    )


def scale_extents(extents: np.ndarray | None, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray | None:
    """Extents ``(N, 2)`` on an ``old`` (H, W) canvas as they are on the canvas resized to ``new``
    (rounded, at least 1 px, at most the canvas)."""
    if extents is None:
        return None
    scale = np.asarray(new, dtype=np.float64) / np.asarray(old, dtype=np.float64)
    out = np.floor(np.asarray(extents, dtype=np.float64) * scale + 0.5)
    return np.clip(out, 1, np.asarray(new)).astype(np.int32).reshape(-1, 2)


def resize_images(images: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 ``(N, C, H0, W0)`` → uint8 ``(N, C, h, w)``, deterministic, a chunk at a time."""
    out = np.empty((len(images), images.shape[1], h, w), dtype=np.uint8)
    for start in range(0, len(images), CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + CHUNK])).float()
        y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out
