"""``convnet-s``: the default small-image backbone, sized so a Fashion-MNIST pretraining fits the
demo's CPU budget (about 4k images/s for one training view on 2 cores).

Four 3x3 conv-BN-ReLU blocks, strides 1-2-2-2, global average pooling. ``width`` scales the
channels (16, 32, 64, 128 at width 16)."""

from __future__ import annotations

from torch import nn

from pretextflow.api import BackboneParams, BackboneSpec, hookimpl


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _bounded(value, what: str, lo: int, hi: int) -> int:
    # a ValueError here becomes a PluginError naming backbone.kwargs (core.train.build_backbone)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{what} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def build_convnet(name: str, params: BackboneParams) -> tuple[nn.Module, int]:
    kwargs = dict(params.kwargs)
    width = _bounded(kwargs.pop("width", 16), "width", 1, 512)
    depth = _bounded(kwargs.pop("depth", 4), "depth", 1, 8)
    if kwargs:
        raise ValueError(f"unknown option(s) for {name}: {sorted(kwargs)} (known: width, depth)")
    if width * 2 ** (depth - 1) > 4096:  # the last block's channels: beyond this the model would not fit
        raise ValueError(f"width x 2^(depth-1) = {width * 2 ** (depth - 1)} channels in the last block; at most 4096")
    chans = [width * 2**i for i in range(depth)]
    # a small-image stem keeps full resolution in the first block; otherwise downsample at once
    strides = [1 if params.small_image_stem else 2] + [2] * (depth - 1)
    layers, cin = [], params.in_chans
    for cout, stride in zip(chans, strides, strict=False):
        layers.append(_block(cin, cout, stride))
        cin = cout
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net, chans[-1]


@hookimpl
def pretextflow_backbones():
    return [
        BackboneSpec(
            name="convnet-s", build=build_convnet, description="4-block small-image CNN (kwargs: width=16, depth=4)"
        )
    ]
