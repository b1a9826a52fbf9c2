"""``simclr`` (Chen et al. 2020): two augmented views of each image are pulled together and
pushed away from every other image in the batch with the NT-Xent loss. Contrastive family.

Recipe, scaled to small images: random resized crop (scale 0.2-1), flip, colour jitter (p=0.8),
grayscale (p=0.2, colour only), no blur at this size; a 2-layer MLP projection head to 128
dimensions; temperature 0.5 (the paper's CIFAR-10 setting)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pretextflow.api import (
    Augmenter,
    Backbone,
    Params,
    PretextTask,
    StepOutput,
    ViewSpec,
    gather_with_grad,
    hookimpl,
    two_views,
)


class SimCLRParams(Params):
    temperature: float = Field(0.5, gt=0)
    proj_hidden: int = Field(0, ge=0, le=16384, description="hidden width of the projection MLP; 0 = backbone width")
    proj_dim: int = Field(128, gt=0, le=16384)
    crop_scale_min: float = Field(0.2, gt=0, le=1)
    jitter_strength: float = Field(0.4, ge=0, le=1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy over 2N views; each view's positive is its twin."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


class SimCLR(PretextTask):
    name = "simclr"
    family = "contrastive"
    description = "two-view contrastive learning with the NT-Xent loss"
    Params = SimCLRParams

    def __init__(self, backbone: Backbone, params: SimCLRParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        hidden = params.proj_hidden or f
        self.projector = nn.Sequential(
            nn.Linear(f, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, params.proj_dim)
        )
        s = params.jitter_strength
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0), brightness=s, contrast=s, saturation=s)

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        z = self.projector(self.backbone(two_views(images, aug, self.view)))
        z1, z2 = (gather_with_grad(t) for t in z.chunk(2))  # the global batch when training on N processes
        loss = nt_xent(z1, z2, self.params.temperature)
        return StepOutput(loss)


@hookimpl
def pretextflow_pretext_tasks():
    return [SimCLR]
