"""pretextflow: self-supervised visual features from unlabeled images, as a reproducible pipeline.

The import package maps the repository's top-level folders: ``pretextflow.core`` (``core/``),
``pretextflow.plugins`` (``plugins/``) and ``pretextflow.flows`` (``flows/``).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("pretextflow")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
