"""Multi-process pretraining with torch.distributed (DDP): ``train.devices: N``.

The pretrain stage launches N processes (``torch.multiprocessing.spawn``): ``gloo`` on the CPU,
NCCL with one GPU per process on CUDA. Every process runs the same loop on its slice of each
*global* batch (``train.batch_size`` stays the global batch), so N processes train the same model
as one process with that batch, up to floating-point reduction order:

- data: every rank draws the same seeded permutation and takes its contiguous slice of each global
  batch (the distributed sampler, without a second source of randomness);
- augmentation: every rank draws the random parameters of the whole global batch from the same
  seeded generator and keeps its slice (``Augmenter(shard=...)``), so the views are the ones the
  single process would have made;
- BatchNorm: converted to SyncBatchNorm (``train.sync_batchnorm``), so statistics are over the
  global batch;
- losses over the batch (NT-Xent negatives, VICReg/Barlow statistics, DINO's centre, MoCo's queue)
  see the global batch through :func:`gather_with_grad` / :func:`all_reduce_mean`, which are the
  identity in a single process: a plugin calls them unconditionally;
- rank 0 alone writes checkpoints, history and the final weights, and logs.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank the summed gradient of its own slice.

    Written with all_reduce (which every backend has) rather than torch.distributed.nn's
    reduce-scatter/all-to-all, which gloo lacks on some builds."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The global batch of ``x`` (rank order), differentiable; ``x`` itself in a single process.

    A loss computed on the gathered tensor by every rank has, after DDP's gradient averaging,
    exactly the gradient of the single-process loss on the global batch."""
    if not is_active():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """The global batch of ``x`` without gradient (e.g. MoCo's keys for its queue)."""
    if not is_active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (for equal local batches: the global-batch mean of per-rank means)."""
    if not is_active():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def launch(world: int, device_type: str, payload: dict[str, Any], timeout: float | None = None) -> None:
    """Run the pretraining loop in ``world`` new processes on this machine and wait for all.

    Each rank is ``python -m pretextflow.core.distributed PAYLOAD.json`` with the torchrun
    environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): no pickling, and no
    re-import of the caller's ``__main__`` (which ``multiprocessing`` spawn would do). If any rank
    fails, the others are stopped and the rank's own error is raised here with its message."""
    import json
    import subprocess
    import sys
    import tempfile

    from pretextflow.core.errors import PretextflowError

    with tempfile.TemporaryDirectory(prefix="pretextflow-ddp-") as tmp:
        payload_path = os.path.join(tmp, "payload.json")
        with open(payload_path, "w") as f:
            json.dump({**payload, "backend": backend_for(device_type), "error_dir": tmp}, f)
        port = str(free_port())
        procs, logs = [], []
        for r in range(world):
            env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            log_file = open(os.path.join(tmp, f"rank{r}.log"), "w+")
            logs.append(log_file)
            procs.append(subprocess.Popen([sys.executable, "-m", "pretextflow.core.distributed", payload_path],
                                          env=env, stdout=log_file if r else None, stderr=log_file if r else None))
        try:
            failed = _wait_all(procs, timeout)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for f in logs:
                f.close()
        if failed is None:
            return
        err_path = os.path.join(tmp, f"error{failed}.json")
        if os.path.exists(err_path):
            with open(err_path) as f:
                err = json.load(f)
            from pretextflow.core import errors

            cls = _ERROR_TYPES.get(err["type"]) or getattr(errors, err["type"], None)
            if isinstance(cls, type) and issubclass(cls, PretextflowError):
                raise cls(err["message"])
            raise PretextflowError(f"pretraining rank {failed} of {world} failed: {err['type']}: {err['message']}")
        with open(os.path.join(tmp, f"rank{failed}.log")) as f:
            tail = "".join(f.readlines()[-15:])
        raise PretextflowError(f"pretraining rank {failed} of {world} exited with code {procs[failed].returncode}:\n"
                               f"{tail}")


_ERROR_TYPES: dict[str, type] = {}  # exception classes outside core.errors that ranks may raise (filled by train)


def _wait_all(procs, timeout: float | None) -> int | None:
    """Index of the first rank that failed (the others are then killed), or None if all succeeded."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        for r, code in enumerate(codes):
            if code not in (None, 0):
                return r
        if all(c == 0 for c in codes):
            return None
        if deadline is not None and time.monotonic() > deadline:
            return 0
        time.sleep(0.05)


def _rank_entry(payload_path: str) -> int:
    """A rank's process: join the process group, train, leave."""
    import json
    import traceback

    with open(payload_path) as f:
        payload = json.load(f)
    r, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if payload["backend"] == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(payload["backend"], rank=r, world_size=world)
    try:
        from pretextflow.core.train import rank_main

        rank_main(Shard(r, world), payload)
        dist.barrier()
        return 0
    except Exception as exc:
        with open(os.path.join(payload["error_dir"], f"error{r}.json"), "w") as f:
            json.dump({"type": type(exc).__name__, "message": str(exc)}, f)
        traceback.print_exc()
        return 1
    finally:
        dist.destroy_process_group()


# -- BatchNorm over the global batch -------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Differentiable all_reduce(SUM): the gradient of a sum over ranks is the sum of the ranks'
    gradients (again an all_reduce)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the global batch of all ranks, for the CPU
    (torch's SyncBatchNorm only runs on accelerators). Two passes (mean, then centred squares),
    as numerically careful as the single-process BatchNorm it replaces; same state dict."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_active()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = torch.tensor([float(x.numel() // c)], dtype=x.dtype, device=x.device)
        total = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:c] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: torch.nn.Module, device_type: str) -> torch.nn.Module:
    """Every BatchNorm in ``module`` normalised over the global batch: torch's SyncBatchNorm on
    CUDA (NCCL), :class:`GlobalBatchNorm` on the CPU (gloo)."""
    if device_type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, device_type))
    return out


if __name__ == "__main__":
    import sys

    sys.exit(_rank_entry(sys.argv[1]))
