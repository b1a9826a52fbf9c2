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

from dataclasses import dataclass

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
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


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
        out = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, device_type))
    return out
