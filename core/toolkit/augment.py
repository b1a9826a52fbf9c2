"""Batched, seeded augmentation that runs on whatever device the images are on.

Every transform draws one set of random parameters *per sample* from an explicit
``torch.Generator`` and applies them to the whole batch with tensor ops: no Python loop over
images in the hot path, and the same seed gives the same views on the same device.

Images enter as uint8 ``(N, C, H, W)`` and leave as float32 in [0, 1]; normalisation is the
backbone's business (it sees the same statistics in pretraining and probing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is passed through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


@dataclass(frozen=True)
class ViewSpec:
    """What one augmented view looks like. Defaults are SimCLR's recipe, scaled to small images."""

    size: int | None = None  # output side; None keeps the input size
    crop_scale: tuple[float, float] = (0.2, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4  # ignored for single-channel images
    grayscale_p: float = 0.2  # ignored for single-channel images
    blur_p: float = 0.0  # small images lose too much to blur; SimCLR uses it at 224 px
    solarize_p: float = 0.0


class Augmenter:
    """Draws per-sample parameters from its own generator, so augmentation is reproducible and
    independent of the model's RNG use (resuming restores ``state_dict``).

    ``shard=(rank, world)`` (multi-process training): each draw for a local batch of n samples
    draws the parameters of the global batch of ``n * world`` samples and keeps this rank's slice,
    so the ranks together make exactly the views one process would make for the global batch.
    Plugins get this by drawing through the methods below (``rand``, ``randn``, ``uniform``,
    ``bernoulli``, ``randint``) with the batch as the first dimension."""

    def __init__(self, seed: int, device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1)):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.rank, self.world = int(shard[0]), int(shard[1])
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard rank {self.rank} is outside world size {self.world}")

    # -- state, for checkpoint/resume ---------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())

    # -- random draws --------------------------------------------------------------------
    def _local(self, draw, size: tuple[int, ...]) -> torch.Tensor:
        """``draw(global_size)`` sliced to this rank's part of the first (batch) dimension."""
        if self.world == 1:
            return draw(size)
        n = size[0]
        return draw((n * self.world, *size[1:]))[self.rank * n : (self.rank + 1) * n]

    def rand(self, *size: int) -> torch.Tensor:
        """Uniform [0, 1) of shape ``size`` (batch first)."""
        return self._local(lambda s: torch.rand(s, generator=self.generator, device=self.device), size)

    def randn(self, *size: int) -> torch.Tensor:
        """Standard normal of shape ``size`` (batch first)."""
        return self._local(lambda s: torch.randn(s, generator=self.generator, device=self.device), size)

    def uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return self.rand(n) * (high - low) + low

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        return self.rand(n) < p

    def randint(self, high: int, size: tuple[int, ...]) -> torch.Tensor:
        return self._local(lambda s: torch.randint(high, s, generator=self.generator, device=self.device), tuple(size))

    # -- transforms ------------------------------------------------------------------------
    def resized_crop(self, x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
        """Random resized crop + horizontal flip as one affine resample per sample."""
        n, _, h, w = x.shape
        area = self.uniform(n, *spec.crop_scale)
        log_ratio = self.uniform(n, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))
        ratio = torch.exp(log_ratio)
        # crop width/height as fractions of the image side, clamped to the image
        cw = torch.sqrt(area * ratio).clamp(max=1.0)
        ch = torch.sqrt(area / ratio).clamp(max=1.0)
        # centre in normalised coordinates [-1, 1], so the crop stays inside the image
        cx = (self.uniform(n, 0.0, 1.0) * 2 - 1) * (1 - cw)
        cy = (self.uniform(n, 0.0, 1.0) * 2 - 1) * (1 - ch)
        flip = self.bernoulli(n, spec.flip_p)
        return crop_boxes(x, cx, cy, cw, ch, spec.size or h, flip)

    def color_jitter(self, x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
        n, c = x.shape[:2]
        apply = self.bernoulli(n, spec.jitter_p).view(n, 1, 1, 1)
        b = self.uniform(n, 1 - spec.brightness, 1 + spec.brightness).view(n, 1, 1, 1)
        k = self.uniform(n, 1 - spec.contrast, 1 + spec.contrast).view(n, 1, 1, 1)
        s = self.uniform(n, 1 - spec.saturation, 1 + spec.saturation).view(n, 1, 1, 1)
        y = x * b
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * k + mean
        if c == 3:
            gray = _luma(y)
            y = (y - gray) * s + gray
        y = y.clamp_(0, 1)
        return torch.where(apply, y, x)

    def grayscale(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if x.shape[1] != 3 or p <= 0:
            return x
        apply = self.bernoulli(x.shape[0], p).view(-1, 1, 1, 1)
        return torch.where(apply, _luma(x).expand_as(x), x)

    def blur(self, x: torch.Tensor, p: float, sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
        """Gaussian blur with a per-sample sigma, done as one grouped convolution."""
        if p <= 0:
            return x
        n, c, h, w = x.shape
        radius = max(1, int(0.05 * min(h, w)))  # kernel ~10% of the image side
        sig = self.uniform(n, *sigma)
        apply = self.bernoulli(n, p)
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k1 = torch.exp(-(t[None, :] ** 2) / (2 * sig[:, None] ** 2))
        k1 = k1 / k1.sum(dim=1, keepdim=True)
        kx = k1.repeat_interleave(c, dim=0).view(n * c, 1, 1, -1)
        ky = k1.repeat_interleave(c, dim=0).view(n * c, 1, -1, 1)
        y = x.reshape(1, n * c, h, w)
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kx, groups=n * c)
        y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), ky, groups=n * c)
        y = y.view(n, c, h, w)
        return torch.where(apply.view(n, 1, 1, 1), y, x)

    def solarize(self, x: torch.Tensor, p: float, threshold: float = 0.5) -> torch.Tensor:
        if p <= 0:
            return x
        apply = self.bernoulli(x.shape[0], p).view(-1, 1, 1, 1)
        return torch.where(apply & (x >= threshold), 1.0 - x, x)

    def view(self, images: torch.Tensor, spec: ViewSpec = ViewSpec()) -> torch.Tensor:
        """One augmented view of every image in the batch."""
        x = to_float(images)
        x = self.resized_crop(x, spec)
        x = self.color_jitter(x, spec)
        x = self.grayscale(x, spec.grayscale_p)
        x = self.blur(x, spec.blur_p)
        x = self.solarize(x, spec.solarize_p)
        return x

    def multi_crop(
        self, images: torch.Tensor, global_spec: ViewSpec, local_spec: ViewSpec, n_global: int = 2, n_local: int = 0
    ) -> list[torch.Tensor]:
        """Multi-crop (SwAV/DINO): ``n_global`` large views, then ``n_local`` small ones."""
        return [self.view(images, global_spec) for _ in range(n_global)] + [
            self.view(images, local_spec) for _ in range(n_local)
        ]


def crop_boxes(
    x: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    cw: torch.Tensor,
    ch: torch.Tensor,
    out_size: int,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample one box per sample to ``out_size`` x ``out_size`` with a single ``grid_sample``.

    Boxes are in normalised coordinates: centre ``(cx, cy)`` in [-1, 1], width/height ``(cw, ch)`` as
    fractions of the image side; ``flip`` mirrors the box horizontally."""
    n = x.shape[0]
    sign = torch.where(flip, -1.0, 1.0) if flip is not None else torch.ones(n, device=x.device)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = cw * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)
