"""The checks of a backbone: :func:`check_backbone`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import Backbone, BackboneParams, BackboneSpec
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.testing.common_checks import _registered_check, _same, _through_checkpoint
from pretextflow.testing.fixtures import _digits_for, _resolve_name, _run_pipeline, _tiny_batch, _with_plugin
from pretextflow.testing.guard import HostTensorGuard, _check_placement, _devices
from pretextflow.testing.harness import _run, _seeded, _where
from pretextflow.testing.results import CheckResult, _Fail, _Skip

BACKBONE_CHECKS = ("registered", "build", "forward", "gradients", "determinism", "state_dict", "device", "pipeline")


class _BackboneChecks:
    """The checks of one backbone with one set of ``kwargs``; each public method is one check."""

    def __init__(
        self,
        spec: BackboneSpec,
        full_name: str,
        registry: Registry,
        kwargs: dict,
        *,
        image_size: int,
        in_chans: Sequence[int],
        batch_size: int,
        seed: int,
        devices: Sequence[str] | None,
    ) -> None:
        self.spec, self.full_name, self.registry, self.kw = spec, full_name, registry, kwargs
        self.image_size, self.chans, self.batch_size = image_size, list(in_chans), batch_size
        self.seed, self.devices = seed, devices

    def _make(self, c: int, s: int) -> Backbone:
        spec, image_size = self.spec, self.image_size
        params = BackboneParams(in_chans=c, image_size=image_size, small_image_stem=True, kwargs=self.kw)
        with _seeded(s):
            built = spec.build(self.full_name, params)
        if not (isinstance(built, tuple) and len(built) == 2):
            raise _Fail(f"build() must return (nn.Module, num_features), got {type(built).__name__}")
        net, nf = built
        if not isinstance(net, nn.Module):
            raise _Fail(f"build() returned {type(net).__name__} where an nn.Module belongs")
        if isinstance(nf, bool) or not isinstance(nf, (int, np.integer)) or nf <= 0:
            raise _Fail(f"build() must return a positive int num_features, got {nf!r}")
        return Backbone(
            net, int(nf), [0.3] * c, [0.35] * c, image_size=image_size, provides_tokens=spec.provides_tokens
        )

    def _images(self, c: int) -> torch.Tensor:
        return _tiny_batch(self.batch_size, self.image_size, c).float() / 255.0

    def _safe_make(self, c: int, s: int) -> Backbone:
        try:
            return self._make(c, s)
        except Exception:
            raise _Skip("the backbone could not be built; see the build check") from None

    def build(self) -> str:
        chans = self.chans
        built = [self._make(c, self.seed) for c in chans]
        n = sum(p.numel() for p in built[-1].parameters())
        return (
            f"{self.full_name} builds for in_chans={', '.join(map(str, chans))} at {self.image_size}px: {n:,} "
            f"parameters, {built[-1].num_features} features"
        )

    def forward(self) -> str:
        batch_size, image_size = self.batch_size, self.image_size
        for c in self.chans:
            bb = self._safe_make(c, self.seed)
            for mode in ("train", "eval"):
                getattr(bb, mode)()
                out = bb(self._images(c))
                want = (batch_size, bb.num_features)
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise _Fail(
                        f"forward on ({batch_size}, {c}, {image_size}, {image_size}) must return "
                        f"(N, num_features) = {want}, got {got}"
                    )
                if not out.is_floating_point() or not torch.isfinite(out).all():
                    raise _Fail(f"features must be finite floats ({mode} mode)")
            self._check_token_api(bb, c)
        return f"(N, C, H, W) floats in [0, 1] -> ({batch_size}, {bb.num_features}), finite, train and eval"

    def _check_token_api(self, bb: Backbone, c: int) -> None:
        """The token interface (``pretextflow_token_api``) that token-based pretext tasks use."""
        batch_size, api = self.batch_size, bb.token_api
        if self.spec.provides_tokens and api is None:
            raise _Fail("the spec says provides_tokens but the network has no pretextflow_token_api")
        if api is not None:
            tokens = api.embed(bb.normalize(self._images(c)))
            if tuple(tokens.shape) != (batch_size, api.num_patches, api.dim):
                raise _Fail(f"token_api.embed must return (N, num_patches, dim), got {tuple(tokens.shape)}")
            enc = api.encode(tokens[:, : max(1, api.num_patches // 4)])
            if enc.dim() != 3 or enc.shape[0] != batch_size or enc.shape[2] != api.dim:
                raise _Fail(f"token_api.encode must return (N, prefix + L', dim), got {tuple(enc.shape)}")

    def gradients(self) -> str:
        c, seed = self.chans[0], self.seed
        bb = self._safe_make(c, seed)
        bb.train()
        out = bb(self._images(c))
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
        (out * weights).sum().backward()
        trainable = [(n, p) for n, p in bb.named_parameters() if p.requires_grad]
        none = [n for n, p in trainable if p.grad is None]
        bad = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not trainable:
            raise _Fail("the backbone has no trainable parameters")
        if bad:
            raise _Fail(f"non-finite gradients in {bad[:5]}")
        if none:
            raise _Fail(
                f"{len(none)} trainable tensor(s) get no gradient from the features: {none[:5]} "
                f"(unused parameters, or a .detach() in forward)"
            )
        return f"all {len(trainable)} trainable tensors get a finite gradient"

    def determinism(self) -> str:
        c, seed = self.chans[0], self.seed
        a, b = self._safe_make(c, seed), self._safe_make(c, seed)
        sa, sb = a.state_dict(), b.state_dict()
        diff = [k for k in sa if k not in sb or not _same(sa[k], sb[k])]
        if diff:
            raise _Fail(
                f"the same seed initialised different weights: {diff[:5]}. Initialise from torch's (seeded) global RNG"
            )
        a.eval(), b.eval()
        x = self._images(c)
        if not _same(a(x), b(x)):
            raise _Fail("the same weights and input gave different features")
        return "same seed -> identical weights and features"

    def state_dict(self) -> str:
        c, seed = self.chans[0], self.seed
        a = self._safe_make(c, seed)
        a.train()
        opt = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad], lr=1e-2)
        a(self._images(c)).pow(2).mean().backward()
        opt.step()
        loaded = _through_checkpoint(a, None)
        b = self._safe_make(c, seed + 1)
        b.load_state_dict(loaded, strict=True)
        a.eval(), b.eval()
        x = self._images(c)
        if not _same(a(x), b(x)):
            raise _Fail(
                "a fresh backbone loaded with the state dict computes other features: keep all state in "
                "parameters and registered buffers"
            )
        return f"{len(loaded)} tensors through the safetensors checkpoint; same features after loading"

    def device(self) -> str:
        done, c = [], self.chans[0]
        for dev in _devices(self.devices):
            bb = self._safe_make(c, self.seed).to(dev)
            _check_placement(bb, dev)
            x = self._images(c).to(dev)
            if dev.type == "cpu":
                with HostTensorGuard() as guard:
                    bb(x).sum().backward()
                if guard.problems:
                    raise _Fail(f"would fail on a GPU: {guard.problems[0]}. Create tensors with device=x.device")
            else:
                out = bb(x)
                out.sum().backward()
                if out.device.type != dev.type:
                    raise _Fail(f"on {dev} the features are on {out.device}")
            done.append(str(dev))
        return "forward + backward on " + ", ".join(done)

    def pipeline(self) -> str:
        c, image_size = self.chans[0], self.image_size
        try:
            return _run_pipeline(
                self.registry,
                _digits_for(image_size, c),
                "kit-digits",
                "sklearn-digits",
                "rotation",
                {},
                self.full_name,
                self.kw,
            )
        except _Fail:
            raise
        except Exception as exc:
            raise _Fail(
                f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0]}{_where(exc)} "
                f"(rotation on {image_size}px digits)"
            ) from None


def _resolve_backbone(backbone: str | BackboneSpec, registry: Registry) -> tuple[BackboneSpec, str]:
    """The spec to check, and the model name to build it with (a namespace's model, e.g. ``timm/resnet18``)."""
    if isinstance(backbone, str):
        spec, full_name = _resolve_name(registry, "backbone", backbone), backbone
    else:
        spec, full_name = backbone, getattr(backbone, "name", "")
    if not isinstance(spec, BackboneSpec):
        raise PluginError(f"{backbone!r} is not a BackboneSpec")
    if full_name.endswith("/*"):
        raise PluginError(
            f"{spec.name!r} is a namespace: check one of its models by name, e.g. {spec.name[:-1] + 'resnet18'!r}"
        )
    return spec, full_name


def check_backbone(
    backbone: str | BackboneSpec,
    *,
    kwargs: dict | None = None,
    image_size: int = 16,
    in_chans: Sequence[int] = (1, 3),
    batch_size: int = 4,
    seed: int = 0,
    devices: Sequence[str] | None = None,
    pipeline: bool = True,
    registry: Registry | None = None,
    only: Sequence[str] | None = None,
) -> list[CheckResult]:
    """Check a backbone (a name such as ``convnet-s`` or ``timm/resnet18``, or a BackboneSpec).

    It is built for each of ``in_chans`` at ``image_size`` px with ``kwargs`` (``backbone.kwargs``
    in a config); the pipeline pretrains ``rotation`` on it over digits at ``image_size`` px."""
    base = registry or get_registry()
    spec, full_name = _resolve_backbone(backbone, base)
    c = _BackboneChecks(
        spec,
        full_name,
        _with_plugin(base, "backbone", spec),
        dict(kwargs or {}),
        image_size=image_size,
        in_chans=in_chans,
        batch_size=batch_size,
        seed=seed,
        devices=devices,
    )
    return _run(
        [
            ("registered", _registered_check(base, "backbone", spec), ()),
            ("build", c.build, ()),
            ("forward", c.forward, ("build",)),
            ("gradients", c.gradients, ("forward",)),
            ("determinism", c.determinism, ("forward",)),
            ("state_dict", c.state_dict, ("forward", "determinism")),
            ("device", c.device, ("forward",)),
            *([("pipeline", c.pipeline, ("forward",))] if pipeline else []),
        ],
        only,
    )
