"""Frozen backbone -> feature arrays. Eval mode (BatchNorm uses its running statistics and does
not update them), no autograd."""

from __future__ import annotations

import numpy as np
import torch

from pretextflow.core.registry.contracts import Backbone
from pretextflow.core.toolkit.augment import to_float


@torch.inference_mode()
def extract_features(
    backbone: Backbone, images: np.ndarray, batch_size: int = 1024, device: torch.device | str = "cpu"
) -> np.ndarray:
    backbone.eval()
    device = torch.device(device)
    backbone.to(device)
    out = np.empty((len(images), backbone.num_features), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        out[start : start + len(chunk)] = backbone(to_float(chunk)).float().cpu().numpy()
    return out


def pixel_features(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: every pixel a feature, scaled to [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


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
    store, key: str, backbone_fn, splits: dict[str, np.ndarray], batch_size: int, logger=None, device="cpu"
) -> dict[str, np.ndarray]:
    """Features of every split, computed once per ``key`` (frozen backbone x dataset version) and
    kept in the store under ``features/<key>/<split>.npy``; later probes and the report reuse them.
    ``backbone_fn`` builds the backbone only when the features are not there yet."""
    if store.is_complete("features", key):
        if logger:
            logger.info("features %s: reusing the stored features", key)
        return {name: _from_npy(store.read_bytes("features", key, f"{name}.npy")) for name in splits}
    backbone = backbone_fn()
    before = {n: t.clone() for n, t in backbone.state_dict().items()}
    out = {name: extract_features(backbone, images, batch_size, device) for name, images in splits.items()}
    backbone.to("cpu")
    if any(not torch.equal(before[n], t) for n, t in backbone.state_dict().items()):
        raise RuntimeError("the frozen backbone changed during feature extraction")  # a bug, not a user error
    for name, feats in out.items():
        store.write_bytes(_npy(feats), "features", key, f"{name}.npy")
    store.mark_complete("features", key, {"shape": {k: list(v.shape) for k, v in out.items()}})
    return out


def load_cached_features(store, key: str, split: str) -> np.ndarray:
    return _from_npy(store.read_bytes("features", key, f"{split}.npy"))
