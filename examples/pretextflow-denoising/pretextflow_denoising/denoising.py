"""``denoising`` (Vincent et al. 2008, "Extracting and composing robust features with denoising
autoencoders"): corrupt an image and reconstruct the clean one from the backbone's features.
Generative family; works on grayscale images (unlike colourisation).

Recipe, scaled to small images: a light crop + flip gives the clean view; two corruptions of the
paper are applied per pixel: masking noise (a fraction ``drop_p`` of the pixels set to 0) and
additive Gaussian noise (``noise_std`` in [0, 1] pixel units); a two-layer decoder maps the
pooled features to the whole image; the loss is the mean squared error to the clean view.

A third-party plugin written only against ``pretextflow.api``; every random draw comes from the
seeded augmenter's generator, on the images' device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pretextflow.api import Augmenter, Backbone, Params, PretextTask, StepOutput, ViewSpec, hookimpl


class DenoisingParams(Params):
    noise_std: float = Field(0.3, ge=0, le=1, description="std of the additive Gaussian noise (pixels in [0, 1])")
    drop_p: float = Field(0.25, ge=0, lt=1, description="fraction of pixels set to 0 (masking noise)")
    decoder_hidden: int = Field(256, gt=0, le=16384, description="hidden width of the decoder")
    crop_scale_min: float = Field(0.6, gt=0, le=1, description="smallest crop of the clean view (area fraction)")


class Denoising(PretextTask):
    name = "denoising"
    family = "generative"
    description = "reconstruct the clean image from a noisy, partly masked copy (denoising autoencoder)"
    Params = DenoisingParams

    def __init__(self, backbone: Backbone, params: DenoisingParams):
        super().__init__(backbone, params)
        c, side, f = backbone.in_chans, backbone.image_size, backbone.num_features
        self.decoder = nn.Sequential(
            nn.Linear(f, params.decoder_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(params.decoder_hidden, c * side * side),
            nn.Sigmoid(),
        )
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0), jitter_p=0.0, grayscale_p=0.0)

    def corrupt(self, x: torch.Tensor, aug: Augmenter) -> torch.Tensor:
        """Masking noise then Gaussian noise, per pixel, drawn from the augmenter's generator."""
        keep = aug.rand(*x.shape) >= self.params.drop_p
        noise = aug.randn(*x.shape) * self.params.noise_std
        return ((x + noise) * keep).clamp(0, 1)

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        clean = aug.view(images, self.view)
        noisy = self.corrupt(clean, aug)
        recon = self.decoder(self.backbone(noisy)).view_as(clean)
        loss = F.mse_loss(recon, clean)
        return StepOutput(loss, {"noisy_mse": F.mse_loss(noisy, clean).item()})


@hookimpl
def pretextflow_pretext_tasks():
    return [Denoising]
