"""``byol`` (Grill et al. 2020): an online network with a predictor regresses the projection of
another view made by a target network, an exponential moving average of the online one. No
negatives. Contrastive family (joint-embedding).

Recipe, scaled to small images: SimCLR augmentations, projector and predictor MLPs with BN
(hidden 4x backbone width, 128-d output; 4096/256 in the paper), the symmetric 2 - 2cos loss, and
the target momentum rising from 0.99 to 1 along a cosine (0.996 base in the paper's long runs)."""

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
    cosine_increase,
    ema_update,
    frozen_copy,
    hookimpl,
    mlp,
    two_views,
)


class BYOLParams(Params):
    proj_hidden: int = Field(0, ge=0, le=16384, description="0 = 4x backbone width")
    proj_dim: int = Field(128, gt=0, le=16384)
    base_momentum: float = Field(0.99, ge=0, le=1)
    final_momentum: float = Field(1.0, ge=0, le=1)
    crop_scale_min: float = Field(0.2, gt=0, le=1)


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


class BYOL(PretextTask):
    name = "byol"
    family = "contrastive"
    description = "BYOL: online predictor regresses an EMA target network, no negatives"
    Params = BYOLParams

    def __init__(self, backbone: Backbone, params: BYOLParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        hidden = params.proj_hidden or 4 * f
        self.projector = mlp(f, hidden, params.proj_dim, layers=2)
        self.predictor = mlp(params.proj_dim, hidden, params.proj_dim, layers=2)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.register_buffer("momentum", torch.tensor(params.base_momentum))
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0))

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        v = two_views(images, aug, self.view)
        p1, p2 = self.predictor(self.projector(self.backbone(v))).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_backbone(v)).chunk(2)
        loss = (regression_loss(p1, t2) + regression_loss(p2, t1)) / 2
        return StepOutput(loss, {"momentum": float(self.momentum)})

    def on_step_end(self, step: int, total_steps: int) -> None:
        m = cosine_increase(self.params.base_momentum, self.params.final_momentum, step + 1, total_steps)
        self.momentum.fill_(m)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)


@hookimpl
def pretextflow_pretext_tasks():
    return [BYOL]
