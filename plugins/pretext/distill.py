"""``distill``: the student (the backbone being trained, with a projection MLP) regresses the embedding
that a frozen teacher gives the same augmented view, on unlabeled images: self-supervised knowledge
distillation of a bigger backbone (a past run here, or an export of one) into a small one. Contrastive
family (joint-embedding: the target is an embedding of a view, as in BYOL, but of a fixed network).

The teacher (``pretextflow.api.teachers.load_teacher``) is frozen: eval mode, no gradient, outside the module
tree, so it is neither trained nor written into the task's checkpoints; it is loaded again from its URI
when a run resumes. Its content digest is filled into the params when they are validated
(``teacher_sha256``), so the pretrain stage key changes when the teacher's files do, not only its URI.

Recipe: SimCLR-style views (crops of 20-100% of the image, flips, colour jitter), a 2-layer MLP with BN
(hidden 2x the student's width) to the teacher's dimension, and the cosine regression loss
2 - 2cos(student projection, teacher embedding)."""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from pretextflow.api import (
    Augmenter,
    Backbone,
    Params,
    PluginError,
    PretextTask,
    StepOutput,
    ViewSpec,
    hookimpl,
    mlp,
)
from pretextflow.api.teachers import load_teacher
from pretextflow.api.teachers import teacher_sha256 as content_sha256

SHA256 = r"^[0-9a-f]{64}$"


class DistillParams(Params):
    teacher: str = Field(
        min_length=1,
        max_length=4096,
        description="the frozen teacher: a run folder (artifacts/runs/<run id>), its manifest.json or a "
        "`pretextflow export` folder; any fsspec URI",
    )
    teacher_sha256: str | None = Field(
        None,
        pattern=SHA256,
        description="the sha256 of the teacher's files: filled in when the params are validated (the stage "
        "key and the manifest record it); pin it to refuse any other teacher at that URI",
    )
    proj_hidden: int = Field(0, ge=0, le=16384, description="0 = 2x backbone width")
    loss: Literal["cosine", "mse"] = Field(
        "cosine",
        description="cosine: 2 - 2cos(projection, teacher embedding); mse: the mean squared error of the "
        "two L2-normalised vectors (the cosine loss divided by the teacher's dimension)",
    )
    crop_scale_min: float = Field(0.2, gt=0, le=1)
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _teacher_digest(cls, data: Any) -> Any:
        """Record the teacher's content digest (refusing another teacher than a pinned digest names)."""
        if not isinstance(data, dict) or not isinstance(data.get("teacher"), str) or not data["teacher"]:
            return data  # the field checks say what is wrong
        pinned = data.get("teacher_sha256")
        if pinned is not None and not (isinstance(pinned, str) and re.fullmatch(SHA256, pinned)):
            return data
        try:
            digest = content_sha256(data["teacher"])
        except PluginError as exc:  # "teacher URI does not exist. Pass ...": named as the config names it
            raise PluginError(f"pretext.params.{exc}") from None
        if pinned is not None and pinned != digest:
            raise PluginError(
                f"pretext.params.teacher {data['teacher']} has changed: its files' sha256 is {digest}, "
                f"pretext.params.teacher_sha256 pins {pinned}. Point the teacher at the run or export "
                f"this config was made for, or drop teacher_sha256 to distil from this one (a new stage key)."
            )
        return {**data, "teacher_sha256": digest}


def distill_loss(projection: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """The regression loss of the student's projection onto the (detached) teacher embedding, float32."""
    p, t = projection.float(), target.detach().float()
    if kind == "mse":
        return F.mse_loss(F.normalize(p, dim=-1), F.normalize(t, dim=-1))
    return (2 - 2 * F.cosine_similarity(p, t, dim=-1)).mean()


class Distill(PretextTask):
    name = "distill"
    family = "contrastive"
    description = "distillation: the student regresses a frozen teacher's embedding of the same view"
    Params = DistillParams

    def __init__(self, backbone: Backbone, params: DistillParams):
        super().__init__(backbone, params)
        teacher = load_teacher(params.teacher, sha256=params.teacher_sha256)
        teacher.check_channels(backbone.in_chans)
        f = backbone.num_features
        self.projector = mlp(f, params.proj_hidden or 2 * f, teacher.num_features, layers=2)
        # a plain list, not a submodule: outside state_dict(), parameters() and train()
        self._teacher = [teacher]
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0), flip_p=params.flip_p, jitter_p=params.jitter_p)

    @property
    def teacher(self) -> torch.nn.Module:
        return self._teacher[0]

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        v = aug.view(images, self.view)
        projection = self.projector(self.backbone(v))
        target = self.teacher(v)  # no gradient: computed under torch.no_grad
        return StepOutput(distill_loss(projection, target, self.params.loss))


@hookimpl
def pretextflow_pretext_tasks():
    return [Distill]
