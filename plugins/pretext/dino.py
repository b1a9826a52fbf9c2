"""``dino`` (Caron et al. 2021): self-distillation with no labels. A student matches the output
distribution of an EMA teacher across views: the teacher sees only the global crops, the student
every crop (multi-crop). Collapse is avoided by centring and sharpening the teacher's output.
Contrastive family (joint-embedding).

Recipe, scaled to small images: 2 global crops (scale 0.4-1) and 4 local crops (scale 0.05-0.4,
half the image side; 6-10 at 96/224 px in the paper), a 3-layer head with a 128-d bottleneck and a
weight-normalised last layer of 1,024 prototypes (65,536 in the paper), BatchNorm in the head (the
reference code's ``use_bn_in_head``: without it, a small CNN's all-positive features give every
image nearly the same prototype scores and training collapses to the uniform output within a few
hundred steps, measured on digits), student temperature 0.1,
teacher temperature warmed up from 0.04 to 0.07 over the first 30% of training, centre momentum
0.9, teacher momentum rising from 0.99 to 1 along a cosine (0.996 in the paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pretextflow.api import (
    Augmenter,
    Backbone,
    Params,
    PretextTask,
    StepOutput,
    ViewSpec,
    all_reduce_mean,
    cosine_increase,
    ema_update,
    frozen_copy,
    hookimpl,
    linear_warmup,
)


class DINOParams(Params):
    out_dim: int = Field(1024, gt=0, le=65536, description="prototypes in the last layer")
    head_hidden: int = Field(512, gt=0, le=16384)
    head_bn: bool = Field(True, description="BatchNorm in the head's MLP (the reference code's use_bn_in_head)")
    bottleneck: int = Field(128, gt=0, le=16384)
    n_local: int = Field(4, ge=0, le=16)
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_size_fraction: float = Field(0.5, gt=0, le=1, description="local crop side / image side")
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_fraction: float = Field(0.3, ge=0, le=1, description="of training, to warm the teacher temperature")
    center_momentum: float = Field(0.9, ge=0, lt=1)
    base_momentum: float = Field(0.99, ge=0, le=1)
    freeze_last_layer_fraction: float = Field(
        0.01, ge=0, le=1, description="of training with the last layer frozen (1 of 100 epochs)"
    )


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, bn: bool = True):
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(hidden)) if bn else nn.Identity
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            norm(),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            norm(),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        # the paper freezes the weight norm's magnitude at 1 ("norm_last_layer")
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


class DINO(PretextTask):
    name = "dino"
    family = "contrastive"
    description = "DINO: self-distillation with an EMA teacher, multi-crop, centring"
    Params = DINOParams

    def __init__(self, backbone: Backbone, params: DINOParams):
        super().__init__(backbone, params)
        self.head = DINOHead(
            backbone.num_features, params.head_hidden, params.bottleneck, params.out_dim, params.head_bn
        )
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, params.out_dim))
        self.register_buffer("progress", torch.zeros(2, dtype=torch.long))  # (step, total): schedules resume
        # the paper freezes the prototypes for the first epoch: early updates there destabilise training
        self.head.last.parametrizations.weight.original1.register_hook(
            lambda grad: grad * 0 if self.last_layer_frozen() else grad
        )
        side = backbone.image_size
        # a backbone that only takes its built size (a plain ViT) gets full-size local crops
        local = max(4, round(side * params.local_size_fraction)) if backbone.flexible_input else side
        self.global_view = ViewSpec(crop_scale=params.global_scale)
        self.local_view = ViewSpec(size=local, crop_scale=params.local_scale)

    def last_layer_frozen(self) -> bool:
        step, total = (int(x) for x in self.progress)
        frac = self.params.freeze_last_layer_fraction
        return frac > 0 and (total == 0 or step < frac * total)  # total == 0: before the first step

    def teacher_temperature(self) -> float:
        step, total = (int(x) for x in self.progress)
        p = self.params
        return linear_warmup(p.warmup_teacher_temp, p.teacher_temp, step, int(p.warmup_fraction * total))

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        p = self.params
        crops = aug.multi_crop(images, self.global_view, self.local_view, 2, p.n_local)
        globals_ = torch.cat(crops[:2])
        student = [self.head(self.backbone(globals_))]
        if p.n_local:
            student.append(self.head(self.backbone(torch.cat(crops[2:]))))
        student_out = (torch.cat(student) / p.student_temp).chunk(2 + p.n_local)
        with torch.no_grad():
            t_out = self.teacher_head(self.teacher_backbone(globals_))
            teacher = F.softmax((t_out - self.center) / self.teacher_temperature(), dim=-1).chunk(2)
        loss, terms = 0.0, 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student_out):
                if v == iq:
                    continue  # a view does not predict itself
                loss = loss + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                terms += 1
        with torch.no_grad():
            self.center.mul_(p.center_momentum).add_(
                all_reduce_mean(t_out.mean(0, keepdim=True)), alpha=1 - p.center_momentum
            )
        return StepOutput(loss / terms, {"teacher_temp": self.teacher_temperature()})

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.progress[0], self.progress[1] = step + 1, total_steps
        m = cosine_increase(self.params.base_momentum, 1.0, step + 1, total_steps)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)


@hookimpl
def pretextflow_pretext_tasks():
    return [DINO]
