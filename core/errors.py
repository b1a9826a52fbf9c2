"""Errors a user can act on. Each message names the problem and the fix; the CLI prints it and
exits non-zero without a traceback."""

from __future__ import annotations

from pretextflow.core.security.redaction import redact


class PretextflowError(Exception):
    """Base class: anything raised as this is shown to the user as-is (no traceback)."""

    exit_code = 2

    def __init__(self, *args):
        # No credential travels inside an error: not in its message, nor in a traceback, a log record
        # or a Prefect state made from it (URL user:password, secret environment values, the storage
        # options of a validated config: core.security.redaction).
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(PretextflowError):
    """A config file or ``--set`` value is invalid."""


class PluginError(PretextflowError):
    """A plugin is unknown, broken, or incompatible with another plugin."""


class DataError(PretextflowError):
    """A data source or the canonical dataset is missing or malformed."""


class StageInputError(PretextflowError):
    """A stage was run alone but an upstream artifact it needs does not exist."""


class VersioningError(PretextflowError):
    """A DVC or git operation failed."""


class LaunchError(PretextflowError):
    """A multi-process pretraining could not start or finish: the rendezvous was unreachable or
    incomplete, or a rank died (after ``train.max_restarts`` restarts) without an error of its own."""


class TrainingDiverged(PretextflowError):
    """Pretraining met a non-finite loss and stopped (or ran out of rollbacks); the last good
    checkpoint is kept. Raised from a training rank, it is re-raised as itself by the launcher."""


class CollapseError(PretextflowError):
    """Pretraining collapsed: the online monitor's RankMe stayed below ``monitor.collapse_rank`` for
    ``monitor.collapse_patience`` checks with ``monitor.stop_on_collapse`` on (``core.training.monitors``).
    Defined here, like ``TrainingDiverged``, so a training rank's collapse is re-raised as itself."""
