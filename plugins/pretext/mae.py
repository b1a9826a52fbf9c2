"""``mae`` (He et al. 2022): mask most patches of an image, encode only the visible ones with a
ViT, and reconstruct the pixels of the masked ones with a light decoder. Generative family
(masked image modelling). Needs a backbone that exposes patch tokens (timm ViTs do).

Recipe, scaled to small images: mask ratio 0.75, the normalised-pixel target (per-patch mean and
variance, the paper's best), loss on masked patches only, a 2-block 128-d decoder (8 x 512 in the
paper) with learned position embeddings, random resized crop (0.2-1) + flip as the only
augmentation."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from pretextflow.api import Augmenter, Backbone, Params, PretextTask, Requirements, StepOutput, ViewSpec, hookimpl


class MAEParams(Params):
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    decoder_dim: int = Field(128, gt=0, le=16384)
    decoder_depth: int = Field(2, ge=1, le=24)
    decoder_heads: int = Field(4, ge=1, le=64)
    norm_pix_loss: bool = True
    crop_scale_min: float = Field(0.2, gt=0, le=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> MAEParams:
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim {self.decoder_dim} must be divisible by decoder_heads {self.decoder_heads}")
        return self


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), patches in row-major order (as a ViT's patch embedding)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked patches only (mask: 1 = masked)."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAE(PretextTask):
    name = "mae"
    family = "generative"
    description = "masked autoencoder: reconstruct masked patches from visible ones (ViT)"
    requires = Requirements(tokens=True)
    Params = MAEParams

    def __init__(self, backbone: Backbone, params: MAEParams):
        super().__init__(backbone, params)
        from timm.models.vision_transformer import Block

        api = backbone.token_api
        self.patch_size, self.num_patches = api.patch_size, api.num_patches
        d = params.decoder_dim
        self.decoder_embed = nn.Linear(api.dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + api.num_patches, d))
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            *[Block(d, params.decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(params.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(d)
        self.decoder_pred = nn.Linear(d, api.patch_size**2 * backbone.in_chans)
        self.view = ViewSpec(crop_scale=(params.crop_scale_min, 1.0), jitter_p=0.0, grayscale_p=0.0)
        self.last_mask: torch.Tensor | None = None  # for inspection and tests

    def random_mask(self, n: int, aug: Augmenter, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of noise: (ids_keep, ids_restore, mask with 1 = masked)."""
        length = self.num_patches
        keep = int(round(length * (1 - self.params.mask_ratio)))
        noise = aug.rand(n, length)
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        mask = torch.ones(n, length, device=device)
        mask[:, :keep] = 0
        return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        t = patchify(x, self.patch_size)
        if self.params.norm_pix_loss:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return t

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:
        x = self.backbone.normalize(aug.view(images, self.view))
        api = self.backbone.token_api
        tokens = api.embed(x)
        n, length, dim = tokens.shape
        ids_keep, ids_restore, mask = self.random_mask(n, aug, x.device)
        visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        latent = self.decoder_embed(api.encode(visible))
        prefix = latent.shape[1] - ids_keep.shape[1]
        y = torch.cat([latent[:, prefix:], self.mask_token.expand(n, length - ids_keep.shape[1], -1)], dim=1)
        y = torch.gather(y, 1, ids_restore.unsqueeze(-1).expand(-1, -1, y.shape[-1]))  # back to patch order
        y = torch.cat([latent[:, :1], y], dim=1) + self.decoder_pos
        pred = self.decoder_pred(self.decoder_norm(self.decoder(y)))[:, 1:]
        self.last_mask = mask.detach()
        loss = masked_mse(pred, self.target(x), mask)
        return StepOutput(loss)


@hookimpl
def pretextflow_pretext_tasks():
    return [MAE]
