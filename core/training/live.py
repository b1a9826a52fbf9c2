"""The live history of a pretraining: ``pretrain/<key>/history.live.jsonl`` in the artifact store,
appended as the run goes, so a running, crashed or killed run's curve can be read (``history.json``
is written only at the end).

One JSON object a line:

  {"kind": "header", "run_id", "pid", "host", "started", "key", "total_steps", "start_step",
   "steps_per_epoch", "epochs", "batch_size"}     when a process starts (or resumes) training the key
  {"kind": "metrics", "time", "step", "metrics": {name: value}}   one per ``metrics`` event
  {"kind": "end", "time", "status", "error"?}     when the stage ends (completed or failed); a
                                                  killed process writes none

A resumed run appends a new header; readers take the last header and what follows it.

Local store: the file is opened with ``O_APPEND`` and each line is one ``write`` (unbuffered), so
after a SIGKILL the file holds every line written before it, each whole. Remote store (s3://,
memory://...): objects cannot be appended to, so the lines are buffered and the whole file is
rewritten (atomically, ``ArtifactStore.write_bytes``) at most every ``REMOTE_FLUSH_S`` seconds and
when the stage ends: a killed run there loses at most that many seconds of lines."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from pretextflow.core.store import ArtifactStore
from pretextflow.core.training.events import Event

LIVE = "history.live.jsonl"
STAGE = "pretrain"
REMOTE_FLUSH_S = 10.0


def _finite(value: Any) -> Any:
    """JSON without NaN or infinity (a line must parse anywhere): those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _line(record: dict[str, Any]) -> bytes:
    clean = _finite(record)
    return (json.dumps(clean, default=str, allow_nan=False, separators=(",", ":")) + "\n").encode()


class _LocalAppender:
    """``O_APPEND`` and one ``os.write`` per line: whole lines up to the last one, whatever kills us."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, data: bytes) -> None:
        if self.fd is not None:
            os.write(self.fd, data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Rewriter:
    """For stores without append: the whole file, rewritten every ``every_s`` seconds and at close."""

    def __init__(self, store: ArtifactStore, parts: tuple[str, ...], every_s: float = REMOTE_FLUSH_S):
        self.store, self.parts, self.every_s = store, parts, every_s
        self.data = bytearray(store.read_bytes(*parts) if store.exists(*parts) else b"")
        self.flushed = 0.0
        self.dirty = False

    def write(self, data: bytes) -> None:
        self.data += data
        self.dirty = True
        if time.monotonic() - self.flushed >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.dirty:
            self.store.write_bytes(bytes(self.data), *self.parts)
            self.flushed, self.dirty = time.monotonic(), False

    def close(self) -> None:
        self.flush()


def _writer(store: ArtifactStore, key: str):
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(store.fs, LocalFileSystem):
        return _LocalAppender(store.path(STAGE, key, LIVE))
    return _Rewriter(store, (STAGE, key, LIVE))


class LiveHistorySink:
    """Writes the pretraining stage's ``metrics`` events to its live history (see the module).
    Opens the file at the stage's first progress event that names the key (the loop's first one,
    as it starts or resumes), so a stage served from its artifact writes nothing."""

    name = "live history"
    skip_replay = True  # a history replayed after a multi-process run: its ranks wrote this file already

    def __init__(self, store: ArtifactStore, run_id: str | None = None):
        self.store, self.run_id = store, run_id
        self.key: str | None = None
        self._out = None

    def handle(self, event: Event) -> None:
        if event.kind == "run_start":
            self.run_id = event.payload.get("run_id") or self.run_id
        elif event.stage != STAGE:
            if event.kind == "run_end":
                self.close()
        elif event.kind == "progress" and self._out is None and event.payload.get("key"):
            self._open(event.payload)
        elif event.kind == "metrics" and self._out is not None:
            self._out.write(
                _line({"kind": "metrics", "time": event.time, "step": event.step, "metrics": event.payload})
            )
        elif event.kind == "stage_end" and self._out is not None:
            end = {"kind": "end", "time": event.time, "status": event.payload.get("status")}
            if event.payload.get("error"):
                end["error"] = str(event.payload["error"])[:500]
            self._out.write(_line(end))
            self.close()

    def _open(self, p: dict[str, Any]) -> None:
        self.key = p["key"]
        self._out = _writer(self.store, self.key)
        header = {
            "kind": "header",
            "run_id": self.run_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "key": self.key,
            "total_steps": p.get("total"),
            "start_step": p.get("done", 0),
            "steps_per_epoch": p.get("steps_per_epoch"),
            "epochs": p.get("epochs"),
            "batch_size": p.get("batch_size"),
        }
        self._out.write(_line(header))

    def close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.close()


# -- reading -------------------------------------------------------------------------------------
@dataclass
class LiveHistory:
    """The last training segment of a live history: its header, its metrics lines, its end line."""

    header: dict[str, Any] | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    segments: int = 0  # headers seen: 1 + the number of resumes

    def last(self, name: str) -> tuple[int | None, float | None]:
        """(step, value) of the latest line with metric ``name``."""
        for line in reversed(self.lines):
            value = line.get("metrics", {}).get(name)
            if value is not None:
                return line.get("step"), value
        return None, None

    @property
    def step(self) -> int | None:
        steps = [line["step"] for line in self.lines if line.get("step") is not None]
        return max(steps) if steps else (self.header or {}).get("start_step")

    @property
    def updated(self) -> float | None:
        """When the last line was written (the header's start when there is none yet)."""
        times = [r["time"] for r in (*self.lines, *([self.end] if self.end else [])) if r.get("time")]
        return max(times) if times else (self.header or {}).get("started")

    def eta_s(self) -> float | None:
        """Seconds to the last step at this segment's pace so far (None: not known yet)."""
        h, step, now = self.header or {}, self.step, self.updated
        total, start, started = h.get("total_steps"), h.get("start_step") or 0, h.get("started")
        if None in (total, step, now, started) or step <= start or now <= started:
            return None
        return (total - step) * (now - started) / (step - start)


def parse_live(data: bytes) -> LiveHistory:
    """A live history's last segment. Lines that are not whole JSON objects (a write cut short by a
    power loss on a filesystem that does not order it) are skipped."""
    out = LiveHistory()
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("kind")
        if kind == "header":
            out = LiveHistory(header=record, segments=out.segments + 1)
        elif kind == "metrics":
            out.lines.append(record)
        elif kind == "end":
            out.end = record
    return out
