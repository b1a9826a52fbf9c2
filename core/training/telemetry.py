"""What the pretraining loop tells the outside while it runs, through its ``EventBus``
(``core.training.events``): progress (at most ~10 events a second: step, epoch, loss, images/s,
ETA) and metrics (every ``train.log_every`` steps: loss, lr, images/s; every epoch: its mean loss
and seconds; the online monitor's results). Only the writing rank (rank 0) gets a bus with sinks.

Nothing here draws a random number or touches a tensor the loop trains: the events read floats
the loop has already computed, so a watched run trains exactly the weights an unwatched one does."""

from __future__ import annotations

import math
import time
from typing import Any

from pretextflow.core.training.events import EventBus, Ticker

STAGE = "pretrain"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class LoopTelemetry:
    """The loop's events: ``start`` once training (re)starts, ``step`` after every step, ``epoch``
    after every epoch, ``monitor`` after every monitor check."""

    def __init__(
        self,
        events: EventBus,
        key: str,
        total: int,
        steps_per_epoch: int,
        batch_size: int,
        epochs: int,
        log_every: int,
    ):
        self.events, self.key, self.total = events, key, total
        self.spe, self.batch_size, self.epochs, self.log_every = steps_per_epoch, batch_size, epochs, log_every
        self.ticker = Ticker(events, STAGE, total, "steps")
        self._mark = (time.perf_counter(), 0)  # (time, step) of the last metrics line: images/s between lines

    def start(self, step: int) -> None:
        """Training starts (or resumes) at ``step``: the first progress event, which also tells the
        live history the key and the run's shape."""
        self.ticker = Ticker(self.events, STAGE, self.total, "steps", start=step)
        self._mark = (time.perf_counter(), step)
        if self.events.sinks:
            self.ticker.emit(
                step,
                key=self.key,
                epoch=min(step // self.spe + 1, self.epochs),
                epochs=self.epochs,
                steps_per_epoch=self.spe,
                batch_size=self.batch_size,
            )

    def step(self, step: int, loss: float, lr: float) -> None:
        """After optimizer step ``step`` (1-based: steps done) with ``loss`` at learning rate ``lr``."""
        if not self.events.sinks:
            return
        if step % self.log_every == 0:
            now = time.perf_counter()
            t, s = self._mark
            speed = (step - s) * self.batch_size / (now - t) if step > s and now > t else None
            values = {f"{STAGE}/loss": loss, f"{STAGE}/lr": lr}
            if speed is not None:
                values[f"{STAGE}/images_per_s"] = speed
            self.events.emit("metrics", STAGE, step, **values)
            self._mark = (now, step)
        if self.ticker.due(step):
            rate = self.ticker.rate(step)
            self.ticker.emit(
                step,
                key=self.key,
                epoch=min((step - 1) // self.spe + 1, self.epochs),
                epochs=self.epochs,
                loss=loss,
                images_per_s=rate * self.batch_size if rate else None,
            )

    def epoch(self, step: int, epoch: int, loss: float, seconds: float, logs: dict[str, float]) -> None:
        """Epoch ``epoch`` (1-based) ended at ``step`` with mean ``loss``, in ``seconds``; ``logs``:
        the task's own per-epoch means."""
        if not self.events.sinks:
            return
        values = {f"{STAGE}/epoch_loss": loss, f"{STAGE}/epoch_seconds": seconds, f"{STAGE}/epoch": float(epoch)}
        values.update({f"{STAGE}/{k}": float(v) for k, v in logs.items()})
        self.events.emit("metrics", STAGE, step, **values)

    def monitor(self, step: int, result: dict[str, Any]) -> None:
        """The online monitor's result after ``step``: ``monitor/knn_top1``, ``monitor/rankme``."""
        values = {f"monitor/{k}": float(v) for k, v in result.items() if _number(v)}
        if values and self.events.sinks:
            self.events.emit("metrics", STAGE, step, **values)


def replay_history(events: EventBus, history: dict[str, Any], log_every: int, steps_per_epoch: int) -> None:
    """A finished multi-process run's ``history.json`` as ``metrics`` events (its ranks had their
    own bus: this one's loggers hear of it afterwards): the step loss every ``log_every`` steps,
    each epoch's loss and seconds, each monitor check. Sinks that wrote during the run
    (``skip_replay``: the live history) are left out."""
    bus = EventBus([s for s in events.sinks if not getattr(s, "skip_replay", False)])
    if not bus.sinks:
        return
    for i, loss in enumerate(history.get("step_loss", []), 1):
        if i % log_every == 0:
            bus.emit("metrics", STAGE, i, **{f"{STAGE}/loss": loss})
    for e, (loss, seconds) in enumerate(zip(history["epoch_loss"], history["epoch_seconds"], strict=False), 1):
        values = {f"{STAGE}/epoch_loss": loss, f"{STAGE}/epoch_seconds": seconds, f"{STAGE}/epoch": float(e)}
        bus.emit("metrics", STAGE, e * steps_per_epoch, **values)
    for record in history.get("monitor", []):
        values = {f"monitor/{k}": float(v) for k, v in record.items() if k != "epoch" and _number(v)}
        if values:
            bus.emit("metrics", STAGE, record["epoch"] * steps_per_epoch, **values)
