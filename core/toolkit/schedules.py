"""Schedules as pure functions of the step (nothing to checkpoint): momentum, temperature, lr."""

from __future__ import annotations

import math


def cosine_increase(base: float, final: float, step: int, total: int) -> float:
    """BYOL's schedule: ``base`` at step 0 rising to ``final`` along a half cosine."""
    progress = min(1.0, step / max(1, total))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def linear_warmup(start: float, end: float, step: int, warmup_steps: int) -> float:
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero (a pure function of the step: nothing to checkpoint)."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
