"""``simsiam`` (Chen & He 2021): two views through one network; a predictor on one side, a stop-
gradient on the other, negative cosine similarity. No negatives, no momentum encoder.
Contrastive family (joint-embedding).

Recipe, scaled to small images: a 3-layer projector with BN on its output (2048-d in the paper,
4x backbone width here) and a bottleneck predictor (a quarter of the projection width)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pretextflow.api import Augmenter, Backbone, Params, PretextTask, StepOutput, ViewSpec, hookimpl, mlp, two_views


class SimSiamParams(Params):
    proj_dim: int = Field(0, ge=0, le=16384, description="0 = 4x backbone width")
    pred_hidden: int = Field(0, ge=0, le=16384, description="0 = a quarter of proj_dim")
    crop_scale_min: float = Field(0.2, gt=0, le=1)


class SimSiam(PretextTask):
    name = "simsiam"
    family = "contrastive"
    description = "SimSiam: predictor + stop-gradient, negative cosine similarity"
    Params = SimSiamParams

    def __init__(self, backbone: Backbone, params: SimSiamParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        d = params.proj_dim or 4 * f
        self.projector = mlp(f, d, d, layers=3, bn_last=True)
        self.predictor = mlp(d, params.pred_hidden or d // 4, d, layers=2)
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0))

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        v = two_views(images, aug, self.view)
        z = self.projector(self.backbone(v))
        p = self.predictor(z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        loss = (
            -(F.cosine_similarity(p1, z2.detach(), dim=-1).mean() + F.cosine_similarity(p2, z1.detach(), dim=-1).mean())
            / 2
        )
        # the output's per-dimension std collapses to 0 when the method fails; 1/sqrt(d) is healthy
        std = F.normalize(z1.detach(), dim=1).std(dim=0).mean().item()
        return StepOutput(loss, {"z_std": std})


@hookimpl
def pretextflow_pretext_tasks():
    return [SimSiam]
