"""``moco`` (MoCo v2, Chen et al. 2020): a query encoder is trained to pick its key, encoded by a
slowly moving momentum copy, out of a queue of keys from earlier batches. Contrastive family.

Recipe, scaled to small images: the SimCLR augmentations, an MLP projection head (no BN, as v2)
to 128 dimensions, temperature 0.2, momentum 0.99 (0.999 in the paper, whose runs are 100x
longer), a queue of 4,096 keys (65,536 for ImageNet)."""

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
    ema_update,
    frozen_copy,
    gather,
    hookimpl,
    mlp,
)


class MoCoParams(Params):
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(4096, gt=0, le=2**20)
    momentum: float = Field(0.99, ge=0, le=1)
    proj_hidden: int = Field(0, ge=0, le=16384, description="0 = backbone width")
    proj_dim: int = Field(128, gt=0, le=16384)
    crop_scale_min: float = Field(0.2, gt=0, le=1)


class MoCo(PretextTask):
    name = "moco"
    family = "contrastive"
    description = "MoCo v2: momentum key encoder and a queue of negatives"
    Params = MoCoParams

    def __init__(self, backbone: Backbone, params: MoCoParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        self.projector = mlp(f, params.proj_hidden or f, params.proj_dim, layers=2, bn_hidden=False)
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(params.proj_dim, params.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        k = self.params.queue_size
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % k
        self.queue[:, idx] = keys.t()
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % k)

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        v_q, v_k = aug.view(images, self.view), aug.view(images, self.view)
        q = F.normalize(self.projector(self.backbone(v_q)), dim=1)
        with torch.no_grad():
            k = F.normalize(self.momentum_projector(self.momentum_backbone(v_k)), dim=1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.params.temperature
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        self.enqueue(gather(k))  # every rank's keys, in rank order: the queue stays identical across ranks
        return StepOutput(loss)

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.momentum_backbone, self.backbone, self.params.momentum)
        ema_update(self.momentum_projector, self.projector, self.params.momentum)


@hookimpl
def pretextflow_pretext_tasks():
    return [MoCo]
