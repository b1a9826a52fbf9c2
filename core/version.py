"""The installed pretextflow's version, for core (which never imports the ``pretextflow`` package
above it: that would make every core module depend on the public API's imports)."""

from importlib import metadata as _metadata
from pathlib import Path

try:
    __version__ = _metadata.version("pretextflow")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

SOURCE_DIR = Path(__file__).resolve().parent
"""core's own folder: inside the git checkout the code was run from, when there is one."""
