"""Frozen backbone -> feature arrays. Eval mode (BatchNorm uses its running statistics and does
not update them), no autograd. Images are read batch by batch (a memory map, a ShardedArray or an
ImageView is never loaded whole) and brought to the backbone's input size on the device
(``toolkit.augment.fit_to_size``: resized, or the centred square of a letterboxed image's content)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pretextflow.core.registry.contracts import Backbone
from pretextflow.core.toolkit.augment import content_fractions, fit_to_size, to_float


@torch.inference_mode()
def extract_features(
    backbone: Backbone,
    images: np.ndarray,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    extents: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The backbone's features of ``images`` (uint8 ``(N, C, H, W)``, the stored size), each image
    brought to ``backbone.image_size``; ``extents``: per image the (h, w) px of its content, centred
    on the canvas (``Dataset.train_extents``), or None when the images fill it. ``progress(images
    done)`` after each batch."""
    backbone.eval()
    device = torch.device(device)
    backbone.to(device)
    fractions = content_fractions(extents, int(images.shape[-1]), device)
    out = np.empty((len(images), backbone.num_features), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        extent = None if fractions is None else fractions[start : start + len(chunk)]
        x = fit_to_size(to_float(chunk), backbone.image_size, extent)
        out[start : start + len(chunk)] = backbone(x).float().cpu().numpy()
        if progress is not None:
            progress(start + len(chunk))
    return out


def pixel_features(images: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """The raw-pixel baseline: every pixel a feature, scaled to [0, 1] (read batch by batch)."""
    out = np.empty((len(images), int(np.prod(images.shape[1:]))), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size])
        out[start : start + len(chunk)] = chunk.reshape(len(chunk), -1).astype(np.float32) / 255.0
    return out


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    import io

    from pretextflow.core.errors import StageInputError

    try:  # never unpickled: an object array in the store is refused, not executed
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise StageInputError(
            f"stored features are not a plain numeric array ({exc}). Delete the features/ "
            f"folder of the artifact store; they are recomputed from the frozen backbone."
        ) from None


def cached_features(
    store,
    key: str,
    backbone_fn,
    splits: dict[str, np.ndarray],
    batch_size: int,
    logger=None,
    device="cpu",
    extents: dict[str, np.ndarray | None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Features of every split, computed once per ``key`` (frozen backbone x dataset version) and
    kept in the store under ``features/<key>/<split>.npy``; later probes and the report reuse them.
    ``backbone_fn`` builds the backbone only when the features are not there yet. ``extents``: each
    split's content extents (``extract_features``), if any. ``progress(images done, images)`` over
    all splits as they are extracted."""
    if store.is_complete("features", key):
        if logger:
            logger.info("features %s: reusing the stored features", key)
        return {name: _from_npy(store.read_bytes("features", key, f"{name}.npy")) for name in splits}
    backbone = backbone_fn()
    before = {n: t.clone() for n, t in backbone.state_dict().items()}
    extents = extents or {}
    total, offset, out = sum(len(images) for images in splits.values()), 0, {}
    for name, images in splits.items():
        report = None if progress is None else (lambda done, base=offset: progress(base + done, total))
        out[name] = extract_features(backbone, images, batch_size, device, extents.get(name), report)
        offset += len(images)
    backbone.to("cpu")
    if any(not torch.equal(before[n], t) for n, t in backbone.state_dict().items()):
        raise RuntimeError("the frozen backbone changed during feature extraction")  # a bug, not a user error
    for name, feats in out.items():
        store.write_bytes(_npy(feats), "features", key, f"{name}.npy")
    store.mark_complete("features", key, {"shape": {k: list(v.shape) for k, v in out.items()}})
    return out


def load_cached_features(store, key: str, split: str) -> np.ndarray:
    return _from_npy(store.read_bytes("features", key, f"{split}.npy"))
