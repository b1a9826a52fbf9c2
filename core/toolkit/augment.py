"""Batched, seeded augmentation that runs on whatever device the images are on.

Every transform draws one set of random parameters *per sample* from an explicit
``torch.Generator`` and applies them to the whole batch with tensor ops: no Python loop over
images in the hot path, and the same seed gives the same views on the same device.

Images enter as uint8 ``(N, C, H, W)`` and leave as float32 in [0, 1]; normalisation is the
backbone's business (it sees the same statistics in pretraining and probing).

The training loop hands the task its batch through :meth:`Augmenter.prepare_batch`: at the model's
input size (``out_size``, ``train.image_size``), while views of that batch are cropped from the stored
images at their full resolution and, for letterboxed images, inside their content (``extent``).
Evaluation brings stored images to the model's size with :func:`fit_to_size`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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
    ``bernoulli``, ``randint``) with the batch as the first dimension.

    ``out_size``: the side of a view whose ``ViewSpec.size`` is None (None: the input's side); the
    training loop sets it to the backbone's input size (``train.image_size``)."""

    def __init__(
        self,
        seed: int,
        device: torch.device | str = "cpu",
        shard: tuple[int, int] = (0, 1),
        out_size: int | None = None,
    ):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.rank, self.world = int(shard[0]), int(shard[1])
        if not 0 <= self.rank < self.world:
            raise ValueError(f"shard rank {self.rank} is outside world size {self.world}")
        self.out_size = None if out_size is None else int(out_size)
        self._batch: torch.Tensor | None = None  # the batch the task was handed (prepare_batch)
        self._source: torch.Tensor | None = None  # the stored images its views are cropped from
        self.extent: torch.Tensor | None = None  # (n, 2) content (h, w) fractions of those images

    # -- the current batch -----------------------------------------------------------------
    def prepare_batch(self, images: torch.Tensor, extent: torch.Tensor | None = None) -> torch.Tensor:
        """The batch to hand the task, remembered until the next call (or :meth:`clear_batch`).

        ``images`` (stored resolution) come back resized to ``out_size`` (antialiased bilinear) when
        that differs, so a task that uses the batch without a view still gets the model's input size;
        a view of the returned tensor is cropped from ``images`` themselves, at full resolution, and
        inside ``extent``: per image the content's (height, width) as fractions of the canvas side,
        the content centred on the canvas (:func:`content_fractions`); None = the whole canvas. Draws
        nothing: the augmentation's random stream is the same with or without it."""
        batch = images
        if self.out_size is not None and tuple(images.shape[-2:]) != (self.out_size, self.out_size):
            batch = resize_images(images, self.out_size)
        self._batch, self._source, self.extent = batch, images, extent
        return batch

    def clear_batch(self) -> None:
        """Forget the prepared batch (and its extent): views of any tensor see just that tensor."""
        self._batch = self._source = self.extent = None

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
    def resized_crop(self, x: torch.Tensor, spec: ViewSpec, extent: torch.Tensor | None = None) -> torch.Tensor:
        """Random resized crop + horizontal flip as one affine resample per sample, out at
        ``spec.size`` (else ``out_size``, else the input's side). With ``extent`` ((n, 2) content
        height and width as fractions of the side, centred) the box lies inside each image's content
        and its area fraction is of the content's area; the draws are the same either way."""
        n, _, h, w = x.shape
        area = self.uniform(n, *spec.crop_scale)
        log_ratio = self.uniform(n, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))
        ratio = torch.exp(log_ratio)
        if extent is None:
            eh = ew = 1.0
            # crop width/height as fractions of the image side, clamped to the image
            cw = torch.sqrt(area * ratio).clamp(max=1.0)
            ch = torch.sqrt(area / ratio).clamp(max=1.0)
        else:
            eh, ew = extent[:, 0].to(x.dtype), extent[:, 1].to(x.dtype)
            content = area * eh * ew  # the crop's area as a fraction of the canvas's
            cw = torch.minimum(torch.sqrt(content * ratio), ew)
            ch = torch.minimum(torch.sqrt(content / ratio), eh)
        # centre in normalised coordinates [-1, 1], so the crop stays inside the image (its content)
        cx = (self.uniform(n, 0.0, 1.0) * 2 - 1) * (ew - cw)
        cy = (self.uniform(n, 0.0, 1.0) * 2 - 1) * (eh - ch)
        flip = self.bernoulli(n, spec.flip_p)
        return crop_boxes(x, cx, cy, cw, ch, spec.size or self.out_size or h, flip)

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

    def view(
        self, images: torch.Tensor, spec: ViewSpec = ViewSpec(), extent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One augmented view of every image in the batch. Of the prepared batch (:meth:`prepare_batch`)
        it is cropped from the stored images, inside their content; of other images, inside
        ``extent`` when given (as :meth:`prepare_batch` takes it)."""
        source = images
        if self._batch is not None and images is self._batch:
            source, extent = self._source, self.extent
        x = to_float(source)
        x = self.resized_crop(x, spec, extent)
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


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` at ``size`` x ``size`` (antialiased bilinear); uint8 stays uint8 (rounded)."""
    y = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else y


def content_fractions(extents, side: int, device: torch.device | str | None = None) -> torch.Tensor | None:
    """Per image, the content's ``(h, w)`` in px on a ``side``-px canvas (the content centred, zero
    padding around it) -> the fractions of the side that views and evaluation sample from, float32
    ``(n, 2)``; None stays None. A dimension the content fills is 1; a smaller one is inset by half a
    pixel at each end (one more pixel when the padding is odd, which puts the content half a pixel
    off the centre), so bilinear sampling inside the box never reads padding."""
    if extents is None:
        return None
    e = extents if isinstance(extents, torch.Tensor) else torch.from_numpy(np.asarray(extents, dtype=np.int64))
    e = e.to(torch.float32).reshape(-1, 2)
    inner = (e - 1 - torch.remainder(side - e, 2)).clamp(min=1.0) / side
    return torch.where(e >= side, torch.ones_like(e), inner).to(device)


def fit_to_size(x: torch.Tensor, size: int, extent: torch.Tensor | None = None) -> torch.Tensor:
    """Float images ``(n, C, H, W)`` as a ``size``-px model sees them in evaluation: resized whole
    (antialiased bilinear; untouched when already that size) or, for an image whose ``extent`` (as
    :func:`content_fractions` gives it) is less than its canvas, the centred square of side
    min(h, w) of its content, resampled to ``size`` with one ``grid_sample``. Per image, so the
    result does not depend on which images share a batch."""
    out = x
    if tuple(x.shape[-2:]) != (size, size):
        out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if extent is None:
        return out
    rows = torch.nonzero((extent < 1).any(dim=1)).flatten()
    if len(rows) == 0:
        return out
    side = extent[rows].min(dim=1).values.to(x.dtype)
    centre = torch.zeros_like(side)
    out = out.clone() if out is x else out
    out[rows] = crop_boxes(x[rows], centre, centre, side, side, size)
    return out


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)
