"""A labelled dataset brought to a backbone's input shape, for probing a backbone pretrained on other
data (``probe.data``): images resized (antialiased bilinear) to the backbone's size; another channel
count is refused, naming the fix."""

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
    return dataclasses.replace(
        ds,
        meta=meta,
        train_images=resize_images(ds.train_images, h, w),
        test_images=resize_images(ds.test_images, h, w),
        location=None,  # exists only in memory now
    )


def resize_images(images: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 ``(N, C, H0, W0)`` → uint8 ``(N, C, h, w)``, deterministic, a chunk at a time."""
    out = np.empty((len(images), images.shape[1], h, w), dtype=np.uint8)
    for start in range(0, len(images), CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + CHUNK])).float()
        y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out
