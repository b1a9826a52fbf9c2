"""``relative-location`` (Doersch et al. 2015): take the centre patch of a 3x3 grid and one of its
eight neighbours, encode both with the same backbone, and classify where the neighbour lies.
Predictive family.

Recipe, scaled to small images: patches of ~75% of a cell with random jitter (the paper's gaps
and jitter, against trivial edge matching); both patches are resampled to the backbone's input
size, so any backbone (ViTs included) works; a 2-layer head on the two concatenated features."""

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
    crop_boxes,
    hookimpl,
    mlp,
)

# the eight neighbours of the centre cell (row, col offsets), in the paper's order
NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


class RelativeLocationParams(Params):
    patch_fraction: float = Field(0.75, gt=0, le=1, description="patch side / cell side; the rest is jitter")
    head_hidden: int = Field(512, gt=0, le=16384)
    crop_scale_min: float = Field(0.7, gt=0, le=1)


class RelativeLocation(PretextTask):
    name = "relative-location"
    family = "predictive"
    description = "predict where a patch lies relative to the centre patch (8 positions)"
    Params = RelativeLocationParams

    def __init__(self, backbone: Backbone, params: RelativeLocationParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        self.head = mlp(2 * f, params.head_hidden, len(NEIGHBOURS), layers=2)
        self.register_buffer("offsets", torch.tensor(NEIGHBOURS, dtype=torch.float32))
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)

    def patch(self, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, aug: Augmenter) -> torch.Tensor:
        """The jittered patch of cell (rows, cols) in a 3x3 grid, resampled to the image size."""
        n, frac = x.shape[0], self.params.patch_fraction
        cell = 2.0 / 3  # a cell's side in normalised [-1, 1] coordinates
        jitter = (aug.rand(n, 2) - 0.5) * (1 - frac) * cell
        cx = -1 + cell * (cols + 0.5) + jitter[:, 0]
        cy = -1 + cell * (rows + 0.5) + jitter[:, 1]
        half = torch.full((n,), frac / 3, device=x.device)  # box width as a fraction of the image side
        return crop_boxes(x, cx, cy, half, half, x.shape[-1])

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        x = aug.view(images, self.view)  # the batch itself: its views crop from the stored images
        n = x.shape[0]
        target = aug.randint(len(NEIGHBOURS), (n,))
        d = self.offsets[target]
        centre = self.patch(x, torch.ones(n, device=x.device), torch.ones(n, device=x.device), aug)
        other = self.patch(x, 1 + d[:, 0], 1 + d[:, 1], aug)
        fc, fo = self.backbone(torch.cat([centre, other])).chunk(2)
        logits = self.head(torch.cat([fc, fo], dim=1))
        loss = F.cross_entropy(logits, target)
        return StepOutput(loss, {"acc": (logits.argmax(1) == target).float().mean().item()})


@hookimpl
def pretextflow_pretext_tasks():
    return [RelativeLocation]
