"""A workspace: a folder that holds a dataset version and runs. It is a git repository with DVC
initialised, a ``data/`` folder tracked by ``data.dvc``, an artifact store and a DVC remote.
This repository is itself one; ``pretextflow init DIR`` makes a new one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pretextflow.core.errors import PretextflowError

DEFAULT_REMOTE_DIR = ".dvc-remote"  # the default DVC remote: a local folder inside the workspace


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, path: str | Path | None = None) -> Workspace:
        root = Path(path or os.environ.get("PRETEXTFLOW_WORKSPACE") or os.getcwd()).resolve()
        return cls(root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def data_dvc(self) -> Path:
        return self.root / "data.dvc"

    @property
    def lock_path(self) -> Path:
        return self.root / ".pretextflow.lock"

    def store_uri(self, uri: str) -> str:
        """Store URIs without a protocol are paths relative to the workspace."""
        if "://" in uri or uri.startswith("/"):
            return uri
        return str(self.root / uri)

    def require_initialised(self) -> None:
        if not (self.root / ".dvc").is_dir():
            raise PretextflowError(
                f"{self.root} is not a pretextflow workspace (no .dvc/ folder). "
                f"Run `pretextflow init {self.root}` or pass --workspace DIR."
            )
