"""pretextflow: self-supervised visual features from unlabeled images, as a reproducible pipeline.

The import package maps the repository's top-level folders: ``pretextflow.core`` (``core/``),
``pretextflow.plugins`` (``plugins/``) and ``pretextflow.flows`` (``flows/``).


``pretextflow.run(config)`` runs the pipeline from Python and ``pretextflow.runs(workspace)`` lists
past runs; ``pretextflow.load_backbone(where)`` returns the frozen backbone of a run folder, a manifest or an
export folder as an ``nn.Module`` (images in, features out); see the README, "Use your backbone".
"""

from pretextflow.core.version import __version__


def load_backbone(where, storage_options=None, trust_torchscript=False):
    """The frozen backbone of ``where`` — a run folder (``artifacts/runs/<id>``), its ``manifest.json``,
    or a folder written by ``pretextflow export`` (any fsspec URI) — as an eval-mode ``nn.Module``
    mapping images ``(N, C, H, W)`` (uint8, or float in [0, 1]) to features ``(N, D)``, with the
    normalisation inside and ``requires_grad`` off. ``.info`` describes it (backbone, method, data).
    A TorchScript export runs code when loaded: it loads only with ``trust_torchscript=True``."""
    from pretextflow.core.export.loading import load_backbone as _load

    return _load(where, storage_options, trust_torchscript=trust_torchscript)


def run(config, overrides=None, workspace=".", push=True, quiet=False):
    """Run the whole pipeline for ``config`` (a YAML path, a dict or a ``RunConfig``) in ``workspace``
    and return a :class:`pretextflow.run_api.Run` (``run_id``, ``uri``, ``manifest``, ``metrics``,
    ``report_html``, ``backbone()``). The same Prefect flow as ``pretextflow run``; ``quiet``: no
    progress bars or lines, as its ``--quiet``."""
    from pretextflow.run_api import run as _run

    return _run(config, overrides, workspace, push, quiet)


def runs(workspace=".", store=None):
    """The complete runs of ``workspace``'s artifact store (or of ``store``), oldest first, as ``Run``s."""
    from pretextflow.run_api import runs as _runs

    return _runs(workspace, store)


__all__ = ["__version__", "load_backbone", "run", "runs"]
