"""pretextflow plugin: the ``denoising`` pretext task (a denoising autoencoder)."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("pretextflow-denoising")
except _metadata.PackageNotFoundError:  # not installed: `pip install -e .`
    __version__ = "0.0.0"
