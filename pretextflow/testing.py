"""The conformance kit: runs a plugin through the pretextflow contracts on tiny data.

In a plugin's own tests::

    from pretextflow.testing import assert_conforms

    def test_conforms():
        assert_conforms("my-task", kind="pretext")      # AssertionError listing every failed check

or from the command line: ``pretextflow plugins check my-task`` (one PASS/FAIL line per check).

Each ``check_*`` function returns one :class:`CheckResult` per check. A check whose prerequisite
failed is reported as skipped (``SKIP``), so a plugin that breaks one contract point fails exactly
that check. Pretext tasks are checked for:

  registered   listed by the plugin registry under its name, with its package and version
  params       ``Params`` defaults validate, an unknown key is rejected, values round-trip via JSON
  forward      a uint8 batch -> ``StepOutput`` with a finite, scalar, differentiable loss
  gradients    the loss sends finite, non-zero gradients into the backbone
  determinism  the same seed gives identical losses over two training steps
  state_dict   the state dict round-trips through the safetensors checkpoint into a fresh instance
               (identical loss afterwards) and holds the backbone's weights under ``backbone.``
  device       ``.to(device)`` moves every tensor, and forward works on each device: on the CPU a
               guard catches tensors created without ``device=`` (they would be on the wrong
               device on a GPU); on CUDA, when present, it really runs there
  pipeline     a short pretrain -> freeze -> probe through the real stages on scikit-learn's digits

Backbones: registered, build, forward (shape ``(N, num_features)``), gradients, determinism,
state_dict, device, pipeline (``rotation`` on the backbone). Dataset formats: registered, options,
read, validate, determinism (the same source gives byte-identical canonical files), pipeline.

The checks run on the CPU in seconds, restore the global RNG and determinism settings they touch,
and write only to a temporary folder and a ``memory://`` artifact store that they delete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import (
    Backbone,
    BackboneParams,
    BackboneSpec,
    DatasetArrays,
    DatasetFormat,
    PretextTask,
    StepOutput,
)
from pretextflow.core.registry.hookspecs import hookimpl
from pretextflow.core.registry.registry import KINDS, PluginInfo, Registry, build_registry, get_registry
from pretextflow.core.toolkit.augment import Augmenter
from pretextflow.core.training import checkpoint as ckpt

__all__ = [
    "CheckResult",
    "ConformanceError",
    "PRETEXT_CHECKS",
    "BACKBONE_CHECKS",
    "DATASET_CHECKS",
    "check_pretext_task",
    "check_backbone",
    "check_dataset_format",
    "check_plugin",
    "assert_conforms",
    "registry_with",
    "format_results",
    "HostTensorGuard",
]

PASS, FAIL, SKIP = "pass", "fail", "skip"
PRETEXT_CHECKS = ("registered", "params", "forward", "gradients", "determinism", "state_dict", "device", "pipeline")
BACKBONE_CHECKS = ("registered", "build", "forward", "gradients", "determinism", "state_dict", "device", "pipeline")
DATASET_CHECKS = ("registered", "options", "read", "validate", "determinism", "pipeline")

log = logging.getLogger("pretextflow.testing")
_UNKNOWN_KEY = "pretextflow_kit_unknown_key"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    @property
    def skipped(self) -> bool:
        return self.status == SKIP

    def line(self) -> str:
        return f"{self.status.upper():<4}  {self.name:<12} {self.detail}".rstrip()


class ConformanceError(AssertionError):
    """Raised by :func:`assert_conforms`; its message lists every failed check."""


class _Fail(Exception):
    """A check's verdict: the contract point is broken, with the reason and the fix."""


class _Skip(Exception):
    """A check cannot run (its input is missing); another check reports the cause."""


def format_results(results: Sequence[CheckResult]) -> str:
    lines = [r.line() for r in results]
    n = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    lines.append(f"{n[PASS]} passed, {n[FAIL]} failed, {n[SKIP]} skipped")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Running checks: isolation, prerequisites, failure messages
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Restore the process-wide state the checks (and the pipeline's training loop) change."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    np_state = np.random.get_state()
    benchmark = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            np.random.set_state(np_state)
            torch.backends.cudnn.benchmark = benchmark
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """What the training loop does on the CPU (``core.train.configure_runtime``): seeded global
    RNGs and deterministic algorithms (restored afterwards; CUDA runs without them)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback outside torch and this kit: usually the plugin's line."""
    here = os.path.abspath(__file__)
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.abspath(frame.filename)
        if path != here and not path.startswith(torch_dir):
            return f" (at {_short(path)}:{frame.lineno})"
    return ""


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def _run(
    checks: list[tuple[str, Callable[[], str | None], tuple[str, ...]]], only: Sequence[str] | None = None
) -> list[CheckResult]:
    results: dict[str, CheckResult] = {}
    for name, fn, needs in checks:
        if only is not None and name not in only:
            continue
        missing = [n for n in needs if n in results and not results[n].passed]
        if missing:
            results[name] = CheckResult(name, SKIP, f"needs {', '.join(missing)} to pass")
            continue
        try:
            with _isolated():
                detail = fn() or ""
            results[name] = CheckResult(name, PASS, detail)
        except _Skip as exc:
            results[name] = CheckResult(name, SKIP, str(exc))
        except _Fail as exc:
            results[name] = CheckResult(name, FAIL, str(exc))
        except Exception as exc:  # the plugin raised: that is this check's failure, with the plugin's line
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            results[name] = CheckResult(name, FAIL, f"raised {type(exc).__name__}: {message}{_where(exc)}")
    return list(results.values())


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.detach().cpu(), b.detach().cpu()))


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# --------------------------------------------------------------------------------------------
# The device guard: simulates a second device on a CPU-only machine
# --------------------------------------------------------------------------------------------
_FACTORIES = {
    torch.arange,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.eye,
    torch.tensor,
    torch.as_tensor,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.randperm,
    torch.linspace,
    torch.logspace,
    torch.tril_indices,
    torch.triu_indices,
    torch.from_numpy,
    torch.scalar_tensor,
    torch.empty_strided,
    torch.normal,
    torch.bernoulli,
}
# results on self's device (copy_ copies across devices, as PyTorch allows)
_FOLLOW_SELF = {
    torch.Tensor.new_zeros,
    torch.Tensor.new_ones,
    torch.Tensor.new_full,
    torch.Tensor.new_empty,
    torch.Tensor.new_tensor,
    torch.Tensor.copy_,
}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}


class HostTensorGuard(torch.overrides.TorchFunctionMode):
    """Finds the classic "works on the CPU, fails on the GPU" bug without a GPU.

    While active, a tensor made by a factory (``torch.arange``, ``zeros``, ``tensor``, ...) without a
    ``device=`` argument counts as living on the *host*; results computed only from host tensors are
    host tensors too, and ``.to(device)`` / ``.cuda()`` brings one onto the device. Every other
    tensor (the input batch, parameters, buffers) is on the device. An operation that mixes a host
    tensor with a device tensor is recorded in ``problems``: on a GPU it raises "Expected all tensors
    to be on the same device". As in PyTorch, 0-dim tensors and host index tensors are allowed."""

    def __init__(self) -> None:
        super().__init__()
        self._host: dict[int, tuple[torch.Tensor, str]] = {}  # id -> (tensor kept alive, where it was made)
        self.problems: list[str] = []

    def _site(self) -> str:
        here = os.path.abspath(__file__)
        torch_dir = os.path.dirname(torch.__file__)
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = os.path.abspath(frame.filename)
            if path != here and not path.startswith(torch_dir):
                return f"{_short(path)}:{frame.lineno}"
        return "?"

    def _origin(self, t: Any) -> str | None:
        if isinstance(t, torch.Tensor):
            entry = self._host.get(id(t))
            if entry is not None and entry[0] is t:
                return entry[1]
        return None

    def _unmark(self, out: Any) -> None:
        # on the CPU, .to(device) may return the very same tensor: from now on it counts as moved
        flat, _ = torch.utils._pytree.tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                self._host.pop(id(t), None)

    def _mark(self, out: Any, site: str) -> None:
        flat, _ = torch.utils._pytree.tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                self._host[id(t)] = (t, site)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if func in _FACTORIES:
            if kwargs.get("device") is None and all(self._origin(t) for t in tensors):
                self._mark(out, f"{getattr(func, '__name__', func)} at {self._site()}")
            return out
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.type_as) or func in _FOLLOW_SELF:
            target = None
            if func is torch.Tensor.to:
                if "device" in kwargs or any(
                    isinstance(a, (str, torch.device, int)) and not isinstance(a, bool) for a in args[1:]
                ):
                    self._unmark(out)
                    return out
                target = next((a for a in args[1:] if isinstance(a, torch.Tensor)), kwargs.get("other"))
                target = args[0] if target is None else target  # .to(dtype): stays where it was
            elif func is torch.Tensor.type_as:
                target = args[1] if len(args) > 1 else kwargs.get("other")
            elif func in _FOLLOW_SELF:
                target = args[0]
            origin = self._origin(target) if target is not None else None
            if origin:
                self._mark(out, origin)
            else:
                self._unmark(out)
            return out
        if func is torch.Tensor.cpu:
            if out is not args[0]:  # on the CPU .cpu() returns the tensor itself: nothing to tell apart
                self._mark(out, f"cpu() at {self._site()}")
            return out
        host = [(t, self._origin(t)) for t in tensors if self._origin(t)]
        big_host = [(t, o) for t, o in host if t.dim() > 0]
        big_device = [t for t in tensors if not self._origin(t) and t.dim() > 0]
        if big_host and big_device:
            if not (func in _INDEXING and args and not self._origin(args[0])):
                name = getattr(func, "__name__", str(func))
                self.problems.append(
                    f"{name} at {self._site()} mixes a tensor made by {big_host[0][1]} without "
                    f"device= with tensors on the input's device"
                )
            return out
        if big_host or (host and not [t for t in tensors if not self._origin(t)]):
            self._mark(out, (big_host or host)[0][1])
        return out


def _plain_tensor_attributes(module: nn.Module) -> list[str]:
    """Tensors kept as plain attributes: ``.to(device)`` does not move them, the state dict misses them."""
    found = []
    for prefix, m in module.named_modules():
        for key, value in vars(m).items():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                found.append(f"{prefix + '.' if prefix else ''}{key}")
    return found


def _placement_problems(module: nn.Module, device: torch.device) -> list[str]:
    def on(t: torch.Tensor) -> bool:
        return t.device.type == device.type and (device.index is None or t.device.index == device.index)

    stray = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if not on(t)]
    return stray


def _devices(devices: Sequence[str] | None) -> list[torch.device]:
    names = list(devices) if devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [torch.device(d) for d in names]


# --------------------------------------------------------------------------------------------
# Tiny data: scikit-learn's digits, resized and with as many channels as asked
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> DatasetArrays:
    from pretextflow.plugins.datasets.sklearn_digits import DigitsFormat

    return DigitsFormat().read("sklearn:digits", DigitsFormat.Options(), {})


def _resize_uint8(images: np.ndarray, size: int, chans: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    if chans != x.shape[1]:
        x = x.repeat(1, chans, 1, 1)
    return x.numpy()


def _tiny_batch(n: int, size: int, chans: int) -> torch.Tensor:
    return torch.from_numpy(_resize_uint8(_digits_arrays().train_images[:n], size, chans))


def _meta(size: int, chans: int) -> dict[str, Any]:
    return {"image_shape": [chans, size, size], "mean": [0.3] * chans, "std": [0.35] * chans}


@contextlib.contextmanager
def _kit_workspace(arrays: DatasetArrays, name: str, fmt: str) -> Iterator[tuple[Path, str]]:
    """A throw-away workspace folder with ``data/<name>`` in the canonical layout, and a
    ``memory://`` artifact store; both are deleted afterwards."""
    from pretextflow.core.data.dataset import encode_dataset

    root = Path(tempfile.mkdtemp(prefix="pretextflow-kit-"))
    store_uri = f"memory://pretextflow-kit-{uuid.uuid4().hex[:12]}"
    try:
        folder = root / "data" / name
        folder.mkdir(parents=True)
        for fname, data in encode_dataset(name, fmt, arrays).items():
            (folder / fname).write_bytes(data)
        yield root, store_uri
    finally:
        shutil.rmtree(root, ignore_errors=True)
        import fsspec

        fs = fsspec.filesystem("memory")
        path = store_uri.split("://", 1)[1]
        with contextlib.suppress(Exception):
            if fs.exists("/" + path) or fs.exists(path):
                fs.rm("/" + path, recursive=True)


def _digits_for(size: int, chans: int) -> DatasetArrays:
    d = _digits_arrays()
    return DatasetArrays(
        train_images=_resize_uint8(d.train_images, size, chans),
        train_labels=d.train_labels,
        test_images=_resize_uint8(d.test_images, size, chans),
        test_labels=d.test_labels,
        class_names=d.class_names,
        source_files=d.source_files,
    )


def _run_pipeline(
    registry: Registry,
    arrays: DatasetArrays,
    data_name: str,
    fmt: str,
    pretext: str,
    pretext_params: dict,
    backbone: str,
    backbone_kwargs: dict,
    max_train_samples: int = 512,
    batch_size: int = 64,
    probe: bool = True,
) -> str:
    """pretrain -> freeze -> probe through ``core.stages`` (the functions the Prefect flows wrap)."""
    from pretextflow.core.config import load_config
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain, run_probe
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.workspace import Workspace

    n = min(max_train_samples, len(arrays.train_images))
    batch = max(2, min(batch_size, n))
    with _kit_workspace(arrays, data_name, fmt) as (root, store_uri):
        cfg = load_config(
            raw={
                "name": "pretextflow-kit",
                "seed": 0,
                "data": {"name": data_name},
                "backbone": {"name": backbone, "kwargs": backbone_kwargs},
                "pretext": {"name": pretext, "params": pretext_params},
                "train": {
                    "epochs": 1,
                    "batch_size": batch,
                    "lr": 1e-3,
                    "warmup_epochs": 0,
                    "device": "cpu",
                    "max_train_samples": n,
                },
                "probe": {
                    "knn_k": [5],
                    "linear_weight_decays": [1e-4],
                    "linear_max_iter": 50,
                    "label_fractions": [1.0],
                    "baselines": [],
                },
                "store": {"uri": store_uri},
            }
        )
        ctx = StageContext(Workspace(root), cfg, registry, ArtifactStore(store_uri))
        pre = run_pretrain(ctx, logger=log)
        if pre["final_loss"] is None or not math.isfinite(pre["final_loss"]):
            raise _Fail(f"pretraining ended with a non-finite loss ({pre['final_loss']})")
        run_freeze(ctx, logger=log)
        size = arrays.train_images.shape[-1]
        done = f"pretrain {n // batch} steps (final loss {_fmt(pre['final_loss'])}), freeze"
        if not probe:
            return done + f" on {data_name} ({size}px); probe skipped: the data has no two labelled classes"
        metrics = run_probe(ctx, logger=log)["metrics"]
        for key in ("linear_top1", "knn_top1"):
            value = metrics.get(key)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise _Fail(f"probe: {key} is {value!r}, expected a number in [0, 1]")
        return (
            f"{done}, probe on {data_name} ({size}px): linear top-1 {metrics['linear_top1']:.3f}, "
            f"kNN top-1 {metrics['knn_top1']:.3f}"
        )


# --------------------------------------------------------------------------------------------
# Finding the plugin, and a registry that holds it
# --------------------------------------------------------------------------------------------
def registry_with(*plugins: Any, load_entry_points: bool = False) -> Registry:
    """A registry with the built-ins and ``plugins`` (PretextTask / DatasetFormat classes,
    BackboneSpec objects) registered through the real hooks, as if installed: checks a plugin
    before it is packaged. ``load_entry_points=True`` also loads installed third-party plugins."""
    tasks = [p for p in plugins if isinstance(p, type) and issubclass(p, PretextTask)]
    formats = [p for p in plugins if isinstance(p, type) and issubclass(p, DatasetFormat)]
    specs = [p for p in plugins if isinstance(p, BackboneSpec)]
    other = [p for p in plugins if not (p in tasks or p in formats or p in specs)]
    if other:
        raise TypeError(f"registry_with() takes PretextTask/DatasetFormat classes and BackboneSpecs, got {other!r}")

    class _Plugin:
        __package_name__ = "(registry_with)"
        __version__ = "0"

        @hookimpl
        def pretextflow_pretext_tasks(self):
            return tasks

        @hookimpl
        def pretextflow_backbones(self):
            return specs

        @hookimpl
        def pretextflow_dataset_formats(self):
            return formats

    return build_registry(extra_plugins=[("registry_with", _Plugin())], load_entry_points=load_entry_points)


def _skipped_note(registry: Registry, name: str) -> str:
    notes = [
        f"{s.plugin} ({s.package}): {s.reason}"
        for s in registry.skipped
        if name in s.reason or name in s.plugin or name.replace("-", "_") in s.plugin
    ]
    return (" Skipped plugins: " + "; ".join(notes)) if notes else ""


def _resolve_name(registry: Registry, kind: str, name: str) -> Any:
    try:
        if kind == "pretext":
            return registry.pretext_task(name)
        if kind == "backbone":
            return registry.backbone(name)
        return registry.dataset_format(name)
    except PluginError as exc:
        raise PluginError(
            f"{exc}{_skipped_note(registry, name)} If it is yours: declare the entry point "
            f'([project.entry-points.pretextflow] {name} = "your_package.module") and '
            f"`pip install -e .` the package."
        ) from None


def _table(registry: Registry, kind: str) -> dict:
    return registry.table(kind)


def _with_plugin(registry: Registry, kind: str, obj: Any) -> Registry:
    """``registry`` if it already holds ``obj`` under its name, else a copy where it does (so an
    unregistered plugin can still go through the other checks and the pipeline)."""
    table = _table(registry, kind)
    if table.get(obj.name) is obj:
        return registry
    new = Registry(
        pretext=dict(registry.pretext),
        backbones=dict(registry.backbones),
        formats=dict(registry.formats),
        info=list(registry.info),
        skipped=list(registry.skipped),
    )
    new_table = _table(new, kind)
    new_table.pop(obj.name, None)
    if kind == "backbone":  # first, so it wins over a namespace (``timm/*``) that would also match
        new.backbones = {obj.name: obj, **new.backbones}
    else:
        new_table[obj.name] = obj
    new.info = [
        PluginInfo(
            name=obj.name,
            kind=kind,
            family=getattr(obj, "family", None) if kind == "pretext" else None,
            package="(not installed)",
            version="0",
            plugin="pretextflow.testing",
        )
    ] + [i for i in new.info if not (i.kind == kind and i.name == obj.name)]
    return new


def _registered_check(registry: Registry, kind: str, obj: Any) -> Callable[[], str]:
    def check() -> str:
        name = obj.name
        row = next((i for i in registry.info if i.kind == kind and i.name == name), None)
        held = _table(registry, kind).get(name)
        listed = any(r["name"] == name and r["kind"] == kind for r in registry.as_rows())
        if held is obj and row is not None and listed:
            family = f", {row.family}" if row.family else ""
            return f"listed as {name!r} ({kind}{family}) from {row.package} {row.version}"
        if held is not None and row is not None:
            raise _Fail(
                f"the name {name!r} is provided by {row.package} ({row.plugin}), not by this plugin: "
                f"choose another name.{_skipped_note(registry, name)}"
            )
        raise _Fail(
            f"no installed plugin provides {kind} {name!r}: declare the entry point "
            f'([project.entry-points.pretextflow] {name} = "your_package.module"), install the package '
            f"(pip install -e .) and return it from the @hookimpl hook.{_skipped_note(registry, name)}"
        )

    return check


def _params_check(model: Any, values: dict, what: str) -> Callable[[], str]:
    def check() -> str:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise _Fail(f"{what} must be a pydantic model (subclass pretextflow.api.Params), got {model!r}")
        try:
            p = model.model_validate(values)
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise _Fail(
                f"{what}({values or ''}) does not validate ({fields}): give every field a default "
                f"(the published recipe)"
                if not values
                else f"{what} rejects {values}: {fields}"
            ) from None
        try:
            model.model_validate({**values, _UNKNOWN_KEY: 1})
        except ValidationError:
            pass
        else:
            raise _Fail(
                f"{what} accepts an unknown key ({_UNKNOWN_KEY}): a typo in a config would be silently "
                f"ignored. Subclass pretextflow.api.Params (extra='forbid')."
            )
        dumped = p.model_dump(mode="json")
        try:
            again = model.model_validate(json.loads(json.dumps(dumped)))
        except (TypeError, ValueError) as exc:
            raise _Fail(
                f"{what} does not round-trip through JSON (the manifest and stage keys record it): {exc}"
            ) from exc
        if again != p:
            raise _Fail(f"{what} does not round-trip through JSON: {dumped} reads back as {again!r}")
        return f"{len(model.model_fields)} field(s): defaults valid, unknown keys rejected, JSON round-trip"

    return check


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


def _through_checkpoint(module: nn.Module, prefix_required: str | None) -> dict[str, torch.Tensor]:
    sd = module.state_dict()
    odd = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise _Fail(f"state dict entries must be tensors (checkpoints are safetensors, nothing is pickled): {odd[:5]}")
    if prefix_required and not any(k.startswith(prefix_required) for k in sd):
        raise _Fail(
            f"the state dict holds no `{prefix_required}*` weights: keep the backbone you were given as "
            f"`self.backbone` (freeze exports exactly those weights)"
        )
    groups, _ = ckpt.decode(ckpt.encode({"model": sd}, {}))
    return groups.get("model", {})


# --------------------------------------------------------------------------------------------
# Pretext tasks
# --------------------------------------------------------------------------------------------
def _default_backbone(cls: type[PretextTask]) -> tuple[str, dict]:
    if cls.requires.tokens:
        kwargs: dict[str, Any] = {"patch_size": 4}
        if cls.requires.flexible_input:
            kwargs["dynamic_img_size"] = True
        return "timm/vit_tiny_patch16_224", kwargs
    return "convnet-s", {"width": 8, "depth": 3}


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
    reg = _with_plugin(base, "pretext", cls)
    values = dict(params or {})
    if backbone:
        bb_name, bb_kwargs = backbone, dict(backbone_kwargs or {})
    else:
        bb_name, bb_kwargs = _default_backbone(cls)
        bb_kwargs = bb_kwargs if backbone_kwargs is None else dict(backbone_kwargs)
    size = max(image_size, cls.requires.min_image_size)
    images = _tiny_batch(batch_size, size, in_chans)

    from pretextflow.core.config import load_config
    from pretextflow.core.training.model import build_backbone, build_task

    cfg = load_config(
        raw={
            "data": {"name": "kit"},
            "backbone": {"name": bb_name, "kwargs": bb_kwargs},
            "pretext": {"name": cls.name, "params": values},
        }
    )

    def build(s: int) -> tuple[PretextTask, Backbone]:
        try:
            cls.Params.model_validate(values)
        except Exception:
            raise _Skip("Params could not be built; see the params check") from None
        with _seeded(s):
            bb = build_backbone(cfg, _meta(size, in_chans), reg, seed=s)
            return build_task(cfg, bb, reg), bb

    def forward() -> str:
        t, _ = build(seed)
        t.train()
        with _seeded(seed):
            loss = _check_step_output(t(images, Augmenter(seed + 1)))
        return f"loss {_fmt(loss.item())} on a {tuple(images.shape)} uint8 batch with {bb_name}"

    def gradients() -> str:
        t, bb = build(seed)
        t.train()
        with _seeded(seed):
            t(images, Augmenter(seed + 1)).loss.backward()
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

    def determinism() -> str:
        runs = []
        for _ in range(2):
            t, _ = build(seed)
            with _seeded(seed):
                runs.append(_train_steps(t, images, seed))
        if runs[0] != runs[1]:
            raise _Fail(
                f"the same seed gave different losses: {runs[0]} vs {runs[1]}. Draw randomness from "
                f"`aug` (the seeded Augmenter: aug.rand/randn/uniform/randint/bernoulli) or torch's "
                f"seeded global RNG, never Python's `random`, the clock or an unseeded generator"
            )
        return f"two runs of 2 training steps: identical losses {[_fmt(x) for x in runs[0]]}"

    def state_dict() -> str:
        a, _ = build(seed)
        with _seeded(seed):
            _train_steps(a, images, seed)
        loaded = _through_checkpoint(a, "backbone.")
        b, _ = build(seed + 1)
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

    def device() -> str:
        done = []
        for dev in _devices(devices):
            t, _ = build(seed)
            t.to(dev)
            plain = _plain_tensor_attributes(t)
            if plain:
                raise _Fail(
                    f"tensor attribute(s) {plain[:5]} are neither parameters nor buffers: .to(device) "
                    f"leaves them behind. Use self.register_buffer(name, tensor)"
                )
            stray = _placement_problems(t, dev)
            if stray:
                raise _Fail(f"after .to({dev}) these are elsewhere: {stray[:5]}")
            x = images.to(dev)
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
            if out.loss.device.type != dev.type:
                raise _Fail(f"on {dev} the loss is on {out.loss.device}")
            done.append(str(dev) + (" (with the host-tensor guard)" if dev.type == "cpu" else ""))
        return "forward + backward on " + ", ".join(done)

    def run_pipeline() -> str:
        psize = max(pipeline_image_size, cls.requires.min_image_size)
        try:
            return _run_pipeline(
                reg, _digits_for(psize, in_chans), "kit-digits", "sklearn-digits", cls.name, values, bb_name, bb_kwargs
            )
        except _Fail:
            raise
        except Exception as exc:
            raise _Fail(
                f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                f"{_where(exc)} (training on {psize}px digits; a task that needs larger images declares "
                f"requires = Requirements(min_image_size=...))"
            ) from None

    return _run(
        [
            ("registered", _registered_check(base, "pretext", cls), ()),
            ("params", _params_check(getattr(cls, "Params", None), values, f"{cls.__name__}.Params"), ()),
            ("forward", forward, ()),
            ("gradients", gradients, ("forward",)),
            ("determinism", determinism, ("forward",)),
            ("state_dict", state_dict, ("forward", "determinism")),
            ("device", device, ("forward",)),
            *([("pipeline", run_pipeline, ("forward",))] if pipeline else []),
        ],
        only,
    )


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------
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
    if isinstance(backbone, str):
        spec, full_name = _resolve_name(base, "backbone", backbone), backbone
    else:
        spec, full_name = backbone, getattr(backbone, "name", "")
    if not isinstance(spec, BackboneSpec):
        raise PluginError(f"{backbone!r} is not a BackboneSpec")
    if full_name.endswith("/*"):
        raise PluginError(
            f"{spec.name!r} is a namespace: check one of its models by name, e.g. {spec.name[:-1] + 'resnet18'!r}"
        )
    reg = _with_plugin(base, "backbone", spec)
    kw = dict(kwargs or {})
    chans = list(in_chans)

    def make(c: int, s: int) -> Backbone:
        params = BackboneParams(in_chans=c, image_size=image_size, small_image_stem=True, kwargs=kw)
        with _seeded(s):
            built = spec.build(full_name, params)
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

    def images(c: int) -> torch.Tensor:
        return _tiny_batch(batch_size, image_size, c).float() / 255.0

    def safe_make(c: int, s: int) -> Backbone:
        try:
            return make(c, s)
        except Exception:
            raise _Skip("the backbone could not be built; see the build check") from None

    def build() -> str:
        built = [make(c, seed) for c in chans]
        n = sum(p.numel() for p in built[-1].parameters())
        return (
            f"{full_name} builds for in_chans={', '.join(map(str, chans))} at {image_size}px: {n:,} "
            f"parameters, {built[-1].num_features} features"
        )

    def forward() -> str:
        for c in chans:
            bb = safe_make(c, seed)
            for mode in ("train", "eval"):
                getattr(bb, mode)()
                out = bb(images(c))
                want = (batch_size, bb.num_features)
                if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise _Fail(
                        f"forward on ({batch_size}, {c}, {image_size}, {image_size}) must return "
                        f"(N, num_features) = {want}, got {got}"
                    )
                if not out.is_floating_point() or not torch.isfinite(out).all():
                    raise _Fail(f"features must be finite floats ({mode} mode)")
            api = bb.token_api
            if spec.provides_tokens and api is None:
                raise _Fail("the spec says provides_tokens but the network has no pretextflow_token_api")
            if api is not None:
                tokens = api.embed(bb.normalize(images(c)))
                if tuple(tokens.shape) != (batch_size, api.num_patches, api.dim):
                    raise _Fail(f"token_api.embed must return (N, num_patches, dim), got {tuple(tokens.shape)}")
                enc = api.encode(tokens[:, : max(1, api.num_patches // 4)])
                if enc.dim() != 3 or enc.shape[0] != batch_size or enc.shape[2] != api.dim:
                    raise _Fail(f"token_api.encode must return (N, prefix + L', dim), got {tuple(enc.shape)}")
        return f"(N, C, H, W) floats in [0, 1] -> ({batch_size}, {bb.num_features}), finite, train and eval"

    def gradients() -> str:
        c = chans[0]
        bb = safe_make(c, seed)
        bb.train()
        out = bb(images(c))
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

    def determinism() -> str:
        c = chans[0]
        a, b = safe_make(c, seed), safe_make(c, seed)
        sa, sb = a.state_dict(), b.state_dict()
        diff = [k for k in sa if k not in sb or not _same(sa[k], sb[k])]
        if diff:
            raise _Fail(
                f"the same seed initialised different weights: {diff[:5]}. Initialise from torch's (seeded) global RNG"
            )
        a.eval(), b.eval()
        x = images(c)
        if not _same(a(x), b(x)):
            raise _Fail("the same weights and input gave different features")
        return "same seed -> identical weights and features"

    def state_dict() -> str:
        c = chans[0]
        a = safe_make(c, seed)
        a.train()
        opt = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad], lr=1e-2)
        a(images(c)).pow(2).mean().backward()
        opt.step()
        loaded = _through_checkpoint(a, None)
        b = safe_make(c, seed + 1)
        b.load_state_dict(loaded, strict=True)
        a.eval(), b.eval()
        x = images(c)
        if not _same(a(x), b(x)):
            raise _Fail(
                "a fresh backbone loaded with the state dict computes other features: keep all state in "
                "parameters and registered buffers"
            )
        return f"{len(loaded)} tensors through the safetensors checkpoint; same features after loading"

    def device() -> str:
        done, c = [], chans[0]
        for dev in _devices(devices):
            bb = safe_make(c, seed).to(dev)
            plain = _plain_tensor_attributes(bb)
            if plain:
                raise _Fail(
                    f"tensor attribute(s) {plain[:5]} are neither parameters nor buffers: .to(device) "
                    f"leaves them behind. Use self.register_buffer(name, tensor)"
                )
            stray = _placement_problems(bb, dev)
            if stray:
                raise _Fail(f"after .to({dev}) these are elsewhere: {stray[:5]}")
            x = images(c).to(dev)
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

    def run_pipeline() -> str:
        c = chans[0]
        try:
            return _run_pipeline(
                reg, _digits_for(image_size, c), "kit-digits", "sklearn-digits", "rotation", {}, full_name, kw
            )
        except _Fail:
            raise
        except Exception as exc:
            raise _Fail(
                f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0]}{_where(exc)} "
                f"(rotation on {image_size}px digits)"
            ) from None

    return _run(
        [
            ("registered", _registered_check(base, "backbone", spec), ()),
            ("build", build, ()),
            ("forward", forward, ("build",)),
            ("gradients", gradients, ("forward",)),
            ("determinism", determinism, ("forward",)),
            ("state_dict", state_dict, ("forward", "determinism")),
            ("device", device, ("forward",)),
            *([("pipeline", run_pipeline, ("forward",))] if pipeline else []),
        ],
        only,
    )


# --------------------------------------------------------------------------------------------
# Dataset formats
# --------------------------------------------------------------------------------------------
def check_dataset_format(
    fmt: str | type[DatasetFormat],
    *,
    source: str | None = None,
    options: dict | None = None,
    storage_options: dict | None = None,
    pipeline: bool = True,
    max_train_samples: int = 256,
    registry: Registry | None = None,
    only: Sequence[str] | None = None,
) -> list[CheckResult]:
    """Check a dataset format (its name, or the class) by reading ``source`` with ``options``."""
    base = registry or get_registry()
    cls = _resolve_name(base, "dataset", fmt) if isinstance(fmt, str) else fmt
    if not (isinstance(cls, type) and issubclass(cls, DatasetFormat)):
        raise PluginError(f"{fmt!r} is not a DatasetFormat subclass")
    if not source:
        raise PluginError(f"checking dataset format {cls.name!r} needs a source to read (--source PATH_OR_URI)")
    reg = _with_plugin(base, "dataset", cls)
    values = dict(options or {})
    so = dict(storage_options or {})
    state: dict[str, Any] = {}

    def read_once() -> DatasetArrays:
        try:
            opts = cls.Options.model_validate(values)
        except Exception:
            raise _Skip("Options could not be built; see the options check") from None
        return cls().read(source, opts, so)

    def read() -> str:
        arrays = read_once()
        if not isinstance(arrays, DatasetArrays):
            raise _Fail(f"read() must return DatasetArrays, got {type(arrays).__name__}")
        for key in ("train_images", "train_labels", "test_images", "test_labels"):
            if not isinstance(getattr(arrays, key), np.ndarray):
                raise _Fail(f"DatasetArrays.{key} must be a numpy array, got {type(getattr(arrays, key)).__name__}")
        state["arrays"] = arrays
        return (
            f"train {arrays.train_images.shape} {arrays.train_images.dtype}, test {arrays.test_images.shape}, "
            f"{len(arrays.class_names)} classes"
        )

    def validate() -> str:
        from pretextflow.core.data.dataset import validate_arrays

        arrays = state["arrays"]
        try:
            validate_arrays(arrays, source)
        except Exception as exc:
            raise _Fail(str(exc)) from None
        if arrays.train_labels.dtype != np.int64 or arrays.test_labels.dtype != np.int64:
            raise _Fail(f"labels must be int64, got {arrays.train_labels.dtype} / {arrays.test_labels.dtype}")
        labelled = int((arrays.train_labels >= 0).sum())
        return f"uint8 (N, C, H, W), int64 labels (-1 = none): {labelled}/{len(arrays.train_labels)} train labelled"

    def determinism() -> str:
        from pretextflow.core.data.dataset import encode_dataset

        first = encode_dataset("kit", cls.name, state["arrays"])
        second = encode_dataset("kit", cls.name, read_once())
        diff = sorted(k for k in first if first[k] != second.get(k))
        if diff:
            raise _Fail(
                f"reading the same source twice gave different bytes in {diff}: the DVC version of the "
                f"same data would change (sort file listings; no timestamps or random order)"
            )
        return "the same source gives byte-identical canonical files"

    def run_pipeline() -> str:
        arrays = state["arrays"]
        train_classes = np.unique(arrays.train_labels[arrays.train_labels >= 0])
        test_labelled = int((arrays.test_labels >= 0).sum())
        probe = len(train_classes) >= 2 and test_labelled > 0
        try:
            return _run_pipeline(
                reg,
                arrays,
                "kit-data",
                cls.name,
                "rotation",
                {},
                "convnet-s",
                {"width": 8, "depth": 3},
                max_train_samples=max_train_samples,
                probe=probe,
            )
        except _Fail:
            raise
        except Exception as exc:
            raise _Fail(f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0]}{_where(exc)}") from None

    return _run(
        [
            ("registered", _registered_check(base, "dataset", cls), ()),
            ("options", _params_check(getattr(cls, "Options", None), values, f"{cls.__name__}.Options"), ()),
            ("read", read, ()),
            ("validate", validate, ("read",)),
            ("determinism", determinism, ("read",)),
            *([("pipeline", run_pipeline, ("validate",))] if pipeline else []),
        ],
        only,
    )


# --------------------------------------------------------------------------------------------
# One entry point for the CLI and for tests
# --------------------------------------------------------------------------------------------
def find_kind(name: str, registry: Registry | None = None) -> str:
    """Which kind of plugin ``name`` is: pretext, backbone or dataset (PluginError if none or several)."""
    reg = registry or get_registry()
    kinds = [
        k
        for k, found in (
            ("pretext", name in reg.pretext),
            ("backbone", any(s.matches(name) for s in reg.backbones.values())),
            ("dataset", name in reg.formats),
        )
        if found
    ]
    if len(kinds) > 1:
        raise PluginError(f"{name!r} is a {' and a '.join(kinds)} plugin: pass --kind {'|'.join(kinds)}")
    if not kinds:
        known = sorted(reg.pretext) + sorted(reg.backbones) + sorted(reg.formats)
        raise PluginError(
            f"no plugin named {name!r}. Installed: {', '.join(known)}. Run `pretextflow plugins`."
            f"{_skipped_note(reg, name)}"
        )
    return kinds[0]


def check_plugin(plugin: Any, kind: str | None = None, **options: Any) -> list[CheckResult]:
    """Dispatch to :func:`check_pretext_task`, :func:`check_backbone` or :func:`check_dataset_format`."""
    if kind is None:
        if isinstance(plugin, str):
            kind = find_kind(plugin, options.get("registry"))
        elif isinstance(plugin, BackboneSpec):
            kind = "backbone"
        elif isinstance(plugin, type) and issubclass(plugin, DatasetFormat):
            kind = "dataset"
        else:
            kind = "pretext"
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}: use one of {', '.join(KINDS)}")
    fn = {"pretext": check_pretext_task, "backbone": check_backbone, "dataset": check_dataset_format}[kind]
    return fn(plugin, **options)


def assert_conforms(plugin: Any, kind: str | None = None, **options: Any) -> list[CheckResult]:
    """For pytest: run every check, raise :class:`ConformanceError` listing the failed ones."""
    results = check_plugin(plugin, kind, **options)
    failed = [r for r in results if r.failed]
    if failed:
        name = plugin if isinstance(plugin, str) else getattr(plugin, "name", repr(plugin))
        raise ConformanceError(f"{name!r} fails {len(failed)} check(s):\n" + format_results(results))
    return results
