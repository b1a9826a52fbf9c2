"""``inpainting`` (Context Encoders, Pathak et al. 2016): hide a random square region and
reconstruct its pixels from the rest. Generative family.

Recipe, scaled to small images: a random square covering ``mask_side`` of the image side (half,
i.e. a quarter of the area, as the paper's central/random block), filled with the dataset mean;
a decoder from the pooled features to the full image; the L2 loss weighted 0.99 on the hidden
region and 0.01 on the visible context (the paper's weighting; no adversarial term)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from pretextflow.api import Augmenter, Backbone, Params, PretextTask, StepOutput, ViewSpec, hookimpl


class InpaintingParams(Params):
    mask_side: float = Field(0.5, gt=0, lt=1, description="side of the hidden square, as a fraction of the image side")
    decoder_hidden: int = Field(512, gt=0, le=16384)
    masked_weight: float = Field(0.99, ge=0, le=1, description="loss weight of the hidden region (rest: context)")
    crop_scale_min: float = Field(0.6, gt=0, le=1)


class Inpainting(PretextTask):
    name = "inpainting"
    family = "generative"
    description = "reconstruct the pixels of a hidden square region (context encoder)"
    Params = InpaintingParams

    def __init__(self, backbone: Backbone, params: InpaintingParams):
        super().__init__(backbone, params)
        c, side, f = backbone.in_chans, backbone.image_size, backbone.num_features
        self.decoder = nn.Sequential(
            nn.Linear(f, params.decoder_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(params.decoder_hidden, c * side * side),
            nn.Sigmoid(),
        )
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0), jitter_p=0.0, grayscale_p=0.0)

    def random_masks(self, aug: Augmenter, n: int, h: int, w: int, device) -> torch.Tensor:
        """(n, 1, h, w) booleans, True inside one random square per sample."""
        side_h, side_w = max(1, round(h * self.params.mask_side)), max(1, round(w * self.params.mask_side))
        top = aug.randint(h - side_h + 1, (n,)).view(n, 1, 1)
        left = aug.randint(w - side_w + 1, (n,)).view(n, 1, 1)
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
        return inside.unsqueeze(1)

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        x = aug.view(images, self.view)
        n, c, h, w = x.shape
        mask = self.random_masks(aug, n, h, w, x.device)
        fill = self.backbone.mean.expand(n, c, h, w)
        corrupted = torch.where(mask, fill, x)
        recon = self.decoder(self.backbone(corrupted)).view(n, c, h, w)
        err = (recon - x).pow(2)
        m = mask.expand_as(err).float()
        masked = (err * m).sum() / m.sum().clamp(min=1)
        context = (err * (1 - m)).sum() / (1 - m).sum().clamp(min=1)
        wgt = self.params.masked_weight
        loss = wgt * masked + (1 - wgt) * context
        return StepOutput(loss, {"masked_mse": masked.item()})


@hookimpl
def pretextflow_pretext_tasks():
    return [Inpainting]
