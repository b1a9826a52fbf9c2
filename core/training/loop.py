"""The pretraining loop. The core owns the loop (device, precision, schedule, checkpoints,
resume); the pretext task owns its heads, views and loss.

Deterministic on the CPU for a seed: the model's init, the data order and the augmentations come
from three separately seeded generators, all saved in each checkpoint, so a resumed run continues
exactly where the interrupted one would have."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pretextflow.core.config import RunConfig
from pretextflow.core.data.dataset import Dataset
from pretextflow.core.errors import ConfigError, TrainingDiverged
from pretextflow.core.registry.registry import Registry
from pretextflow.core.security import credentials
from pretextflow.core.store import ArtifactStore
from pretextflow.core.toolkit import collectives as distributed
from pretextflow.core.toolkit.augment import Augmenter
from pretextflow.core.toolkit.schedules import lr_at
from pretextflow.core.training import checkpoint as ckpt
from pretextflow.core.training import launch
from pretextflow.core.training.model import amp_dtype, build_backbone, build_task, configure_runtime, select_device

log = logging.getLogger("pretextflow.train")


STAGE = "pretrain"


# -- the loop ----------------------------------------------------------------------------------
@dataclass
class PretrainOutcome:
    key: str
    uri: str
    cached: bool
    seconds: float
    images_per_second: float | None
    final_loss: float | None


@dataclass
class _Progress:
    """Where a run is, beyond the modules' and generators' own state: the JSON part of a checkpoint.
    A checkpoint can be taken after any step, so the current epoch's partial sums are in it too."""

    step: int = 0  # optimizer steps done
    history: dict = field(
        default_factory=lambda: {"step_loss": [], "epoch_loss": [], "epoch_logs": [], "epoch_seconds": []}
    )  # of the finished epochs
    losses: list = field(default_factory=list)  # the current epoch's step losses so far
    logs_sum: dict = field(default_factory=dict)  # the current epoch's summed logs so far
    epoch_seconds: float = 0.0  # time spent in the current epoch before the checkpoint
    lr_scale: float = 1.0  # train.lr x this: lowered by each rollback (train.on_nonfinite)
    rollbacks: list = field(default_factory=list)  # one record per rollback

    def info(self, steps_per_epoch: int) -> dict:
        return {
            "step": self.step,
            "epoch": self.step // steps_per_epoch,
            "history": self.history,
            "epoch_losses": self.losses,
            "epoch_logs_sum": self.logs_sum,
            "epoch_seconds": self.epoch_seconds,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
        }

    @classmethod
    def from_info(cls, info: dict) -> _Progress:
        return cls(
            info["step"],
            info["history"],
            info["epoch_losses"],
            info["epoch_logs_sum"],
            info["epoch_seconds"],
            info["lr_scale"],
            info["rollbacks"],
        )


def _end_epoch(run: _Progress, seconds: float, steps_per_epoch: int) -> None:
    h = run.history
    h["step_loss"].extend(run.losses)
    h["epoch_loss"].append(float(np.mean(run.losses)))
    h["epoch_logs"].append({k: v / steps_per_epoch for k, v in run.logs_sum.items()})
    h["epoch_seconds"].append(seconds)
    run.losses, run.logs_sum = [], {}


def _checkpoint_due(done: int, steps_per_epoch: int, total: int, tc) -> bool:
    """After ``done`` steps: every ``checkpoint_every`` epochs and every ``checkpoint_every_steps``
    steps, never after the last step (the final weights are written then)."""
    if done >= total:
        return False
    epoch_end = done % steps_per_epoch == 0 and (done // steps_per_epoch) % tc.checkpoint_every == 0
    return epoch_end or (tc.checkpoint_every_steps is not None and done % tc.checkpoint_every_steps == 0)


def _finite_state(task: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> bool:
    """Whether every float tensor a checkpoint would hold is finite, agreed by all ranks: a state
    with a NaN in it is never written over the last good checkpoint."""
    tensors = [t for t in task.state_dict().values() if t.is_floating_point()]
    tensors += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.is_floating_point()]
    ok = all(bool(torch.isfinite(t).all()) for t in tensors)
    return bool(distributed.all_reduce_mean(torch.tensor(float(ok), device=device)) == 1.0)


def _checkpoint_bytes(
    task, opt, scaler, data_state: torch.Tensor, aug, run: _Progress, steps_per_epoch: int, device
) -> bytes:
    """``data_state``: the data generator before the current epoch's permutation, so that a resumed
    run redraws the same permutation and continues mid-epoch at ``run.step``."""
    opt_tensors, opt_info = ckpt.optimizer_to_groups(opt)
    rng = {"torch": torch.get_rng_state(), "data": data_state, **{f"aug.{k}": v for k, v in aug.state_dict().items()}}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    info = {**run.info(steps_per_epoch), "optimizer": opt_info, "scaler": scaler.state_dict()}
    return ckpt.encode({"model": task.state_dict(), "optim": opt_tensors, "rng": rng}, info)


def pretrain(
    cfg: RunConfig,
    dataset: Dataset,
    store: ArtifactStore,
    key: str,
    registry: Registry,
    logger: logging.Logger | logging.LoggerAdapter = log,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> PretrainOutcome:
    """Train ``cfg.pretext`` on ``cfg.backbone`` over the dataset's training images (labels unused).

    Writes ``pretrain/<key>/{task.safetensors, history.json, _COMPLETE}`` and, every
    ``train.checkpoint_every`` epochs and every ``train.checkpoint_every_steps`` steps,
    ``checkpoint.safetensors`` (atomically: written aside, then renamed), from which a restarted run
    resumes, mid-epoch included, with the weights an uninterrupted run would have had. A non-finite
    loss stops the run, or rolls it back to the last good state with a lower lr (``train.on_nonfinite``).
    With ``train.devices: N > 1`` the loop runs in N processes (``core.distributed``)."""
    if store.is_complete(STAGE, key):
        hist = store.read_json(STAGE, key, "history.json")
        logger.info("pretrain %s: complete artifact found, nothing to train", key)
        return PretrainOutcome(
            key,
            store.uri_of(STAGE, key),
            True,
            0.0,
            hist.get("images_per_second"),
            hist["epoch_loss"][-1] if hist["epoch_loss"] else None,
        )
    if cfg.train.devices > 1:
        return _pretrain_multiprocess(cfg, dataset, store, key, logger)
    return _train(cfg, dataset, store, key, registry, logger, on_epoch_end, distributed.Shard(), on_step=on_step)


def _pretrain_multiprocess(
    cfg: RunConfig, dataset: Dataset, store: ArtifactStore, key: str, logger: logging.Logger | logging.LoggerAdapter
) -> PretrainOutcome:
    """Launch ``train.devices`` processes on this machine; they write the artifact, we read it."""
    tc = cfg.train
    device = select_device(tc.device)
    if device.type == "cuda" and torch.cuda.device_count() < tc.devices:
        raise ConfigError(
            f"train.devices={tc.devices} but only {torch.cuda.device_count()} CUDA devices are "
            f"visible. Lower train.devices."
        )
    if store.fs.protocol in ("memory", ("memory",)) or "memory" in (store.fs.protocol or ()):
        raise ConfigError(
            "train.devices > 1 needs an artifact store every process can reach (a local folder or "
            "s3://...), not memory://. Set store.uri."
        )
    reopen = dataset.reopen_args()
    if reopen is None:
        raise ConfigError(
            "train.devices > 1 needs a dataset the processes can open (one ingested into a "
            "workspace); this one exists only in memory. Use train.devices: 1."
        )
    threads = (tc.threads or max(1, (os.cpu_count() or 1) // tc.devices)) if device.type == "cpu" else tc.threads
    logger.info(
        "pretrain %s: %d processes (%s), global batch %d = %d x %d, %s threads each",
        key,
        tc.devices,
        launch.backend_for(device.type),
        tc.batch_size,
        tc.devices,
        tc.batch_size // tc.devices,
        threads,
    )
    t0 = time.perf_counter()
    launch.launch(
        tc.devices,
        device.type,
        {
            "config": cfg.model_dump(mode="json"),
            "key": key,
            "threads": threads,
            # credentials by reference (the ranks inherit the environment): no secret in the payload file
            "data": [credentials.protect_uri(reopen[0]), reopen[1], credentials.protect_options(reopen[2])],
            "store": [credentials.protect_uri(store.uri), credentials.protect_options(store.storage_options)],
        },
    )
    hist = store.read_json(STAGE, key, "history.json")
    for epoch, (loss, seconds) in enumerate(zip(hist["epoch_loss"], hist["epoch_seconds"], strict=False), 1):
        logger.info("pretrain %s: epoch %d/%d mean loss %.4f (%.1fs)", key, epoch, tc.epochs, loss, seconds)
    return PretrainOutcome(
        key,
        store.uri_of(STAGE, key),
        False,
        time.perf_counter() - t0,
        hist.get("images_per_second"),
        hist["epoch_loss"][-1] if hist["epoch_loss"] else None,
    )


def rank_main(shard: distributed.Shard, payload: dict) -> None:
    """One rank of a multi-process run (a new process: everything is rebuilt from plain data)."""
    from pretextflow.core.config import load_config
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.registry.registry import get_registry

    cfg = load_config(raw=payload["config"])
    if payload.get("threads"):
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": payload["threads"]})})
    data_uri, name, options = payload["data"]
    dataset = load_dataset(credentials.resolve(data_uri), name, credentials.resolve_options(options))
    store_uri, store_options = payload["store"]
    store = ArtifactStore(credentials.resolve(store_uri), credentials.resolve_options(store_options))
    rank_log = logging.getLogger("pretextflow.train")
    if shard.rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s rank 0/%(process)d | %(message)s")
    _train(cfg, dataset, store, payload["key"], get_registry(), rank_log if shard.rank == 0 else _SILENT, None, shard)


_SILENT = logging.getLogger("pretextflow.train.silent")


_SILENT.disabled = True


def _train(
    cfg: RunConfig,
    dataset: Dataset,
    store: ArtifactStore,
    key: str,
    registry: Registry,
    logger: logging.Logger | logging.LoggerAdapter,
    on_epoch_end: Callable[[int], None] | None,
    shard: distributed.Shard,
    on_step: Callable[[int], None] | None = None,
) -> PretrainOutcome:
    """The loop, in one process or as one rank of several (``shard``). ``on_epoch_end(epochs done)``
    and ``on_step(steps done)`` are called after the epoch's / step's checkpoint, if one was due."""
    tc = cfg.train
    device = select_device(tc.device)
    if device.type == "cuda" and shard.world > 1:
        device = torch.device("cuda", shard.rank)
    configure_runtime(cfg.seed, device, tc.threads)
    backbone = build_backbone(cfg, dataset.meta, registry, seed=cfg.seed)
    task = build_task(cfg, backbone, registry)
    if shard.world > 1 and tc.sync_batchnorm:
        task = distributed.convert_batchnorm(task, device.type)
    task = task.to(device)
    channels_last = tc.channels_last and device.type == "cuda" and not backbone.provides_tokens
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
    if tc.compile:
        # in place: the state dict keeps its names (no `_orig_mod.` prefix in the saved weights)
        task.backbone.net.compile()
    model = task
    if shard.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # the task module computes the loss itself; DDP averages gradients across ranks
        model = DDP(task, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    images = dataset.train_images if tc.max_train_samples is None else dataset.train_images[: tc.max_train_samples]
    if isinstance(images, np.memmap) and device.type == "cpu":
        # train straight from the memory-mapped file: its pages are the only copy in RAM (shared with
        # the OS page cache, and with the probe stage's reads); batches are gathered from it. Nothing
        # writes to it, so torch's warning about a read-only buffer does not apply.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            images = torch.from_numpy(images)
    else:
        images = torch.from_numpy(np.array(images))  # one in-memory copy, then moved to the device
    n = len(images)
    steps_per_epoch = n // tc.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} is larger than the {n} training images. Lower train.batch_size."
        )
    local_batch = tc.batch_size // shard.world
    resident = device.type == "cpu" or images.numel() < 0.25 * torch.cuda.mem_get_info(device)[0]
    if resident:
        images = images.to(device)  # on a GPU: the whole dataset lives on the device, no copies per step
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
    aug = Augmenter(cfg.seed + 1, device, shard=(shard.rank, shard.world))
    total = tc.epochs * steps_per_epoch
    warmup = int(round(tc.warmup_epochs * steps_per_epoch))
    writer = shard.rank == 0  # one process writes checkpoints, history and weights
    rollback = tc.on_nonfinite == "rollback"

    def restore(data: bytes) -> _Progress:
        groups_, info = ckpt.decode(data)
        task.load_state_dict(groups_["model"])
        ckpt.optimizer_from_groups(opt, groups_.get("optim", {}), info["optimizer"])
        if info.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(info["scaler"])
        torch.set_rng_state(groups_["rng"]["torch"])
        data_gen.set_state(groups_["rng"]["data"])  # from before the epoch's permutation: redrawn identically
        aug.load_state_dict({"generator": groups_["rng"]["aug.generator"]})
        if device.type == "cuda" and "cuda" in groups_["rng"]:
            torch.cuda.set_rng_state(groups_["rng"]["cuda"], device)
        return _Progress.from_info(info)

    run = _Progress()
    good: bytes | None = None  # rollback mode: the last good checkpoint, or the initial state, in memory
    good_step: int | None = None  # the step of the last checkpoint in the store
    if store.exists(STAGE, key, "checkpoint.safetensors"):
        good = store.read_bytes(STAGE, key, "checkpoint.safetensors")
        run = restore(good)
        good_step = run.step
        logger.info(
            "pretrain %s: resuming from the checkpoint at step %d/%d (epoch %d, step %d of %d)",
            key,
            run.step,
            total,
            run.step // steps_per_epoch + 1,
            run.step % steps_per_epoch,
            steps_per_epoch,
        )
    elif rollback:
        good = _checkpoint_bytes(task, opt, scaler, data_gen.get_state(), aug, run, steps_per_epoch, device)

    logger.info(
        "pretrain %s: %s on %s, %d images, %d epochs x %d steps, batch %d%s, device %s%s%s",
        key,
        cfg.pretext.name,
        cfg.backbone.name,
        n,
        tc.epochs,
        steps_per_epoch,
        tc.batch_size,
        f" ({shard.world} x {local_batch})" if shard.world > 1 else "",
        device,
        f" ({dtype})" if dtype else "",
        ", compiled" if tc.compile else "",
    )
    task.train()
    t_start = time.perf_counter()
    trained_images = 0
    perm = epoch_data_state = None
    t_epoch = 0.0
    while run.step < total:
        step = run.step
        epoch, i = divmod(step, steps_per_epoch)
        if perm is None or i == 0:  # a new epoch, or the first step after a resume or a rollback
            epoch_data_state = data_gen.get_state()
            perm = torch.randperm(n, generator=data_gen)
            t_epoch, run.epoch_seconds = time.perf_counter() - run.epoch_seconds, 0.0
        lr = lr_at(step, total, warmup, tc.lr * run.lr_scale)
        for g in opt.param_groups:
            g["lr"] = lr
        # this rank's contiguous slice of the global batch (every rank drew the same permutation)
        start = i * tc.batch_size + shard.rank * local_batch
        idx = perm[start : start + local_batch]
        batch = images[idx.to(images.device)] if resident else images[idx].to(device, non_blocking=True)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            out = model(batch, aug)
        loss = out.loss
        # the global batch's loss (identical to the rank's own for losses computed on gathered tensors);
        # reduced before the update so that every rank sees a non-finite loss on any of them
        value = float(distributed.all_reduce_mean(loss.detach()))
        problem = None if math.isfinite(value) else f"non-finite loss ({value})"
        if problem is None:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            task.on_step_end(step, total)
            trained_images += tc.batch_size
            run.step += 1
            run.losses.append(value)
            for k, v in out.logs.items():
                run.logs_sum[k] = run.logs_sum.get(k, 0.0) + float(v)
            if run.step % tc.log_every == 0:
                logger.info(
                    "pretrain %s: epoch %d step %d/%d loss %.4f lr %.2e", key, epoch + 1, run.step, total, value, lr
                )
            if run.step % steps_per_epoch == 0:
                _end_epoch(run, time.perf_counter() - t_epoch, steps_per_epoch)
                seconds = run.history["epoch_seconds"][-1]
                logger.info(
                    "pretrain %s: epoch %d/%d mean loss %.4f (%.1fs, %.0f images/s)",
                    key,
                    epoch + 1,
                    tc.epochs,
                    run.history["epoch_loss"][-1],
                    seconds,
                    steps_per_epoch * tc.batch_size / seconds,
                )
            if _checkpoint_due(run.step, steps_per_epoch, total, tc):
                if not _finite_state(task, opt, device):
                    problem = "non-finite weights after the update"  # never checkpointed: the last good one stays
                elif writer or rollback:
                    if run.step % steps_per_epoch:
                        run.epoch_seconds = time.perf_counter() - t_epoch
                    # the data generator as it was before this epoch's permutation (at a boundary: now)
                    state = data_gen.get_state() if run.step % steps_per_epoch == 0 else epoch_data_state
                    data = _checkpoint_bytes(task, opt, scaler, state, aug, run, steps_per_epoch, device)
                    run.epoch_seconds = 0.0
                    if writer:
                        store.write_bytes(data, STAGE, key, "checkpoint.safetensors")
                    good, good_step = (data if rollback else None), run.step
        if problem is not None:
            where = f"{cfg.pretext.name}: {problem} at step {step} (epoch {epoch + 1}/{tc.epochs}, lr {lr:.3g})"
            kept = (
                f"the last good checkpoint (step {good_step}) is kept in {store.uri_of(STAGE, key)}, and a rerun "
                f"resumes from it"
                if good_step is not None
                else "no checkpoint had been written yet (train.checkpoint_every_steps checkpoints mid-epoch)"
            )
            if not rollback:
                raise TrainingDiverged(
                    f"{where}. Training stopped; {kept}. Lower train.lr or check the data, or set "
                    f"train.on_nonfinite: rollback to go back to the last good state with a lower "
                    f"lr automatically."
                )
            if len(run.rollbacks) >= tc.max_rollbacks:
                raise TrainingDiverged(
                    f"{where}, after {len(run.rollbacks)} rollbacks (train.max_rollbacks="
                    f"{tc.max_rollbacks}) already lowered the lr to {run.lr_scale:g} x train.lr. "
                    f"Training stopped; {kept}. Lower train.lr or check the data."
                )
            events, scale = run.rollbacks, run.lr_scale * tc.rollback_lr_factor
            run = restore(good)
            run.lr_scale = scale
            run.rollbacks = events + [
                {
                    "step": step,
                    "epoch": epoch + 1,
                    "problem": problem,
                    "restored_step": run.step,
                    "lr_scale": scale,
                    "lr": tc.lr * scale,
                }
            ]
            perm = None  # the restored data generator redraws the epoch's permutation
            logger.warning(
                "pretrain %s: %s; rolled back to step %d, lr now %g x train.lr = %.3g (rollback %d of at most %d)",
                key,
                where,
                run.step,
                scale,
                tc.lr * scale,
                len(run.rollbacks),
                tc.max_rollbacks,
            )
            continue
        if run.step % steps_per_epoch == 0 and on_epoch_end is not None:
            on_epoch_end(run.step // steps_per_epoch)
        if on_step is not None:
            on_step(run.step)

    elapsed = time.perf_counter() - t_start
    history = run.history
    history["rollbacks"] = run.rollbacks
    history["images_per_second"] = trained_images / elapsed if trained_images else None
    history["device"] = str(device)
    history["threads"] = torch.get_num_threads()
    history["devices"] = shard.world
    if writer:
        task_cpu = task.to("cpu")
        state = {k: v for k, v in task_cpu.state_dict().items()}
        store.write_bytes(ckpt.encode({"model": state}, {"pretext": cfg.pretext.name}), STAGE, key, "task.safetensors")
        store.write_json(history, STAGE, key, "history.json")
        store.mark_complete(STAGE, key, {"pretext": cfg.pretext.name, "backbone": cfg.backbone.name})
        if store.exists(STAGE, key, "checkpoint.safetensors"):
            store.fs.rm(store.path(STAGE, key, "checkpoint.safetensors"))
    return PretrainOutcome(
        key,
        store.uri_of(STAGE, key),
        False,
        elapsed,
        history["images_per_second"],
        history["epoch_loss"][-1] if history["epoch_loss"] else None,
    )
