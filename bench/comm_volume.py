"""What each pretext method sends between GPUs per training step, on paper (data-parallel, DDP).

For a (backbone, image size, local batch per GPU, world size) this builds every built-in pretext
task, runs one forward and backward pass in a single process, and records what a multi-process run
would communicate per optimizer step and rank:

- DDP's gradient all-reduce: every trainable parameter of the task module, fp32;
- DDP's buffer broadcast from rank 0 before each forward (``broadcast_buffers``, on by default):
  every buffer of the task module (BatchNorm running statistics, MoCo's queue, DINO's centre);
- the method's own collectives (``gather_with_grad``, ``gather``, ``all_reduce_mean`` from
  ``core/toolkit/collectives.py``), recorded by wrapping the names in each plugin module's globals
  (they are the identity in one process, so the wrapped step computes the same thing);
- BatchNorm over the global batch (``train.sync_batchnorm``): per BatchNorm call in training mode,
  two all-reduces in the forward pass (C+1 and C values, as ``GlobalBatchNorm``) and, when the
  input has a gradient, the same two in the backward pass; counted with forward hooks.

The recorded step runs at a small batch (``RUN_BATCH``) and every recorded tensor whose first
dimension is a multiple of that batch is scaled linearly to the requested local batch; the rest
(DINO's centre, BN statistics, gradients, buffers) does not depend on the batch. Bytes per rank
use the ring algorithms NCCL uses. An estimate: no latency, overlap or protocol overhead.

    python bench/comm_volume.py                                   # W=16 (2 nodes x 8), local batch 64
    python bench/comm_volume.py --world 8 --local-batch 128 --out /tmp/comm.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
RUN_BATCH = 4  # the batch of the recorded forward/backward pass; batch-sized tensors are scaled from it
KINDS = ("gather_with_grad", "gather", "all_reduce_mean")
FP32 = 4  # bytes: gradients and BatchNorm statistics
LINKS = {"100 Gb/s": 100e9 / 8, "25 GB/s": 25e9}  # bytes/s: Ethernet / 200 Gb/s InfiniBand
SKIPPED = {
    "distill": "needs a trained teacher (a run folder or export); it calls no collectives of its own and its "
    "teacher is frozen outside the module tree, so its traffic is the student's gradient and BN statistics",
}
# MAE masks patch tokens: it runs on a ViT of about the size of the report's backbone at that size
TOKEN_BACKBONES = {28: ("timm/vit_tiny_patch16_224", {"patch_size": 4}), 224: ("timm/vit_small_patch16_224", {})}
DEFAULT_SETUPS = (("convnet-s", {"width": 16, "depth": 4}, 28, 1), ("timm/resnet50", {}, 224, 3))


class Recorder:
    """What one step hands to collectives: (kind, shape, dtype) per call, and per BatchNorm call in
    training mode its channels and whether its backward pass runs (the input has a gradient)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        self.bn: list[tuple[int, bool]] = []

    def wrap(self, kind: str, fn: Callable) -> Callable:
        def recorded(x: torch.Tensor) -> torch.Tensor:
            self.calls.append((kind, tuple(x.shape), x.dtype))
            return fn(x)

        return recorded

    def bn_hook(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training:
            x = inputs[0]
            self.bn.append((int(x.shape[1]), torch.is_grad_enabled() and x.requires_grad))


@contextlib.contextmanager
def recording(task: torch.nn.Module, modules: list, rec: Recorder) -> Iterator[Recorder]:
    """The collectives in ``modules``' globals wrapped, and hooks on every BatchNorm of ``task``."""
    from pretextflow.core.toolkit import collectives

    originals = {kind: getattr(collectives, kind) for kind in KINDS}
    patched = []
    for mod in dict.fromkeys(modules):  # each module once
        for kind, fn in originals.items():
            if getattr(mod, kind, None) is fn:
                patched.append((mod, kind, fn))
                setattr(mod, kind, rec.wrap(kind, fn))
    bns = [m for m in task.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_hook(rec.bn_hook) for m in bns]
    try:
        yield rec
    finally:
        for mod, kind, fn in patched:
            setattr(mod, kind, fn)
        for h in handles:
            h.remove()


def build(method: str, backbone: str, kwargs: dict, image_size: int, channels: int) -> torch.nn.Module:
    """The task as the pretrain stage builds it (``pretext.params={}``: the method's defaults), in training mode."""
    from pretextflow.core.config import load_config
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.training.model import build_backbone, build_task

    overrides = [
        f"pretext.name={method}",
        "pretext.params={}",
        f"backbone.name={backbone}",
        f"backbone.kwargs={json.dumps(kwargs)}",
        "train.image_size=null",
    ]
    cfg = load_config(CONFIG, overrides)
    meta = {"image_shape": [channels, image_size, image_size], "mean": [0.5] * channels, "std": [0.25] * channels}
    reg = get_registry()
    task = build_task(cfg, build_backbone(cfg, meta, reg, seed=0), reg)
    return task.train()


def record_step(task: torch.nn.Module, image_size: int, channels: int, n: int) -> Recorder:
    """One training step's forward and backward pass on ``n`` random uint8 images, recorded."""
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.toolkit import collectives
    from pretextflow.core.toolkit.augment import Augmenter

    modules = [collectives] + [sys.modules[cls.__module__] for cls in get_registry().pretext.values()]
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, channels, image_size, image_size), dtype=torch.uint8)
    aug = Augmenter(0, out_size=image_size)
    with recording(task, modules, Recorder()) as rec:
        x = aug.prepare_batch(images, None)
        try:
            out = task(x, aug)
        finally:
            aug.clear_batch()
        out.loss.backward()
    return rec


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _scaled(shape: tuple[int, ...], run_batch: int, local_batch: int) -> tuple[int, ...]:
    """The shape at ``local_batch``: a first dimension that is a multiple of the recorded batch
    (1 or several views of it) scales with the batch; anything else (e.g. a (1, D) mean) does not."""
    if shape and shape[0] >= run_batch and shape[0] % run_batch == 0:
        return (shape[0] // run_batch * local_batch, *shape[1:])
    return shape


def _summarise(rec: Recorder, run_batch: int, local_batch: int) -> dict:
    """Per kind: elements and payload bytes of this rank's tensors, with the shapes (scaled)."""
    out = {k: {"elements": 0, "bytes": 0, "calls": 0, "shapes": []} for k in KINDS}
    for kind, shape, dtype in rec.calls:
        s = _scaled(shape, run_batch, local_batch)
        n = _numel(s)
        entry = out[kind]
        entry["elements"] += n
        entry["bytes"] += n * torch.empty((), dtype=dtype).element_size()
        entry["calls"] += 1
        entry["shapes"].append(list(s))
    return out


def volumes(
    method: str,
    backbone: str,
    kwargs: dict,
    image_size: int,
    channels: int,
    local_batch: int,
    run_batch: int = RUN_BATCH,
) -> dict:
    """What one step of ``method`` hands to each kind of collective on one rank (world-independent):
    ``params`` (trainable numel; the gradient all-reduce's elements), ``buffers_bytes`` (DDP's
    broadcast), per kind of method collective its ``elements``/``bytes``/``calls``/``shapes`` at
    ``local_batch``, and the BatchNorm statistics: ``bn_calls`` (layer calls in training mode),
    ``bn_allreduces`` and ``bn_elements`` (forward and backward together)."""
    task = build(method, backbone, kwargs, image_size, channels)
    rec = record_step(task, image_size, channels, run_batch)
    bn_elements = sum((2 * c + 1) * (2 if grad else 1) for c, grad in rec.bn)
    return {
        "method": method,
        "backbone": backbone,
        "kwargs": dict(kwargs),
        "image_size": image_size,
        "channels": channels,
        "local_batch": local_batch,
        "params": sum(p.numel() for p in task.parameters() if p.requires_grad),
        "backbone_params": sum(p.numel() for p in task.backbone.parameters() if p.requires_grad),
        "buffers_bytes": sum(b.numel() * b.element_size() for b in task.buffers()),
        "collectives": _summarise(rec, run_batch, local_batch),
        "bn_calls": len(rec.bn),
        "bn_allreduces": sum(4 if grad else 2 for _, grad in rec.bn),
        "bn_elements": bn_elements,
    }


def per_rank_bytes(vol: dict, world: int) -> dict:
    """Bytes each rank sends (and receives) per step with ring algorithms: an all-reduce of S bytes
    moves 2(W-1)/W*S, an all-gather with S bytes in all (W-1)/W*S, a broadcast of S bytes about S."""
    if world <= 1:
        return {"gradient": 0.0, "gathered": 0.0, "bn": 0.0, "buffers": 0.0, "total": 0.0}
    ar = 2 * (world - 1) / world  # all-reduce factor
    ag = (world - 1) / world  # all-gather factor, on the gathered total (world x local)
    c = vol["collectives"]
    gathered = (
        c["gather_with_grad"]["bytes"] * world * (ag + ar)  # forward all-gather, backward all-reduce of it all
        + c["gather"]["bytes"] * world * ag
        + c["all_reduce_mean"]["bytes"] * ar
    )
    out = {
        "gradient": vol["params"] * FP32 * ar,
        "gathered": gathered,
        "bn": vol["bn_elements"] * FP32 * ar,
        "buffers": float(vol["buffers_bytes"]),
    }
    out["total"] = sum(out.values())
    return out


def methods() -> list[str]:
    """The registered pretext tasks, in the registry's order."""
    from pretextflow.core.registry.registry import get_registry

    return list(get_registry().pretext)


def setup_rows(backbone: str, kwargs: dict, image_size: int, channels: int, local_batch: int) -> list[dict]:
    """:func:`volumes` of every method on one backbone; MAE on the ViT of ``TOKEN_BACKBONES`` (it
    needs patch tokens), the methods of ``SKIPPED`` as rows with a ``skipped`` reason."""
    from pretextflow.core.registry.registry import get_registry

    rows = []
    for method in methods():
        if method in SKIPPED:
            rows.append({"method": method, "backbone": backbone, "skipped": SKIPPED[method]})
            continue
        name, kw = backbone, kwargs
        if get_registry().pretext[method].requires.tokens and not backbone.startswith("timm/vit"):
            name, kw = TOKEN_BACKBONES.get(image_size, TOKEN_BACKBONES[224])
        rows.append(volumes(method, name, kw, image_size, channels, local_batch))
    return rows


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}" if n < 1e7 else f"{n / 1e6:.1f}"


def _steps(rate: float, total: float) -> str:
    if total <= 0:
        return "-"
    s = rate / total
    return f"{s:,.0f}" if s >= 100 else f"{s:.1f}"


def _gathered_what(vol: dict) -> str:
    """E.g. ``gather_with_grad 2×(64, 128)``: the method's collectives and their tensors at the local batch."""
    parts = []
    for kind in KINDS:
        shapes = [tuple(s) for s in vol["collectives"][kind]["shapes"]]
        for shape in dict.fromkeys(shapes):
            count = shapes.count(shape)
            parts.append(f"{kind} {count}×{shape}" if count > 1 else f"{kind} {shape}")
    return ", ".join(parts) or "none"


def _backbone_label(vol: dict) -> str:
    kw = ", ".join(f"{k} {v}" for k, v in vol["kwargs"].items())
    name = f"{vol['backbone']} ({kw})" if kw else vol["backbone"]
    return f"{name}, {vol['image_size']} px, {vol['channels']} ch"


def _row(vol: dict, world: int) -> str:
    b = per_rank_bytes(vol, world)
    cells = [
        vol["method"],
        _backbone_label(vol),
        f"{vol['params'] / 1e6:.2f} ({(vol['params'] - vol['backbone_params']) / 1e6:.2f})",
        _mb(b["gradient"]),
        _mb(b["gathered"]),
        _gathered_what(vol),
        _mb(b["bn"]),
        f"{vol['bn_allreduces']} ({vol['bn_calls']})",
        _mb(b["buffers"]),
        _mb(b["total"]),
        *(_steps(rate, b["total"]) for rate in LINKS.values()),
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| method | backbone (input) | trainable params, M (of which heads) | gradient all-reduce (MB) | gathered tensors (MB) "
    "| what the method's collectives carry | BN statistics (MB) | BN all-reduces (BN layer calls) "
    "| DDP buffer broadcast (MB) | total per step (MB) | max steps/s, 100 Gb/s | max steps/s, 25 GB/s |"
)


def _assumptions(world: int, local_batch: int) -> list[str]:
    return [
        f"Bytes each rank sends (and as many it receives) per optimizer step, for W = {world} data-parallel ranks "
        f"(2 nodes x 8 GPUs is W = 16) and {local_batch} images per GPU (global batch {world * local_batch}), "
        "with NCCL's ring algorithms: an all-reduce of S bytes moves 2(W-1)/W x S, an all-gather of S bytes in "
        "all (W-1)/W x S, a broadcast about S; MB = 10^6 bytes, fp32 throughout (no AMP).",
        "The gradient all-reduce (every trainable parameter) and the BatchNorm statistics do not depend on the "
        "batch; the tensors the method gathers (`gather_with_grad`: all-gather forward and an all-reduce of the "
        "whole gathered gradient backward; `gather`; `all_reduce_mean`) scale linearly with the local batch: "
        f"they were recorded in one forward/backward pass at a batch of {RUN_BATCH} and scaled.",
        "BatchNorm over the global batch (`train.sync_batchnorm`, as `GlobalBatchNorm`) all-reduces C+1 and C "
        "values per BatchNorm call in the forward pass and as many in the backward pass when the input has a "
        "gradient (momentum and teacher encoders: forward only); torch's SyncBatchNorm on CUDA does one "
        "all-gather (2C+1 values per rank) and one all-reduce (2C) per call instead, about as many bytes in half "
        "the round trips.",
        "DDP also broadcasts every buffer of the task from rank 0 before each forward (`broadcast_buffers`, its "
        "default: BN running statistics, MoCo's queue), and the loop all-reduces the logged loss (one value).",
        "Max steps/s is the link's bytes/s over the per-rank total: with one ring across the 2 nodes each "
        "direction of the inter-node link carries about one rank's ring volume; this is an estimate from "
        "bandwidth alone that ignores latency (each BN all-reduce is a round trip), overlap with compute, "
        "protocol overhead and NCCL's real topology (several rings or NICs, tree all-reduce).",
    ]


def markdown(rows: list[dict], world: int, local_batch: int) -> str:
    """A Markdown section: heading, the assumptions, one table row per measured method, then the skipped ones."""
    lines = [f"### Communication per training step, on paper: W = {world}, {local_batch} images per GPU", ""]
    lines += [" ".join(_assumptions(world, local_batch)), "", HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    lines += [_row(vol, world) for vol in rows if "skipped" not in vol]
    skipped = {vol["method"]: vol["skipped"] for vol in rows if "skipped" in vol}
    if skipped:
        lines.append("")
        lines += [f"Not measured: `{m}`: {why}." for m, why in skipped.items()]
    lines.append("")
    lines.append(
        "BN all-reduces count the collectives of BatchNorm statistics per step (4 per BatchNorm call with a "
        "backward pass, 2 without); a layer run on two views in two calls counts twice, once on a concatenated "
        "batch. MAE masks patch tokens and runs on the ViT named in its row. Heads are each method's defaults "
        "(`pretext.params={}`), some sized from the backbone's width or the image: SimSiam's, Barlow Twins' and "
        "VICReg's projectors are 4x the backbone width (8192-d on a ResNet-50), inpainting's decoder predicts "
        "the whole image (C x H x W outputs), and their gradients dominate those rows."
    )
    return "\n".join(lines) + "\n"


def paper_section(world: int = 16, local_batch: int = 64) -> str:
    """The section bench/distributed.py puts in SCALING.md: every method on both default setups."""
    rows = []
    for backbone, kwargs, size, channels in DEFAULT_SETUPS:
        rows += setup_rows(backbone, kwargs, size, channels, local_batch)
    return markdown(rows, world, local_batch) + "\n" + reading(rows, world, local_batch) + "\n"


def reading(rows: list[dict], world: int, local_batch: int) -> str:
    """What the table means for the second (GPU-sized) setup: the range of volumes, the link-bound
    step rates on 100 Gb/s, and how much of it is the gradient."""
    big = DEFAULT_SETUPS[-1][0]
    vols = [v for v in rows if "skipped" not in v and v["backbone"] == big]
    if not vols:
        return ""
    per = {v["method"]: per_rank_bytes(v, world) for v in vols}
    lo, hi = min(per, key=lambda m: per[m]["total"]), max(per, key=lambda m: per[m]["total"])
    rate = LINKS["100 Gb/s"]
    share = sorted(b["gradient"] / b["total"] for b in per.values())
    return (
        f"Reading: on {big} with {local_batch} images per GPU and W = {world}, a step moves "
        f"{per[lo]['total'] / 1e6:.0f} MB ({lo}) to {per[hi]['total'] / 1e6:.0f} MB ({hi}) per rank, of which "
        f"the gradient all-reduce is {share[0]:.0%} to {share[-1]:.0%}. On one 100 Gb/s link between the "
        f"nodes that caps the step rate at {rate / per[lo]['total']:.0f} ({lo}) to {rate / per[hi]['total']:.1f} "
        f"({hi}) steps/s, i.e. {rate / per[lo]['total'] * local_batch * world:,.0f} to "
        f"{rate / per[hi]['total'] * local_batch * world:,.0f} images/s for the whole job: GPUs that compute "
        f"a step faster than that wait on the network, so the methods with 8192-d heads need InfiniBand-class "
        f"links or smaller projectors. Not done here: bf16 gradient compression (a DDP communication hook, "
        f"half the gradient bytes) and `broadcast_buffers=False` (every rank's buffers are equal already: "
        f"BatchNorm statistics over the global batch, MoCo's queue from the gathered keys), both untested."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=16, help="data-parallel ranks (default 16: 2 nodes x 8 GPUs)")
    p.add_argument("--local-batch", type=int, default=64, help="images per GPU per step (default 64)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown here (default: stdout)")
    args = p.parse_args(argv)
    text = paper_section(args.world, args.local_batch)
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
