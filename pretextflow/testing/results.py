"""What a check reports: its :class:`CheckResult`, and the verdicts a check raises to give one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    @property
    def skipped(self) -> bool:
        return self.status == SKIP

    def line(self) -> str:
        return f"{self.status.upper():<4}  {self.name:<12} {self.detail}".rstrip()


class ConformanceError(AssertionError):
    """Raised by :func:`assert_conforms`; its message lists every failed check."""


class _Fail(Exception):
    """A check's verdict: the contract point is broken, with the reason and the fix."""


class _Skip(Exception):
    """A check cannot run (its input is missing); another check reports the cause."""


def format_results(results: Sequence[CheckResult]) -> str:
    lines = [r.line() for r in results]
    n = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    lines.append(f"{n[PASS]} passed, {n[FAIL]} failed, {n[SKIP]} skipped")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.6g}"
