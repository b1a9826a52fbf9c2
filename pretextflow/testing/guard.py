"""The device checks' tools: a guard that simulates a second device on a CPU-only machine, and
the placement of a module's tensors after ``.to(device)``."""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pretextflow.testing.harness import _in_kit, _short
from pretextflow.testing.results import _Fail

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
        torch_dir = os.path.dirname(torch.__file__)
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = os.path.abspath(frame.filename)
            if not _in_kit(path) and not path.startswith(torch_dir):
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


def _check_placement(module: nn.Module, device: torch.device) -> None:
    """After ``module.to(device)``: every tensor it holds is a parameter or buffer, and on ``device``."""
    plain = _plain_tensor_attributes(module)
    if plain:
        raise _Fail(
            f"tensor attribute(s) {plain[:5]} are neither parameters nor buffers: .to(device) "
            f"leaves them behind. Use self.register_buffer(name, tensor)"
        )
    stray = _placement_problems(module, device)
    if stray:
        raise _Fail(f"after .to({device}) these are elsewhere: {stray[:5]}")


def _devices(devices: Sequence[str] | None) -> list[torch.device]:
    names = list(devices) if devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [torch.device(d) for d in names]
