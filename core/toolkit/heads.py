"""Building blocks shared by pretext tasks (built-in and third-party): projection MLPs, EMA
teachers, schedules. Methods differ in how they combine these, not in the pieces."""

from __future__ import annotations

import torch
from torch import nn


def mlp(
    in_dim: int, hidden: int, out_dim: int, layers: int = 2, bn_last: bool = False, bn_hidden: bool = True
) -> nn.Sequential:
    """``layers`` linear layers with BN + ReLU between them (the SimCLR/BYOL/VICReg projector shape)."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden, bias=not bn_hidden)]
        if bn_hidden:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True))
        dim = hidden
    mods.append(nn.Linear(dim, out_dim, bias=not bn_last))
    if bn_last:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


def two_views(images: torch.Tensor, aug, spec) -> torch.Tensor:
    """Two augmented views of every image, concatenated ``[view1; view2]``: one backbone pass, so
    BatchNorm normalises both views with the same statistics. ``.chunk(2)`` splits the outputs."""
    return torch.cat([aug.view(images, spec), aug.view(images, spec)])
