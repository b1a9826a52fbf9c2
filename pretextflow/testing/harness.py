"""Running checks: each in isolation from the others, prerequisites, failure messages."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pretextflow.testing.results import FAIL, PASS, SKIP, CheckResult, _Fail, _Skip

# the kit's own modules: a traceback frame in one of them is the kit's, not the plugin's
_KIT_DIR = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Restore the process-wide state the checks (and the pipeline's training loop) change."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    np_state = np.random.get_state()
    benchmark = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            np.random.set_state(np_state)
            torch.backends.cudnn.benchmark = benchmark
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """What the training loop does on the CPU (``core.train.configure_runtime``): seeded global
    RNGs and deterministic algorithms (restored afterwards; CUDA runs without them)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _in_kit(path: str) -> bool:
    """Whether ``path`` (absolute) is a module of this kit."""
    return os.path.dirname(path) == _KIT_DIR


def _where(exc: BaseException) -> str:
    """The innermost frame of the traceback outside torch and this kit: usually the plugin's line."""
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not _in_kit(path) and not path.startswith(torch_dir):
            return f" (at {_short(path)}:{frame.lineno})"
    return ""


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def _run(
    checks: list[tuple[str, Callable[[], str | None], tuple[str, ...]]], only: Sequence[str] | None = None
) -> list[CheckResult]:
    results: dict[str, CheckResult] = {}
    for name, fn, needs in checks:
        if only is not None and name not in only:
            continue
        missing = [n for n in needs if n in results and not results[n].passed]
        if missing:
            results[name] = CheckResult(name, SKIP, f"needs {', '.join(missing)} to pass")
            continue
        try:
            with _isolated():
                detail = fn() or ""
            results[name] = CheckResult(name, PASS, detail)
        except _Skip as exc:
            results[name] = CheckResult(name, SKIP, str(exc))
        except _Fail as exc:
            results[name] = CheckResult(name, FAIL, str(exc))
        except Exception as exc:  # the plugin raised: that is this check's failure, with the plugin's line
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            results[name] = CheckResult(name, FAIL, f"raised {type(exc).__name__}: {message}{_where(exc)}")
    return list(results.values())
