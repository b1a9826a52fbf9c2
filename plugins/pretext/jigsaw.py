"""``jigsaw`` (Noroozi & Favaro 2016): cut the image into a grid of tiles, shuffle them by one of
a fixed set of permutations, and classify which permutation was applied. Predictive family.

Recipe, scaled to small images: a 3x3 grid, 100 permutations chosen greedily for maximal Hamming
distance (the paper's best trade-off is 100-1000), each tile a random sub-crop of ~75% of its cell
(the paper's 64 px tiles in 85 px cells) so edge continuity cannot solve the puzzle. One departure:
the shuffled tiles are reassembled into one image and encoded once, instead of nine tile
encodings, so any backbone (ViTs included) works at its built size; say so when you compare."""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from pretextflow.api import Augmenter, Backbone, Params, PretextTask, StepOutput, ViewSpec, hookimpl, mlp


class JigsawParams(Params):
    grid: int = Field(3, ge=2, le=4)
    num_permutations: int = Field(100, ge=2, le=1000)
    tile_fraction: float = Field(0.75, gt=0, le=1, description="tile side / cell side; the rest is jitter")
    head_hidden: int = Field(512, ge=0, le=16384)
    crop_scale_min: float = Field(0.6, gt=0, le=1)

    @model_validator(mode="after")
    def _enough_permutations(self) -> JigsawParams:
        if self.num_permutations > math.factorial(self.grid**2):
            raise ValueError(
                f"num_permutations {self.num_permutations} is more than the "
                f"{math.factorial(self.grid**2)} orders of a {self.grid}x{self.grid} grid"
            )
        return self


@lru_cache(maxsize=8)
def permutation_set(cells: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` permutations of ``cells`` items, greedily maximising the minimum Hamming distance
    (the paper's Algorithm 1). Fixed by ``seed``: part of the task's definition, not of a run."""
    rng = np.random.default_rng(seed)
    if math.factorial(cells) <= 400_000:
        pool = np.array(list(itertools.permutations(range(cells))), dtype=np.int8)
    else:
        pool = np.array([rng.permutation(cells) for _ in range(100_000)], dtype=np.int8)
    if count > len(pool):
        raise ValueError(f"only {len(pool)} permutations of {cells} tiles exist; asked for {count}")
    chosen = [int(rng.integers(len(pool)))]
    min_dist = (pool != pool[chosen[0]]).sum(1)
    for _ in range(count - 1):
        nxt = int(np.argmax(min_dist))
        chosen.append(nxt)
        min_dist = np.minimum(min_dist, (pool != pool[nxt]).sum(1))
    return pool[chosen].astype(np.int64)


def shuffle_tiles(
    x: torch.Tensor, perms: torch.Tensor, grid: int, tile_fraction: float, offsets: torch.Tensor
) -> torch.Tensor:
    """Rebuild each image from its tiles in permuted order with one ``grid_sample``.

    Output cell j shows source cell ``perms[i, j]`` (row-major), as a sub-crop of side
    ``tile_fraction`` of a cell at ``offsets[i, j]`` (fractions of the free margin, in [0, 1])."""
    n, _, h, w = x.shape
    dev = x.device
    cell_h, cell_w = h / grid, w / grid
    ys = torch.arange(h, device=dev) + 0.5
    xs = torch.arange(w, device=dev) + 0.5
    row = (ys // cell_h).clamp(max=grid - 1).long()  # output cell row of each pixel row
    col = (xs // cell_w).clamp(max=grid - 1).long()
    ty = (ys - row * cell_h) / cell_h  # position inside the output cell, [0, 1)
    tx = (xs - col * cell_w) / cell_w
    out_cell = (row[:, None] * grid + col[None, :]).view(1, h * w).expand(n, -1)  # (n, h*w)
    src = torch.gather(perms, 1, out_cell)  # source cell per output pixel
    off = torch.gather(offsets, 1, out_cell.unsqueeze(-1).expand(-1, -1, 2))  # (n, h*w, 2)
    margin = 1 - tile_fraction
    sy = (src // grid).float() * cell_h + (
        off[..., 0] * margin + ty.repeat_interleave(w)[None] * tile_fraction
    ) * cell_h
    sx = (src % grid).float() * cell_w + (off[..., 1] * margin + tx.repeat(h)[None] * tile_fraction) * cell_w
    grid_xy = torch.stack([2 * sx / w - 1, 2 * sy / h - 1], dim=-1).view(n, h, w, 2)
    return F.grid_sample(x, grid_xy.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


class Jigsaw(PretextTask):
    name = "jigsaw"
    family = "predictive"
    description = "solve a jigsaw puzzle: classify the permutation of shuffled tiles"
    Params = JigsawParams

    def __init__(self, backbone: Backbone, params: JigsawParams):
        super().__init__(backbone, params)
        f = backbone.num_features
        k = params.num_permutations
        self.head = mlp(f, params.head_hidden, k, layers=2) if params.head_hidden else torch.nn.Linear(f, k)
        self.register_buffer("permutations", torch.from_numpy(permutation_set(params.grid**2, k)))
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0), flip_p=0.5, jitter_p=0.0, grayscale_p=0.0)

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        x = aug.view(images, self.view)
        n = x.shape[0]
        cells = self.params.grid**2
        target = aug.randint(self.params.num_permutations, (n,))
        offsets = aug.rand(n, cells, 2)
        puzzle = shuffle_tiles(x, self.permutations[target], self.params.grid, self.params.tile_fraction, offsets)
        logits = self.head(self.backbone(puzzle))
        loss = F.cross_entropy(logits, target)
        return StepOutput(loss, {"acc": (logits.argmax(1) == target).float().mean().item()})


@hookimpl
def pretextflow_pretext_tasks():
    return [Jigsaw]
