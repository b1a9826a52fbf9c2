"""``barlow-twins`` (Zbontar et al. 2021): the cross-correlation matrix between the two views'
batch-standardised embeddings is pushed towards the identity: invariance on the diagonal,
redundancy reduction off it. Contrastive family (joint-embedding).

Recipe, scaled to small images: a 3-layer projector (8192-d in the paper, 4x backbone width
here), lambda = 0.0051 as published."""

from __future__ import annotations

import torch
from pydantic import Field

from pretextflow.api import (
    Augmenter,
    Backbone,
    Params,
    PretextTask,
    StepOutput,
    ViewSpec,
    gather_with_grad,
    hookimpl,
    mlp,
    two_views,
)


class BarlowTwinsParams(Params):
    proj_dim: int = Field(0, ge=0, le=16384, description="0 = 4x backbone width")
    lambd: float = Field(0.0051, ge=0, description="weight of the off-diagonal (redundancy) term")
    crop_scale_min: float = Field(0.2, gt=0, le=1)


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
    z2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-5)
    c = z1.t() @ z2 / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diag + lambd * off_diagonal(c).pow(2).sum()


class BarlowTwins(PretextTask):
    name = "barlow-twins"
    family = "contrastive"
    description = "Barlow Twins: cross-correlation of two views towards the identity"
    Params = BarlowTwinsParams

    def __init__(self, backbone: Backbone, params: BarlowTwinsParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        d = params.proj_dim or 4 * f
        self.projector = mlp(f, d, d, layers=3)
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0))

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        v = two_views(images, aug, self.view)
        z1, z2 = (gather_with_grad(t) for t in self.projector(self.backbone(v)).chunk(2))  # global batch
        return StepOutput(barlow_loss(z1, z2, self.params.lambd))


@hookimpl
def pretextflow_pretext_tasks():
    return [BarlowTwins]
