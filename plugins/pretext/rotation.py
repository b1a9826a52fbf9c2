"""``rotation`` (RotNet, Gidaris et al. 2018): predict which of 0/90/180/270 degrees an image was
rotated by. Predictive family: the target is computed from the input alone.

Recipe, scaled to small images: each image appears in all four rotations in the same batch (the
paper's finding), light crop + flip beforehand, a classifier head on the pooled features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pretextflow.api import Augmenter, Backbone, Params, PretextTask, StepOutput, ViewSpec, hookimpl


class RotationParams(Params):
    all_rotations: bool = Field(True, description="all 4 rotations of each image per batch (RotNet) vs one random")
    head_hidden: int = Field(0, ge=0, le=16384, description="hidden width of the head; 0 = linear head")
    crop_scale_min: float = Field(0.6, gt=0, le=1)
    flip_p: float = Field(0.5, ge=0, le=1)


class Rotation(PretextTask):
    name = "rotation"
    family = "predictive"
    description = "predict the rotation (0/90/180/270 degrees) applied to an image"
    Params = RotationParams

    def __init__(self, backbone: Backbone, params: RotationParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        if params.head_hidden:
            self.head = nn.Sequential(
                nn.Linear(f, params.head_hidden),
                nn.BatchNorm1d(params.head_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(params.head_hidden, 4),
            )
        else:
            self.head = nn.Linear(f, 4)
        self.view = ViewSpec(
            crop_scale=(params.crop_scale_min, 1.0), flip_p=params.flip_p, jitter_p=0.0, grayscale_p=0.0
        )

    @staticmethod
    def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Rotate sample i by k[i] * 90 degrees: four whole-batch rot90s and a gather, no per-image loop."""
        rotated = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(4)])  # (4, N, C, H, W)
        return rotated[k, torch.arange(x.shape[0], device=x.device)]

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        x = aug.view(images, self.view)
        n = x.shape[0]
        if self.params.all_rotations:
            k = torch.arange(4, device=x.device).repeat_interleave(n)
            x = x.repeat(4, 1, 1, 1)
        else:
            k = aug.randint(4, (n,))
        x = self.rotate(x, k)
        logits = self.head(self.backbone(x))
        loss = F.cross_entropy(logits, k)
        acc = (logits.argmax(1) == k).float().mean().item()
        return StepOutput(loss, {"rot_acc": acc})


@hookimpl
def pretextflow_pretext_tasks():
    return [Rotation]
