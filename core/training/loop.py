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
from pretextflow.core.data.shards import ShardedArray
from pretextflow.core.errors import CollapseError, ConfigError, TrainingDiverged
from pretextflow.core.registry.registry import Registry
from pretextflow.core.security import credentials
from pretextflow.core.store import ArtifactStore
from pretextflow.core.toolkit import collectives as distributed
from pretextflow.core.toolkit.augment import Augmenter, content_fractions
from pretextflow.core.toolkit.schedules import lr_at
from pretextflow.core.training import checkpoint as ckpt
from pretextflow.core.training import launch
from pretextflow.core.training.events import EventBus
from pretextflow.core.training.model import amp_dtype, build_backbone, build_task, configure_runtime, select_device
from pretextflow.core.training.monitors import OnlineMonitor
from pretextflow.core.training.telemetry import LoopTelemetry, replay_history

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


def pretrain(
    cfg: RunConfig,
    dataset: Dataset,
    store: ArtifactStore,
    key: str,
    registry: Registry,
    logger: logging.Logger | logging.LoggerAdapter = log,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    events: EventBus | None = None,
) -> PretrainOutcome:
    """Train ``cfg.pretext`` on ``cfg.backbone`` over the dataset's training images (labels unused).

    Writes ``pretrain/<key>/{task.safetensors, history.json, _COMPLETE}`` and, every
    ``train.checkpoint_every`` epochs and every ``train.checkpoint_every_steps`` steps,
    ``checkpoint.safetensors`` (atomically: written aside, then renamed), from which a restarted run
    resumes, mid-epoch included, with the weights an uninterrupted run would have had. A non-finite
    loss stops the run, or rolls it back to the last good state with a lower lr (``train.on_nonfinite``).
    With ``train.devices`` x ``train.nodes`` > 1 the loop runs in that many processes, started by
    PyTorch's elastic agent (``core.training.launch``). ``events``: where
    progress and metrics go while it runs (``core.training.telemetry``; rank 0 only)."""
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
    events = events if events is not None else EventBus()
    if cfg.train.devices * cfg.train.nodes > 1:
        return _pretrain_multiprocess(cfg, dataset, store, key, logger, events)
    return _train(
        cfg, dataset, store, key, registry, logger, on_epoch_end, distributed.Shard(), on_step=on_step, events=events
    )


def _pretrain_multiprocess(
    cfg: RunConfig,
    dataset: Dataset,
    store: ArtifactStore,
    key: str,
    logger: logging.Logger | logging.LoggerAdapter,
    events: EventBus,
) -> PretrainOutcome:
    """Launch ``train.devices`` processes on this node (this node's part of ``train.nodes``); they write
    the artifact, we read it. Rank
    0 shows the progress and writes the live history itself (``core.training.rank``); the metrics
    reach this process's bus (its loggers) from the history once the ranks are done."""
    tc = cfg.train
    device = select_device(tc.device)
    reopen = _multiprocess_inputs(tc, dataset, store, device)
    threads = (tc.threads or max(1, (os.cpu_count() or 1) // tc.devices)) if device.type == "cpu" else tc.threads
    topo = launch.topology(tc, key)
    logger.info(
        "pretrain %s: %d node(s) x %d processes (%s), global batch %d = %d x %d, %s threads each",
        key,
        tc.nodes,
        tc.devices,
        launch.backend_for(device.type),
        tc.batch_size,
        topo.world,
        tc.batch_size // topo.world,
        threads,
    )
    t0 = time.perf_counter()
    launch.launch(
        topo,
        device.type,
        {
            "config": cfg.model_dump(mode="json"),
            "key": key,
            "threads": threads,
            # credentials by reference (the ranks inherit the environment): no secret in the payload file
            "data": [credentials.protect_uri(reopen[0]), reopen[1], credentials.protect_options(reopen[2])],
            "store": [credentials.protect_uri(store.uri), credentials.protect_options(store.storage_options)],
            "events": {"run_id": events.run_id, "watched": bool(events.sinks)},
        },
    )
    hist = store.read_json(STAGE, key, "history.json")
    replay_history(events, hist, tc.log_every, len(hist["step_loss"]) // max(1, len(hist["epoch_loss"])))
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


def _multiprocess_inputs(tc, dataset: Dataset, store: ArtifactStore, device: torch.device) -> tuple:
    """What the rank processes open (the dataset's ``reopen_args``), once a multi-process run is
    possible here: enough CUDA devices, a store and a dataset every process can reach."""
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
    return reopen


def rank_main(shard: distributed.Shard, payload: dict, events: EventBus | None = None) -> None:
    """One rank of a multi-process run (a new process: everything is rebuilt from plain data);
    ``events``: rank 0's bus (``core.training.rank`` builds it), None on the others."""
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
    logger = rank_log if shard.rank == 0 else _SILENT
    _train(cfg, dataset, store, payload["key"], get_registry(), logger, None, shard, events=events)


_SILENT = logging.getLogger("pretextflow.train.silent")


_SILENT.disabled = True


def _device(tc, shard: distributed.Shard) -> torch.device:
    """The device this process trains on: with several CUDA processes, the rank's own GPU."""
    device = select_device(tc.device)
    if device.type == "cuda" and shard.world > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # the rank's LOCAL_RANK (core.training.rank)
    return device


def _build_model(
    cfg: RunConfig, meta: dict, registry: Registry, shard: distributed.Shard, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """(task, the module the loop calls, channels-last): the task built and placed on the device,
    converted / compiled as configured, and wrapped in DDP when there are several processes."""
    tc = cfg.train
    backbone = build_backbone(cfg, meta, registry, seed=cfg.seed)
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
    return task, model, channels_last


@dataclass
class _Batches:
    """The training images, placed for the device, and how they are cut into this rank's batches."""

    images: torch.Tensor | ShardedArray
    resident: bool  # on the training device as a whole (else copied batch by batch)
    channels_last: bool
    device: torch.device
    batch_size: int  # the global batch
    local_batch: int  # this rank's share of it
    rank: int
    steps_per_epoch: int
    extents: torch.Tensor | None = None  # (n, 2) content (h, w) fractions of the canvas, on the device

    @property
    def n(self) -> int:
        """The number of training images."""
        return len(self.images)

    def rows(self, perm: torch.Tensor, i: int) -> torch.Tensor:
        """This rank's contiguous slice of step ``i``'s global batch (every rank drew the same permutation)."""
        start = i * self.batch_size + self.rank * self.local_batch
        return perm[start : start + self.local_batch]

    def extent(self, perm: torch.Tensor, i: int) -> torch.Tensor | None:
        """The extents of the images of :meth:`get`'s batch (None: every image fills its canvas)."""
        if self.extents is None:
            return None
        return self.extents[self.rows(perm, i).to(self.extents.device)]

    def get(self, perm: torch.Tensor, i: int) -> torch.Tensor:
        """This rank's batch for step ``i`` of the epoch with permutation ``perm``, on the device."""
        idx = self.rows(perm, i)
        images = self.images
        if isinstance(images, ShardedArray):  # gathered from the memory-mapped shards, batch by batch
            batch = torch.from_numpy(images.take(idx.numpy()))
            if self.device.type == "cuda":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
        elif self.resident:
            batch = images[idx.to(images.device)]
        else:
            batch = images[idx].to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch


def _image_tensor(dataset: Dataset, tc, device: torch.device) -> torch.Tensor | ShardedArray:
    """The training images (the first ``train.max_train_samples``) as a CPU tensor."""
    images = dataset.train_images
    if tc.max_train_samples is not None:  # a view: the shards (memory maps) cut short, nothing read
        images = (
            images.head(tc.max_train_samples) if isinstance(images, ShardedArray) else images[: tc.max_train_samples]
        )
    if isinstance(images, ShardedArray):
        return images  # several shards: never loaded whole (see _Batches.get)
    if isinstance(images, np.memmap) and device.type == "cpu":
        # train straight from the memory-mapped file: its pages are the only copy in RAM (shared with
        # the OS page cache, and with the probe stage's reads); batches are gathered from it. Nothing
        # writes to it, so torch's warning about a read-only buffer does not apply.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(images)
    return torch.from_numpy(np.array(images))  # one in-memory copy, then moved to the device


def _place_images(
    dataset: Dataset, tc, shard: distributed.Shard, device: torch.device, channels_last: bool
) -> _Batches:
    """Check that a global batch fits in the images, and put them where batches are drawn from."""
    images = _image_tensor(dataset, tc, device)
    n = len(images)
    if (
        isinstance(images, ShardedArray)
        and device.type == "cuda"
        and images.nbytes < 0.25 * torch.cuda.mem_get_info(device)[0]
    ):
        images = torch.from_numpy(np.asarray(images))  # small enough to live on the GPU whole
    steps_per_epoch = n // tc.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} is larger than the {n} training images. Lower train.batch_size."
        )
    local_batch = tc.batch_size // shard.world
    resident = isinstance(images, torch.Tensor) and (
        device.type == "cpu" or images.numel() < 0.25 * torch.cuda.mem_get_info(device)[0]
    )
    if resident:
        images = images.to(device)  # on a GPU: the whole dataset lives on the device, no copies per step
    elif device.type == "cuda" and isinstance(images, torch.Tensor):
        images = images.pin_memory()  # copied batch by batch with non_blocking transfers
    extents = _train_extents(dataset, n, int(images.shape[-1]), device)
    return _Batches(
        images, resident, channels_last, device, tc.batch_size, local_batch, shard.rank, steps_per_epoch, extents
    )


def _train_extents(dataset: Dataset, n: int, side: int, device: torch.device) -> torch.Tensor | None:
    """The first ``n`` training images' content extents (``Dataset.train_extents``: (h, w) px, centred on
    the canvas) as fractions of the canvas side, on the device; None when the images fill their canvas."""
    extents = dataset.train_extents
    if extents is None:
        return None
    return content_fractions(np.asarray(extents[:n]), side, device)


def _check_image_size(dataset: Dataset, size: int, logger) -> None:
    """Warn (once per run) when ``train.image_size`` is larger than the stored images: views are upsampled."""
    stored = dataset.image_size
    if size > stored:
        logger.warning(
            "pretrain: train.image_size=%d is larger than the %d px the dataset %r stores: every view is "
            "upsampled (no detail is gained). Ingest at a larger size, or lower train.image_size.",
            size,
            stored,
            dataset.name,
        )


def _optimizer(task: torch.nn.Module, tc) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the trainable parameters, without weight decay on norms and biases."""
    decay, no_decay = [], []
    for p in task.parameters():
        if p.requires_grad:  # EMA teachers and momentum encoders are updated by the task, not the optimizer
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=tc.lr)


@dataclass
class _Loop:
    """One process's training loop: what ``_setup`` built (fixed for the run) and the moving parts."""

    cfg: RunConfig
    store: ArtifactStore
    key: str
    logger: logging.Logger | logging.LoggerAdapter
    shard: distributed.Shard
    state: ckpt.TrainingState  # task, optimizer, scaler, generators: what a checkpoint holds
    model: torch.nn.Module  # the task, or its DDP wrapper
    dtype: torch.dtype | None  # autocast's, None without AMP
    batches: _Batches
    total: int  # optimizer steps in the run
    warmup: int  # warm-up steps
    run: _Progress = field(default_factory=_Progress)
    good: bytes | None = None  # rollback mode: the last good checkpoint, or the initial state, in memory
    good_step: int | None = None  # the step of the last checkpoint in the store
    perm: torch.Tensor | None = None  # the current epoch's permutation (None: redraw it)
    epoch_data_state: torch.Tensor | None = None  # the data generator before that permutation
    t_epoch: float = 0.0  # perf_counter at the (virtual) start of the current epoch
    trained_images: int = 0
    telemetry: LoopTelemetry | None = None  # progress and metrics events (a bus with sinks on rank 0 only)
    monitor: OnlineMonitor | None = None  # monitor.every_epochs > 0, on rank 0

    @property
    def tc(self):
        """The run's ``train`` config."""
        return self.cfg.train

    @property
    def writer(self) -> bool:
        """Whether this process writes checkpoints, history and weights (only rank 0 does)."""
        return self.shard.rank == 0

    @property
    def rollback(self) -> bool:
        """Whether a non-finite loss rolls the run back (else it stops it)."""
        return self.tc.on_nonfinite == "rollback"

    def snapshot(self, data_state: torch.Tensor) -> bytes:
        """The checkpoint bytes of the current state and progress, saving ``data_state`` as the data generator's."""
        return self.state.to_bytes(data_state, self.run.info(self.batches.steps_per_epoch))

    def restore(self, data: bytes) -> _Progress:
        """Load checkpoint bytes into the modules and generators; return the progress they hold."""
        return _Progress.from_info(self.state.restore(data))

    def resume(self) -> None:
        """Continue from the store's checkpoint if there is one; in rollback mode keep the start as the good state."""
        spe = self.batches.steps_per_epoch
        if self.store.exists(STAGE, self.key, "checkpoint.safetensors"):
            self.good = self.store.read_bytes(STAGE, self.key, "checkpoint.safetensors")
            self.run = self.restore(self.good)
            self.good_step = self.run.step
            self.logger.info(
                "pretrain %s: resuming from the checkpoint at step %d/%d (epoch %d, step %d of %d)",
                self.key,
                self.run.step,
                self.total,
                self.run.step // spe + 1,
                self.run.step % spe,
                spe,
            )
        elif self.rollback:
            self.good = self.snapshot(self.state.data_gen.get_state())

    def log_start(self) -> None:
        """Log what is trained, on what, and how."""
        tc, world = self.tc, self.shard.world
        self.logger.info(
            "pretrain %s: %s on %s, %d images, %d epochs x %d steps, batch %d%s, device %s%s%s",
            self.key,
            self.cfg.pretext.name,
            self.cfg.backbone.name,
            self.batches.n,
            tc.epochs,
            self.batches.steps_per_epoch,
            tc.batch_size,
            f" ({world} x {self.batches.local_batch})" if world > 1 else "",
            self.state.device,
            f" ({self.dtype})" if self.dtype else "",
            ", compiled" if tc.compile else "",
        )

    def step(self) -> bool:
        """One training step; False if a non-finite loss or state rolled the run back instead."""
        step = self.run.step
        epoch, i = divmod(step, self.batches.steps_per_epoch)
        if self.perm is None or i == 0:  # a new epoch, or the first step after a resume or a rollback
            self._begin_epoch()
        lr = self._set_lr(step)
        out = self._forward(self.batches.get(self.perm, i), self.batches.extent(self.perm, i))
        loss = out.loss
        # the global batch's loss (identical to the rank's own for losses computed on gathered tensors);
        # reduced before the update so that every rank sees a non-finite loss on any of them
        value = float(distributed.all_reduce_mean(loss.detach()))
        problem = None if math.isfinite(value) else f"non-finite loss ({value})"
        if problem is None:
            self._update(loss, step)
            self._record(value, out.logs, epoch, lr)
            self._monitor_if_due()  # before the epoch's checkpoint: a collapsed state never replaces a good one
            problem = self._checkpoint_if_due()
        if problem is not None:
            self._handle_nonfinite(problem, step, epoch, lr)
            return False
        return True

    def _begin_epoch(self) -> None:
        """Draw the epoch's permutation (remembering the generator before it) and start its clock."""
        self.epoch_data_state = self.state.data_gen.get_state()
        self.perm = torch.randperm(self.batches.n, generator=self.state.data_gen)
        self.t_epoch, self.run.epoch_seconds = time.perf_counter() - self.run.epoch_seconds, 0.0

    def _set_lr(self, step: int) -> float:
        """Set the scheduled lr (scaled down by any rollbacks) on every parameter group; return it."""
        lr = lr_at(step, self.total, self.warmup, self.tc.lr * self.run.lr_scale)
        for g in self.state.opt.param_groups:
            g["lr"] = lr
        return lr

    def _forward(self, batch: torch.Tensor, extent: torch.Tensor | None = None):
        """The task's output (loss and logs) for a batch, under autocast when AMP is on. The task gets
        the batch at the model's input size; its views are cropped from the stored images, inside
        their content (``extent``): ``Augmenter.prepare_batch``."""
        aug = self.state.aug
        images = aug.prepare_batch(batch, extent)
        try:
            with torch.autocast(self.state.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext():
                return self.model(images, aug)
        finally:
            aug.clear_batch()

    def _update(self, loss: torch.Tensor, step: int) -> None:
        """Backpropagate the loss, step the optimizer (through the AMP scaler) and let the task update itself."""
        opt, scaler = self.state.opt, self.state.scaler
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        self.state.task.on_step_end(step, self.total)

    def _record(self, value: float, logs: dict, epoch: int, lr: float) -> None:
        """Count the finished step (its loss and logs) in the progress, log it, and close a finished epoch."""
        run, tc = self.run, self.tc
        self.trained_images += tc.batch_size
        run.step += 1
        run.losses.append(value)
        for k, v in logs.items():
            run.logs_sum[k] = run.logs_sum.get(k, 0.0) + float(v)
        if run.step % tc.log_every == 0:
            self.logger.info(
                "pretrain %s: epoch %d step %d/%d loss %.4f lr %.2e",
                self.key,
                epoch + 1,
                run.step,
                self.total,
                value,
                lr,
            )
        if self.telemetry is not None:
            self.telemetry.step(run.step, value, lr)
        if run.step % self.batches.steps_per_epoch == 0:
            self._close_epoch(epoch)

    def _close_epoch(self, epoch: int) -> None:
        """Move the epoch's sums into the history and log its mean loss and speed."""
        spe = self.batches.steps_per_epoch
        _end_epoch(self.run, time.perf_counter() - self.t_epoch, spe)
        seconds = self.run.history["epoch_seconds"][-1]
        self.logger.info(
            "pretrain %s: epoch %d/%d mean loss %.4f (%.1fs, %.0f images/s)",
            self.key,
            epoch + 1,
            self.tc.epochs,
            self.run.history["epoch_loss"][-1],
            seconds,
            spe * self.tc.batch_size / seconds,
        )
        if self.telemetry is not None:
            h = self.run.history
            self.telemetry.epoch(self.run.step, epoch + 1, h["epoch_loss"][-1], seconds, h["epoch_logs"][-1])

    def _monitor_if_due(self) -> None:
        """At an epoch's end, when the online monitor is due: measure the backbone, record and emit
        the result, and stop a collapsing run (``CollapseError``, naming the last good checkpoint)."""
        mon, spe = self.monitor, self.batches.steps_per_epoch
        if mon is None or self.run.step % spe:
            return
        epoch = self.run.step // spe
        if not mon.due(epoch, epoch == self.tc.epochs):
            return
        result = mon.evaluate(self.state.task.backbone, epoch)
        self.run.history["monitor"] = list(mon.history)  # in the next checkpoint too: a resume keeps them
        if self.telemetry is not None:
            self.telemetry.monitor(self.run.step, result)
        try:
            mon.check(result, epoch)
        except CollapseError as exc:
            raise CollapseError(f"{exc} {self._kept()}.") from None

    def _kept(self) -> str:
        """What is left to resume from: the last good checkpoint, if one was written."""
        if self.good_step is None:
            return "No checkpoint had been written yet (train.checkpoint_every_steps checkpoints mid-epoch)"
        return (
            f"The last good checkpoint (step {self.good_step}) is kept in {self.store.uri_of(STAGE, self.key)}, "
            f"and a rerun resumes from it"
        )

    def _checkpoint_if_due(self) -> str | None:
        """Checkpoint if the schedule says so; return the problem if the state is not finite (then nothing is saved)."""
        run, spe = self.run, self.batches.steps_per_epoch
        if not _checkpoint_due(run.step, spe, self.total, self.tc):
            return None
        if not _finite_state(self.state.task, self.state.opt, self.state.device):
            return "non-finite weights after the update"  # never checkpointed: the last good one stays
        if self.writer or self.rollback:
            if run.step % spe:
                run.epoch_seconds = time.perf_counter() - self.t_epoch
            # the data generator as it was before this epoch's permutation (at a boundary: now)
            data = self.snapshot(self.state.data_gen.get_state() if run.step % spe == 0 else self.epoch_data_state)
            run.epoch_seconds = 0.0
            if self.writer:
                self.store.write_bytes(data, STAGE, self.key, "checkpoint.safetensors")
            self.good, self.good_step = (data if self.rollback else None), run.step
        return None

    def _handle_nonfinite(self, problem: str, step: int, epoch: int, lr: float) -> None:
        """Stop the run (``TrainingDiverged``) or, with ``train.on_nonfinite: rollback``, roll it back."""
        tc = self.tc
        where = f"{self.cfg.pretext.name}: {problem} at step {step} (epoch {epoch + 1}/{tc.epochs}, lr {lr:.3g})"
        kept = self._kept()
        kept = kept[0].lower() + kept[1:]
        if not self.rollback:
            raise TrainingDiverged(
                f"{where}. Training stopped; {kept}. Lower train.lr or check the data, or set "
                f"train.on_nonfinite: rollback to go back to the last good state with a lower "
                f"lr automatically."
            )
        if len(self.run.rollbacks) >= tc.max_rollbacks:
            raise TrainingDiverged(
                f"{where}, after {len(self.run.rollbacks)} rollbacks (train.max_rollbacks="
                f"{tc.max_rollbacks}) already lowered the lr to {self.run.lr_scale:g} x train.lr. "
                f"Training stopped; {kept}. Lower train.lr or check the data."
            )
        self._roll_back(problem, step, epoch, where)

    def _roll_back(self, problem: str, step: int, epoch: int, where: str) -> None:
        """Restore the last good state, lower the lr scale by ``train.rollback_lr_factor`` and record the event."""
        tc = self.tc
        events, scale = self.run.rollbacks, self.run.lr_scale * tc.rollback_lr_factor
        self.run = self.restore(self.good)
        self.run.lr_scale = scale
        self.run.rollbacks = events + [
            {
                "step": step,
                "epoch": epoch + 1,
                "problem": problem,
                "restored_step": self.run.step,
                "lr_scale": scale,
                "lr": tc.lr * scale,
            }
        ]
        self.perm = None  # the restored data generator redraws the epoch's permutation
        if self.telemetry is not None:
            self.telemetry.start(self.run.step)  # the bars and the ETA go back with it
        self.logger.warning(
            "pretrain %s: %s; rolled back to step %d, lr now %g x train.lr = %.3g (rollback %d of at most %d)",
            self.key,
            where,
            self.run.step,
            scale,
            tc.lr * scale,
            len(self.run.rollbacks),
            tc.max_rollbacks,
        )

    def final_history(self, elapsed: float) -> dict:
        """The history to write: the epochs' records plus the rollbacks, speed and where it ran."""
        history = self.run.history
        history["rollbacks"] = self.run.rollbacks
        history["images_per_second"] = self.trained_images / elapsed if self.trained_images else None
        history["device"] = str(self.state.device)
        history["threads"] = torch.get_num_threads()
        history["devices"] = self.shard.world
        if self.monitor is not None:
            history["monitor"] = self.monitor.history
        return history

    def write_outputs(self, history: dict) -> None:
        """On the writing rank: the final weights, the history, the completion marker; drop the checkpoint."""
        if not self.writer:
            return
        store, key, cfg = self.store, self.key, self.cfg
        task_cpu = self.state.task.to("cpu")
        state = {k: v for k, v in task_cpu.state_dict().items()}
        store.write_bytes(ckpt.encode({"model": state}, {"pretext": cfg.pretext.name}), STAGE, key, "task.safetensors")
        store.write_json(history, STAGE, key, "history.json")
        store.mark_complete(STAGE, key, {"pretext": cfg.pretext.name, "backbone": cfg.backbone.name})
        if store.exists(STAGE, key, "checkpoint.safetensors"):
            store.fs.rm(store.path(STAGE, key, "checkpoint.safetensors"))


def _setup(
    cfg: RunConfig,
    dataset: Dataset,
    store: ArtifactStore,
    key: str,
    registry: Registry,
    logger: logging.Logger | logging.LoggerAdapter,
    shard: distributed.Shard,
    events: EventBus | None = None,
) -> _Loop:
    """Build the loop: device, model, images, optimizer, AMP and generators, in this order (the
    model's initialisation draws from the freshly seeded torch generator), then what watches it:
    the telemetry and the online monitor (rank 0; they draw nothing from those generators)."""
    tc = cfg.train
    device = _device(tc, shard)
    configure_runtime(cfg.seed, device, tc.threads)
    task, model, channels_last = _build_model(cfg, dataset.meta, registry, shard, device)
    size = task.backbone.image_size  # train.image_size, else the stored size
    _check_image_size(dataset, size, logger)
    batches = _place_images(dataset, tc, shard, device, channels_last)
    opt = _optimizer(task, tc)
    dtype = amp_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    # views come out at the model's size, cropped from the stored images (Augmenter.prepare_batch)
    aug = Augmenter(cfg.seed + 1, device, shard=(shard.rank, shard.world), out_size=size)
    state = ckpt.TrainingState(task, opt, scaler, data_gen, aug, device)
    total = tc.epochs * batches.steps_per_epoch
    warmup = int(round(tc.warmup_epochs * batches.steps_per_epoch))
    loop = _Loop(cfg, store, key, logger, shard, state, model, dtype, batches, total, warmup)
    if shard.rank == 0:
        spe = batches.steps_per_epoch
        loop.telemetry = LoopTelemetry(events or EventBus(), key, total, spe, tc.batch_size, tc.epochs, tc.log_every)
        if cfg.monitor.every_epochs > 0:
            loop.monitor = OnlineMonitor(
                cfg.monitor, dataset, cfg.seed, device, size, method=cfg.pretext.name, logger=logger
            )
    return loop


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
    events: EventBus | None = None,
) -> PretrainOutcome:
    """The loop, in one process or as one rank of several (``shard``). ``on_epoch_end(epochs done)``
    and ``on_step(steps done)`` are called after the epoch's / step's checkpoint, if one was due."""
    loop = _setup(cfg, dataset, store, key, registry, logger, shard, events)
    loop.resume()
    if loop.monitor is not None:  # the checks before the checkpoint count towards collapse_patience
        loop.monitor.history = list(loop.run.history.get("monitor", []))
    loop.log_start()
    if loop.telemetry is not None:
        loop.telemetry.start(loop.run.step)
    loop.state.task.train()
    t_start = time.perf_counter()
    spe = loop.batches.steps_per_epoch
    while loop.run.step < loop.total:
        if not loop.step():
            continue  # rolled back: the next step starts from the restored state
        if loop.run.step % spe == 0 and on_epoch_end is not None:
            on_epoch_end(loop.run.step // spe)
        if on_step is not None:
            on_step(loop.run.step)
    elapsed = time.perf_counter() - t_start
    history = loop.final_history(elapsed)
    loop.write_outputs(history)
    return PretrainOutcome(
        key,
        store.uri_of(STAGE, key),
        False,
        elapsed,
        history["images_per_second"],
        history["epoch_loss"][-1] if history["epoch_loss"] else None,
    )
