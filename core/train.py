"""The pretraining loop. The core owns the loop (device, precision, schedule, checkpoints,
resume); the pretext task owns its heads, views and loss.

Deterministic on the CPU for a seed: the model's init, the data order and the augmentations come
from three separately seeded generators, all saved in each checkpoint, so a resumed run continues
exactly where the interrupted one would have."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import checkpoint as ckpt
from .augment import Augmenter
from .config import RunConfig, validate_plugin_params
from .contracts import Backbone, BackboneParams, PretextTask
from .data import Dataset
from .errors import ConfigError, PluginError, PretextflowError
from .plugins import Registry
from .store import ArtifactStore

log = logging.getLogger("pretextflow.train")
STAGE = "pretrain"


class TrainingDiverged(PretextflowError):
    pass


# -- device and precision policies (pure functions: unit-testable without a GPU) ------------
def select_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available. Use device: auto or cpu.")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def amp_dtype(device: torch.device, enabled: bool, bf16_supported: bool | None = None) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the GPU supports it (no scaler needed), else fp16."""
    if not enabled or device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def configure_runtime(seed: int, device: torch.device, threads: int | None) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        # cuDNN autotuning picks the fastest kernels; GPU runs are reproducible within tolerance
        torch.backends.cudnn.benchmark = True
        torch.use_deterministic_algorithms(False)


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero (a pure function of the step: nothing to checkpoint)."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# -- building the model ------------------------------------------------------------------------
def build_backbone(cfg: RunConfig, dataset_meta: dict, registry: Registry, seed: int | None = None) -> Backbone:
    """The backbone plugin's network wrapped with the dataset's normalisation. Seeded so that the
    random-init baseline is exactly pretraining's starting point."""
    spec = registry.backbone(cfg.backbone.name)
    params = BackboneParams(in_chans=int(dataset_meta["image_shape"][0]),
                            image_size=int(dataset_meta["image_shape"][1]),
                            small_image_stem=cfg.backbone.small_image_stem, kwargs=cfg.backbone.kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        net, num_features = spec.build(cfg.backbone.name, params)
    except PretextflowError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PluginError(f"backbone {cfg.backbone.name!r} could not be built with backbone.kwargs="
                          f"{cfg.backbone.kwargs}: {exc}") from exc
    return Backbone(net, num_features, dataset_meta["mean"], dataset_meta["std"],
                    image_size=params.image_size, provides_tokens=spec.provides_tokens)


def build_task(cfg: RunConfig, backbone: Backbone, registry: Registry) -> PretextTask:
    task_cls = registry.pretext_task(cfg.pretext.name)
    req = task_cls.requires
    if req.tokens and not backbone.provides_tokens:
        raise PluginError(f"pretext task {task_cls.name!r} needs a backbone that exposes patch tokens, but "
                          f"backbone {cfg.backbone.name!r} does not. Choose a ViT backbone.")
    if req.flexible_input and not backbone.flexible_input:
        raise PluginError(f"pretext task {task_cls.name!r} needs a backbone that accepts smaller crops than its "
                          f"built size, but backbone {cfg.backbone.name!r} does not (for timm ViTs pass "
                          f"backbone.kwargs.dynamic_img_size=true).")
    if backbone.image_size < req.min_image_size:
        raise PluginError(f"pretext task {task_cls.name!r} needs images of at least {req.min_image_size}px; "
                          f"the dataset's are {backbone.image_size}px.")
    params = validate_plugin_params(task_cls.Params, cfg.pretext.params, "pretext.params")
    return task_cls(backbone, params)


def resolved_pretext_params(cfg: RunConfig, registry: Registry) -> dict:
    """The task's params with defaults filled in: what the key and the manifest record."""
    task_cls = registry.pretext_task(cfg.pretext.name)
    return validate_plugin_params(task_cls.Params, cfg.pretext.params, "pretext.params").model_dump(mode="json")


# -- the loop ----------------------------------------------------------------------------------
@dataclass
class PretrainOutcome:
    key: str
    uri: str
    cached: bool
    seconds: float
    images_per_second: float | None
    final_loss: float | None


def _checkpoint_bytes(task, opt, data_gen, aug, epoch, step, history, device) -> bytes:
    opt_tensors, opt_info = ckpt.optimizer_to_groups(opt)
    rng = {"torch": torch.get_rng_state(), "data": data_gen.get_state(), **{f"aug.{k}": v for k, v in aug.state_dict().items()}}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    info = {"epoch": epoch, "step": step, "history": history, "optimizer": opt_info}
    return ckpt.encode({"model": task.state_dict(), "optim": opt_tensors, "rng": rng}, info)


def pretrain(cfg: RunConfig, dataset: Dataset, store: ArtifactStore, key: str, registry: Registry,
             logger: logging.Logger | logging.LoggerAdapter = log,
             on_epoch_end: Callable[[int], None] | None = None) -> PretrainOutcome:
    """Train ``cfg.pretext`` on ``cfg.backbone`` over the dataset's training images (labels unused).

    Writes ``pretrain/<key>/{task.safetensors, history.json, _COMPLETE}`` and, every
    ``train.checkpoint_every`` epochs, ``checkpoint.safetensors``, from which a restarted run resumes."""
    if store.is_complete(STAGE, key):
        hist = store.read_json(STAGE, key, "history.json")
        logger.info("pretrain %s: complete artifact found, nothing to train", key)
        return PretrainOutcome(key, store.uri_of(STAGE, key), True, 0.0, hist.get("images_per_second"),
                               hist["epoch_loss"][-1] if hist["epoch_loss"] else None)
    tc = cfg.train
    device = select_device(tc.device)
    configure_runtime(cfg.seed, device, tc.threads)
    backbone = build_backbone(cfg, dataset.meta, registry, seed=cfg.seed)
    task = build_task(cfg, backbone, registry).to(device)
    channels_last = device.type == "cuda" and not backbone.provides_tokens
    if channels_last:
        task = task.to(memory_format=torch.channels_last)

    images = dataset.train_images if tc.max_train_samples is None else dataset.train_images[: tc.max_train_samples]
    images = torch.from_numpy(np.array(images))  # one in-memory copy (the dataset may be a read-only memmap)
    n = len(images)
    steps_per_epoch = n // tc.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={tc.batch_size} is larger than the {n} training images. "
                          f"Lower train.batch_size.")
    resident = device.type == "cpu" or images.numel() < 0.25 * torch.cuda.mem_get_info(device)[0]
    if resident:
        images = images.to(device)
    elif device.type == "cuda":
        images = images.pin_memory()  # copied batch by batch with non_blocking transfers

    decay, no_decay = [], []
    for p in task.parameters():
        if p.requires_grad:  # EMA teachers and momentum encoders are updated by the task, not the optimizer
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tc.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=tc.lr)
    dtype = amp_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    data_gen = torch.Generator().manual_seed(cfg.seed)
    aug = Augmenter(cfg.seed + 1, device)
    total = tc.epochs * steps_per_epoch
    warmup = int(round(tc.warmup_epochs * steps_per_epoch))
    start_epoch, history = 0, {"step_loss": [], "epoch_loss": [], "epoch_logs": [], "epoch_seconds": []}

    if store.exists(STAGE, key, "checkpoint.safetensors"):
        groups_, info = ckpt.decode(store.read_bytes(STAGE, key, "checkpoint.safetensors"))
        task.load_state_dict(groups_["model"])
        ckpt.optimizer_from_groups(opt, groups_.get("optim", {}), info["optimizer"])
        torch.set_rng_state(groups_["rng"]["torch"])
        data_gen.set_state(groups_["rng"]["data"])
        aug.load_state_dict({"generator": groups_["rng"]["aug.generator"]})
        if device.type == "cuda" and "cuda" in groups_["rng"]:
            torch.cuda.set_rng_state(groups_["rng"]["cuda"], device)
        start_epoch, history = info["epoch"], info["history"]
        logger.info("pretrain %s: resuming from the checkpoint after epoch %d/%d", key, start_epoch, tc.epochs)

    logger.info("pretrain %s: %s on %s, %d images, %d epochs x %d steps, batch %d, device %s%s",
                key, cfg.pretext.name, cfg.backbone.name, n, tc.epochs, steps_per_epoch, tc.batch_size,
                device, f" ({dtype})" if dtype else "")
    task.train()
    t_start = time.perf_counter()
    trained_images = 0
    for epoch in range(start_epoch, tc.epochs):
        t_epoch = time.perf_counter()
        perm = torch.randperm(n, generator=data_gen)
        losses, logs_sum = [], {}
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total, warmup, tc.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i * tc.batch_size:(i + 1) * tc.batch_size]
            batch = images[idx.to(images.device)] if resident else images[idx].to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
                out = task(batch, aug)
            loss = out.loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{cfg.pretext.name}: non-finite loss ({loss.item()}) at step {step} "
                                       f"(epoch {epoch + 1}). The last good checkpoint is kept; lower train.lr "
                                       f"or check the data.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            task.on_step_end(step, total)
            value = float(loss.detach())
            losses.append(value)
            for k, v in out.logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v)
            if (step + 1) % tc.log_every == 0:
                logger.info("pretrain %s: epoch %d step %d/%d loss %.4f lr %.2e", key, epoch + 1, step + 1,
                            total, value, lr)
        trained_images += steps_per_epoch * tc.batch_size
        seconds = time.perf_counter() - t_epoch
        history["step_loss"].extend(losses)
        history["epoch_loss"].append(float(np.mean(losses)))
        history["epoch_logs"].append({k: v / steps_per_epoch for k, v in logs_sum.items()})
        history["epoch_seconds"].append(seconds)
        logger.info("pretrain %s: epoch %d/%d mean loss %.4f (%.1fs, %.0f images/s)", key, epoch + 1, tc.epochs,
                    history["epoch_loss"][-1], seconds, steps_per_epoch * tc.batch_size / seconds)
        if (epoch + 1) % tc.checkpoint_every == 0 and epoch + 1 < tc.epochs:
            store.write_bytes(_checkpoint_bytes(task, opt, data_gen, aug, epoch + 1, step + 1, history, device),
                              STAGE, key, "checkpoint.safetensors")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    elapsed = time.perf_counter() - t_start
    history["images_per_second"] = trained_images / elapsed if trained_images else None
    history["device"] = str(device)
    history["threads"] = torch.get_num_threads()
    task_cpu = task.to("cpu")
    store.write_bytes(ckpt.encode({"model": task_cpu.state_dict()}, {"pretext": cfg.pretext.name}),
                      STAGE, key, "task.safetensors")
    store.write_json(history, STAGE, key, "history.json")
    store.mark_complete(STAGE, key, {"pretext": cfg.pretext.name, "backbone": cfg.backbone.name})
    if store.exists(STAGE, key, "checkpoint.safetensors"):
        store.fs.rm(store.path(STAGE, key, "checkpoint.safetensors"))
    return PretrainOutcome(key, store.uri_of(STAGE, key), False, elapsed, history["images_per_second"],
                           history["epoch_loss"][-1] if history["epoch_loss"] else None)

