"""``vicreg`` (Bardes et al. 2022): Variance-Invariance-Covariance regularisation. The two views'
embeddings are pulled together (invariance), each dimension keeps a standard deviation of at
least 1 over the batch (variance), and dimensions are decorrelated (covariance). Contrastive
family (joint-embedding).

Recipe, scaled to small images: a 3-layer projector (8192-d in the paper, 4x backbone width here),
coefficients 25 / 25 / 1 as published."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

from .barlow_twins import off_diagonal


class VICRegParams(Params):
    proj_dim: int = Field(0, ge=0, le=16384, description="0 = 4x backbone width")
    sim_coeff: float = Field(25.0, ge=0)
    std_coeff: float = Field(25.0, ge=0)
    cov_coeff: float = Field(1.0, ge=0)
    crop_scale_min: float = Field(0.2, gt=0, le=1)


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d = z1.shape
    inv = F.mse_loss(z1, z2)
    z1, z2 = z1 - z1.mean(0), z2 - z2.mean(0)
    std1, std2 = torch.sqrt(z1.var(0) + 1e-4), torch.sqrt(z2.var(0) + 1e-4)
    var = (F.relu(1 - std1).mean() + F.relu(1 - std2).mean()) / 2
    cov1, cov2 = z1.t() @ z1 / (n - 1), z2.t() @ z2 / (n - 1)
    cov = off_diagonal(cov1).pow(2).sum() / d + off_diagonal(cov2).pow(2).sum() / d
    return inv, var, cov


class VICReg(PretextTask):
    name = "vicreg"
    family = "contrastive"
    description = "VICReg: invariance + variance + covariance regularisation"
    Params = VICRegParams

    def __init__(self, backbone: Backbone, params: VICRegParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        d = params.proj_dim or 4 * f
        self.projector = mlp(f, d, d, layers=3)
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0))

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        v = two_views(images, aug, self.view)
        z1, z2 = (gather_with_grad(t) for t in self.projector(self.backbone(v)).chunk(2))  # global batch
        inv, var, cov = vicreg_terms(z1, z2)
        p = self.params
        loss = p.sim_coeff * inv + p.std_coeff * var + p.cov_coeff * cov
        return StepOutput(loss, {"invariance": inv.item(), "variance": var.item(), "covariance": cov.item()})


@hookimpl
def pretextflow_pretext_tasks():
    return [VICReg]
