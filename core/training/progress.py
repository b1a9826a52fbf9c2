"""Showing a run's ``progress`` events (``core.training.events``): the progress sink.

In a terminal (stderr is one): rich progress bars on stderr, one per running part of a stage
(ingest's decode and shards, pretraining, the probe's features, probes and supervised runs), each
with its count, ETA and what the stage shows (epoch, loss, images/s). The bars are transient: a
finished part's bar goes, and the stage's own log line says how it went. While bars are shown, the
log handlers that write to that terminal (Prefect's console handler, a plain StreamHandler on
stderr) print through the bars' console, above them: log lines stay whole and bars are not torn.

Anywhere else (CI, a Prefect worker, ``nohup``): plain lines on stderr, per part the first and the
last, and in between at most one every ``progress.every_s`` seconds or every 10%. ``off`` (the
CLI's ``--quiet``): nothing. Only the sink knows how progress looks; the stages only emit events,
at most ~10 a second (``events.Ticker``)."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from pretextflow.core.training.events import Event

MODES = ("auto", "bars", "lines", "off")


def resolve_mode(mode: str, stream: TextIO) -> str:
    """``auto`` -> ``bars`` when ``stream`` is a terminal (rich's own test: a TTY, not TERM=dumb,
    FORCE_COLOR/TTY_COMPATIBLE respected), else ``lines``; the other modes as they are."""
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    from rich.console import Console

    return "bars" if Console(file=stream).is_terminal else "lines"


def format_seconds(seconds: float | None) -> str:
    """``1:02:03``, ``4:05``, ``-`` for unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def describe(event: Event) -> str:
    """What a progress event is about: the stage, and the part of it (``probe features ssl``)."""
    label = event.payload.get("label") or ""
    return f"{event.stage} {label}".strip()


def shown(payload: dict[str, Any]) -> str:
    """The extras a stage sent with its progress, as text: ``epoch 2/10, loss 1.2345, 812 images/s``."""
    parts = []
    if payload.get("epoch") is not None:
        epochs = payload.get("epochs")
        parts.append(f"epoch {payload['epoch']}" + (f"/{epochs}" if epochs else ""))
    if payload.get("loss") is not None:
        parts.append(f"loss {payload['loss']:.4f}")
    if payload.get("images_per_s"):
        parts.append(f"{payload['images_per_s']:.0f} images/s")
    return ", ".join(parts)


@dataclass
class _LineState:
    printed_at: float
    decile: int


class ProgressSink:
    """Bars in a terminal, bounded plain lines elsewhere, or nothing (``mode``: ``MODES``)."""

    name = "progress"

    def __init__(self, mode: str = "auto", every_s: float = 30.0, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.every_s = every_s
        self._lines: dict[tuple[str, str], _LineState] = {}
        self._bars: _Bars | None = None

    def handle(self, event: Event) -> None:
        if self.mode == "off":
            return
        if event.kind == "progress":
            self._progress(event)
        elif event.kind == "stage_end":
            if self._bars is not None:
                self._bars.end_stage(event.stage)
            self._lines = {k: v for k, v in self._lines.items() if k[0] != event.stage}
        elif event.kind == "run_end":
            self.close()

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    def _progress(self, event: Event) -> None:
        p = event.payload
        key = (event.stage, p.get("label") or "")
        done, total = int(p.get("done") or 0), p.get("total")
        if self.mode == "bars":
            if self._bars is None:
                self._bars = _Bars(self.stream)
            self._bars.update(key, describe(event), done, total, p)
        elif self._line_due(key, done, total):
            self._print_line(event, done, total)

    def _line_due(self, key: tuple[str, str], done: int, total: int | None) -> bool:
        """The first line of a part, its last, and in between every ``every_s`` or every 10%."""
        now = time.monotonic()
        decile = int(10 * done / total) if total else 0
        state = self._lines.get(key)
        finished = total is not None and done >= total
        if finished:
            self._lines.pop(key, None)
            return True
        if state is None or now - state.printed_at >= self.every_s or decile > state.decile:
            self._lines[key] = _LineState(now, decile)
            return True
        return False

    def _print_line(self, event: Event, done: int, total: int | None) -> None:
        p = event.payload
        count = f"{done}/{total}" if total is not None else f"{done}"
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        extra = shown(p)
        eta = f", ETA {format_seconds(p.get('eta_s'))}" if p.get("eta_s") is not None and total else ""
        line = f"{time.strftime('%H:%M:%S')} | progress | {describe(event)}: {count} {p.get('unit') or ''}{pct}"
        line = line.rstrip() + (f", {extra}" if extra else "") + eta
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except ValueError:  # the stream was closed under us (a test's capture): nothing to show on
            self.mode = "off"


class _Bars:
    """The rich bars of the running parts, on one console; started with the first bar, stopped
    (and the log handlers given back their terminal) when the last one goes."""

    def __init__(self, stream: TextIO):
        from rich.console import Console

        self.console = Console(file=stream, force_terminal=True)
        self.progress = None
        self.tasks: dict[tuple[str, str], Any] = {}
        self._restore: list = []

    def update(self, key: tuple[str, str], description: str, done: int, total: int | None, p: dict) -> None:
        if self.progress is None:
            self._start()
        fields = {"info": shown(p), "unit": p.get("unit") or "", "eta": format_seconds(p.get("eta_s"))}
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total, completed=done, **fields)
        task = self.tasks[key]
        self.progress.update(task, completed=done, total=total, **fields)
        if total is not None and done >= total:
            self.progress.remove_task(task)
            del self.tasks[key]
            if not self.tasks:
                self.stop()

    def end_stage(self, stage: str) -> None:
        for key in [k for k in self.tasks if k[0] == stage]:
            if self.progress is not None:
                self.progress.remove_task(self.tasks[key])
            del self.tasks[key]
        if not self.tasks:
            self.stop()

    def _start(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        terminal = self.console.file
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
            refresh_per_second=4,
            redirect_stdout=_isatty(sys.stdout),  # a piped stdout (JSON, a report path) stays as it is
        )
        self.progress.start()  # sys.stderr is now rich's proxy: what is written there prints above the bars
        self._restore = _route_terminal_handlers(terminal, self.console)

    def stop(self) -> None:
        self.tasks = {}
        if self.progress is None:
            return
        for restore in reversed(self._restore):
            restore()
        self._restore = []
        self.progress.stop()
        self.progress = None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _handlers() -> list[logging.Handler]:
    """Every handler of every logger in this process (the root's included), each once."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    seen: dict[int, logging.Handler] = {}
    for lg in loggers:
        for h in lg.handlers:
            seen.setdefault(id(h), h)
    return list(seen.values())


class _Through:
    """A file for the log handlers that wrote to the terminal (Prefect's console handler's rich
    console, a StreamHandler) while the bars are shown: each whole line is printed by the bars'
    console, above them, colours kept and not re-wrapped (rich's own proxy would wrap it, and a rich
    console given that proxy would unwrap it back to the terminal)."""

    def __init__(self, console, terminal: TextIO):
        self._console, self._terminal = console, terminal
        self._buffer = ""

    def write(self, text: str) -> int:
        from rich.text import Text

        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._console.print(Text.from_ansi(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            self.write("\n")

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._terminal.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._terminal, "encoding", None) or "utf-8"


def _route_terminal_handlers(terminal: TextIO, console) -> list:
    """Point the log handlers that write to ``terminal`` (a rich console's file, or a
    StreamHandler's stream: Prefect's console handler is the former) through ``console``, the
    bars', which prints above them. Returns the functions that undo it."""
    targets = {id(terminal), id(sys.__stderr__)}
    undo = []
    for handler in _handlers():
        rich_console = getattr(handler, "console", None)
        if (
            rich_console is not None
            and rich_console is not console
            and id(getattr(rich_console, "file", None)) in targets
        ):
            old = rich_console.file
            rich_console.file = _Through(console, old)
            undo.append(lambda c=rich_console, f=old: setattr(c, "file", f))
        elif isinstance(handler, logging.StreamHandler) and id(handler.stream) in targets:
            old = handler.setStream(_Through(console, handler.stream))
            undo.append(lambda h=handler, s=old: h.setStream(s))
    return undo
