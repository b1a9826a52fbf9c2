"""Building blocks shared by pretext tasks (built-in and third-party): projection MLPs, EMA
teachers, schedules. Methods differ in how they combine these, not in the pieces."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, bn_last: bool = False,
        bn_hidden: bool = True) -> nn.Sequential:
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


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that never receives gradients: the EMA teacher / momentum encoder."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, parameters and float buffers (BN statistics)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
        else:
            t.copy_(s)


def cosine_increase(base: float, final: float, step: int, total: int) -> float:
    """BYOL's schedule: ``base`` at step 0 rising to ``final`` along a half cosine."""
    progress = min(1.0, step / max(1, total))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def linear_warmup(start: float, end: float, step: int, warmup_steps: int) -> float:
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
