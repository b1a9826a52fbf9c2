"""The checks of a pretext task: :func:`check_pretext_task`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import Backbone, PretextTask, StepOutput
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.core.toolkit.augment import Augmenter
from pretextflow.testing.common_checks import _params_check, _registered_check, _same, _through_checkpoint
from pretextflow.testing.fixtures import _digits_for, _meta, _resolve_name, _run_pipeline, _tiny_batch, _with_plugin
from pretextflow.testing.guard import HostTensorGuard, _check_placement, _devices
from pretextflow.testing.harness import _run, _seeded, _where
from pretextflow.testing.results import CheckResult, _Fail, _fmt, _Skip

PRETEXT_CHECKS = ("registered", "params", "forward", "gradients", "determinism", "state_dict", "device", "pipeline")


def _check_step_output(out: Any) -> torch.Tensor:
    if not isinstance(out, StepOutput):
        raise _Fail(f"forward must return a StepOutput(loss, logs), got {type(out).__name__}")
    loss = out.loss
    if not isinstance(loss, torch.Tensor):
        raise _Fail(f"StepOutput.loss must be a tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise _Fail(f"the loss must be a scalar (0-dim) tensor, got shape {tuple(loss.shape)}: reduce it (.mean())")
    if not loss.is_floating_point():
        raise _Fail(f"the loss must be a floating-point tensor, got {loss.dtype}")
    if not torch.isfinite(loss.detach()):
        raise _Fail(f"the loss is not finite ({loss.item()}) on a tiny batch of digits")
    if not loss.requires_grad or loss.grad_fn is None:
        raise _Fail(
            "the loss does not require grad: it must be computed from the model's parameters "
            "(no .detach(), .item() or torch.no_grad() on the way)"
        )
    if not isinstance(out.logs, dict):
        raise _Fail(f"StepOutput.logs must be a dict of name -> number, got {type(out.logs).__name__}")
    for k, v in out.logs.items():
        if not isinstance(k, str):
            raise _Fail(f"StepOutput.logs keys must be strings, got {k!r}")
        try:
            float(v)
        except (TypeError, ValueError, RuntimeError):
            raise _Fail(f"StepOutput.logs[{k!r}] must be a number (float() of it), got {type(v).__name__}") from None
    return loss


def _train_steps(task: nn.Module, images: torch.Tensor, seed: int, steps: int = 2) -> list[float]:
    """What the training loop does, in miniature: forward, backward, AdamW step, on_step_end."""
    aug = Augmenter(seed + 1, images.device)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
    task.train()
    losses = []
    for step in range(steps):
        out = task(images, aug)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        task.on_step_end(step, steps)
        losses.append(float(out.loss.detach()))
    return losses


def _default_backbone(cls: type[PretextTask]) -> tuple[str, dict]:
    if cls.requires.tokens:
        kwargs: dict[str, Any] = {"patch_size": 4}
        if cls.requires.flexible_input:
            kwargs["dynamic_img_size"] = True
        return "timm/vit_tiny_patch16_224", kwargs
    return "convnet-s", {"width": 8, "depth": 3}


class _PretextChecks:
    """The checks of one pretext task on one set of options; each public method is one check."""

    def __init__(
        self,
        cls: type[PretextTask],
        registry: Registry,
        values: dict,
        backbone: str | None,
        backbone_kwargs: dict | None,
        *,
        image_size: int,
        in_chans: int,
        batch_size: int,
        seed: int,
        devices: Sequence[str] | None,
        pipeline_image_size: int,
    ) -> None:
        self.cls, self.registry, self.values = cls, registry, values
        if backbone:
            self.bb_name, self.bb_kwargs = backbone, dict(backbone_kwargs or {})
        else:
            self.bb_name, bb_kwargs = _default_backbone(cls)
            self.bb_kwargs = bb_kwargs if backbone_kwargs is None else dict(backbone_kwargs)
        self.size = max(image_size, cls.requires.min_image_size)
        self.in_chans, self.seed, self.devices = in_chans, seed, devices
        self.pipeline_image_size = pipeline_image_size
        self.images = _tiny_batch(batch_size, self.size, in_chans)

        from pretextflow.core.config import load_config

        self.cfg = load_config(
            raw={
                "data": {"name": "kit"},
                "backbone": {"name": self.bb_name, "kwargs": self.bb_kwargs},
                "pretext": {"name": cls.name, "params": values},
            }
        )

    def _build(self, s: int) -> tuple[PretextTask, Backbone]:
        from pretextflow.core.training.model import build_backbone, build_task

        try:
            self.cls.Params.model_validate(self.values)
        except Exception:
            raise _Skip("Params could not be built; see the params check") from None
        with _seeded(s):
            bb = build_backbone(self.cfg, _meta(self.size, self.in_chans), self.registry, seed=s)
            return build_task(self.cfg, bb, self.registry), bb

    def forward(self) -> str:
        seed, images = self.seed, self.images
        t, _ = self._build(seed)
        t.train()
        with _seeded(seed):
            loss = _check_step_output(t(images, Augmenter(seed + 1)))
        return f"loss {_fmt(loss.item())} on a {tuple(images.shape)} uint8 batch with {self.bb_name}"

    def gradients(self) -> str:
        seed = self.seed
        t, bb = self._build(seed)
        t.train()
        with _seeded(seed):
            t(self.images, Augmenter(seed + 1)).loss.backward()
        trainable = [(n, p) for n, p in bb.named_parameters() if p.requires_grad]
        reached = [n for n, p in trainable if p.grad is not None and bool(p.grad.detach().abs().sum() > 0)]
        bad = [n for n, p in t.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise _Fail(f"non-finite gradients in {bad[:5]}")
        if not reached:
            raise _Fail(
                "no gradient reaches the backbone: compute the loss from the backbone's features "
                "without .detach() or torch.no_grad() (a frozen backbone learns nothing)"
            )
        return f"{len(reached)}/{len(trainable)} backbone tensors get a non-zero gradient"

    def determinism(self) -> str:
        seed = self.seed
        runs = []
        for _ in range(2):
            t, _ = self._build(seed)
            with _seeded(seed):
                runs.append(_train_steps(t, self.images, seed))
        if runs[0] != runs[1]:
            raise _Fail(
                f"the same seed gave different losses: {runs[0]} vs {runs[1]}. Draw randomness from "
                f"`aug` (the seeded Augmenter: aug.rand/randn/uniform/randint/bernoulli) or torch's "
                f"seeded global RNG, never Python's `random`, the clock or an unseeded generator"
            )
        return f"two runs of 2 training steps: identical losses {[_fmt(x) for x in runs[0]]}"

    def state_dict(self) -> str:
        seed, images = self.seed, self.images
        a, _ = self._build(seed)
        with _seeded(seed):
            _train_steps(a, images, seed)
        loaded = _through_checkpoint(a, "backbone.")
        b, _ = self._build(seed + 1)
        b.load_state_dict(loaded, strict=True)
        outs = []
        for m in (a, b):
            m.train()
            with _seeded(seed + 2):
                outs.append(m(images, Augmenter(seed + 3)).loss.detach())
        if not _same(*outs):
            raise _Fail(
                f"a fresh instance loaded with the state dict computes another loss ({_fmt(outs[0].item())} "
                f"vs {_fmt(outs[1].item())}): state that changes in training (counters, queues, EMA "
                f"teachers, centres) must be registered buffers or parameters, not plain attributes"
            )
        return f"{len(loaded)} tensors through the safetensors checkpoint; same loss after loading"

    def device(self) -> str:
        done = []
        for dev in _devices(self.devices):
            t, _ = self._build(self.seed)
            t.to(dev)
            _check_placement(t, dev)
            out = self._forward_backward_on(t, dev)
            if out.loss.device.type != dev.type:
                raise _Fail(f"on {dev} the loss is on {out.loss.device}")
            done.append(str(dev) + (" (with the host-tensor guard)" if dev.type == "cpu" else ""))
        return "forward + backward on " + ", ".join(done)

    def _forward_backward_on(self, t: PretextTask, dev: torch.device) -> StepOutput:
        """One step on ``dev``; on the CPU under the host-tensor guard, which stands in for a GPU."""
        seed, x = self.seed, self.images.to(dev)
        if dev.type == "cpu":
            with _seeded(seed), HostTensorGuard() as guard:
                out = t(x, Augmenter(seed + 1, dev))
                out.loss.backward()
            if guard.problems:
                raise _Fail(
                    f"would fail on a GPU: {guard.problems[0]}. Create tensors with "
                    f"device=images.device (or .to(images.device))"
                )
        else:  # as the training loop runs there: seeded, without deterministic algorithms
            torch.manual_seed(seed)
            out = t(x, Augmenter(seed + 1, dev))
            out.loss.backward()
        return out

    def pipeline(self) -> str:
        cls = self.cls
        psize = max(self.pipeline_image_size, cls.requires.min_image_size)
        try:
            return _run_pipeline(
                self.registry,
                _digits_for(psize, self.in_chans),
                "kit-digits",
                "sklearn-digits",
                cls.name,
                self.values,
                self.bb_name,
                self.bb_kwargs,
            )
        except _Fail:
            raise
        except Exception as exc:
            raise _Fail(
                f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                f"{_where(exc)} (training on {psize}px digits; a task that needs larger images declares "
                f"requires = Requirements(min_image_size=...))"
            ) from None


def check_pretext_task(
    task: str | type[PretextTask],
    *,
    params: dict | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict | None = None,
    image_size: int = 16,
    in_chans: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    devices: Sequence[str] | None = None,
    pipeline: bool = True,
    pipeline_image_size: int = 8,
    registry: Registry | None = None,
    only: Sequence[str] | None = None,
) -> list[CheckResult]:
    """Check a pretext task (its registered name, or the class) against the contract.

    ``params`` are the task's hyper-parameters (default: its defaults); the backbone defaults to a
    small ``convnet-s`` (a ViT for tasks that need tokens). Unit checks use ``batch_size`` digits at
    ``image_size`` px; the pipeline trains on all digits at ``pipeline_image_size`` px (raised to
    the task's ``requires.min_image_size``). ``only`` runs a subset of :data:`PRETEXT_CHECKS`."""
    base = registry or get_registry()
    cls = _resolve_name(base, "pretext", task) if isinstance(task, str) else task
    if not (isinstance(cls, type) and issubclass(cls, PretextTask)):
        raise PluginError(f"{task!r} is not a PretextTask subclass")
    values = dict(params or {})
    c = _PretextChecks(
        cls,
        _with_plugin(base, "pretext", cls),
        values,
        backbone,
        backbone_kwargs,
        image_size=image_size,
        in_chans=in_chans,
        batch_size=batch_size,
        seed=seed,
        devices=devices,
        pipeline_image_size=pipeline_image_size,
    )
    return _run(
        [
            ("registered", _registered_check(base, "pretext", cls), ()),
            ("params", _params_check(getattr(cls, "Params", None), values, f"{cls.__name__}.Params"), ()),
            ("forward", c.forward, ()),
            ("gradients", c.gradients, ("forward",)),
            ("determinism", c.determinism, ("forward",)),
            ("state_dict", c.state_dict, ("forward", "determinism")),
            ("device", c.device, ("forward",)),
            *([("pipeline", c.pipeline, ("forward",))] if pipeline else []),
        ],
        only,
    )
