"""``timm/<model_name>``: any timm model, built with ``pretrained=False`` and ``num_classes=0``
(the classifier removed, so it returns pooled features).

``small_image_stem`` adapts ImageNet stems to 28-64 px inputs where the architecture allows it:
ResNets get a 3x3 stride-1 first conv and no max-pool (as in SimCLR's CIFAR recipe); ViTs get
``img_size`` set to the data's size (choose ``patch_size`` in kwargs)."""

from __future__ import annotations

from torch import nn

from pretextflow.api import BackboneParams, BackboneSpec, hookimpl

PREFIX = "timm/"
# Weights come only from pretraining: kwargs that make timm read a checkpoint file or download from a
# hub are refused (timm itself would load them with torch.load(weights_only=True), still not wanted).
WEIGHT_KWARGS = frozenset({"pretrained", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})


def build_timm(name: str, params: BackboneParams) -> tuple[nn.Module, int]:
    import timm  # imported here: keeps `pretextflow --help` fast

    model_name = name[len(PREFIX) :]
    if not timm.is_model(model_name):
        from pretextflow.api import PluginError

        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:8]
        raise PluginError(
            f"timm has no model {model_name!r} (backbone {name!r}). "
            f"Similar: {', '.join(close) or 'none'}. See timm.list_models()."
        )
    kwargs = dict(params.kwargs)
    loads = sorted(WEIGHT_KWARGS & set(kwargs))
    if loads:
        from pretextflow.api import PluginError

        raise PluginError(
            f"backbone {name!r}: backbone.kwargs {', '.join(loads)} would load weights from a file or "
            f"a hub; backbones start from random weights and learn them by pretraining. Remove them."
        )
    is_vit = "vit" in model_name or "deit" in model_name
    if is_vit:
        kwargs.setdefault("img_size", params.image_size)
    try:
        net = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=params.in_chans, **kwargs)
    except (
        TypeError,
        ValueError,
        RuntimeError,
        AssertionError,
        KeyError,
        AttributeError,
        IndexError,
        ZeroDivisionError,
    ) as exc:  # timm checks arguments with asserts and builds with them as given
        from pretextflow.api import PluginError

        raise PluginError(
            f"timm model {model_name!r} could not be built with backbone.kwargs={params.kwargs} for "
            f"{params.in_chans}-channel {params.image_size}px images ({exc.__class__.__name__}: "
            f"{exc}). Fix backbone.kwargs or choose another model."
        ) from None
    if params.small_image_stem and all(hasattr(net, a) for a in ("conv1", "bn1", "maxpool")):
        # the first BN's width is the stem's output width, whatever the stem type (plain or deep)
        out_ch = net.bn1.num_features
        net.conv1 = nn.Conv2d(params.in_chans, out_ch, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    if is_vit and all(hasattr(net, a) for a in ("patch_embed", "pos_embed", "blocks", "norm")):
        net.pretextflow_token_api = TimmViTTokens(net)
        net.pretextflow_flexible_input = bool(getattr(net, "dynamic_img_size", False))
    return net, int(net.num_features)


class TimmViTTokens:
    """Token access to a timm VisionTransformer for masked image modelling (MAE): embed patches,
    then encode any subset of them with the class token prepended."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.patch_size = int(net.patch_embed.patch_size[0])
        self.num_patches = int(net.patch_embed.num_patches)
        self.dim = int(net.embed_dim)

    def _prefix_pos(self):
        return 0 if self.net.no_embed_class else self.net.num_prefix_tokens

    def embed(self, images):
        tokens = self.net.patch_embed(images)
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        return tokens + self.net.pos_embed[:, self._prefix_pos() :]

    def encode(self, tokens):
        import torch

        net, prefix = self.net, []
        if net.cls_token is not None:
            cls = net.cls_token + (net.pos_embed[:, :1] if not net.no_embed_class else 0)
            prefix.append(cls.expand(tokens.shape[0], -1, -1))
        if getattr(net, "reg_token", None) is not None:
            prefix.append(net.reg_token.expand(tokens.shape[0], -1, -1))
        x = torch.cat(prefix + [tokens], dim=1)
        return net.norm(net.blocks(net.norm_pre(x)))


@hookimpl
def pretextflow_backbones():
    return [
        BackboneSpec(
            name="timm/*", build=build_timm, description="any timm model by name, e.g. timm/resnet18 (pretrained=False)"
        )
    ]
