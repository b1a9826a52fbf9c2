"""The conformance kit: runs a plugin through the pretextflow contracts on tiny data.

In a plugin's own tests::

    from pretextflow.testing import assert_conforms

    def test_conforms():
        assert_conforms("my-task", kind="pretext")      # AssertionError listing every failed check

or from the command line: ``pretextflow plugins check my-task`` (one PASS/FAIL line per check).

Each ``check_*`` function returns one :class:`CheckResult` per check. A check whose prerequisite
failed is reported as skipped (``SKIP``), so a plugin that breaks one contract point fails exactly
that check. Pretext tasks are checked for:

  registered   listed by the plugin registry under its name, with its package and version
  params       ``Params`` defaults validate, an unknown key is rejected, values round-trip via JSON
  forward      a uint8 batch -> ``StepOutput`` with a finite, scalar, differentiable loss
  gradients    the loss sends finite, non-zero gradients into the backbone
  determinism  the same seed gives identical losses over two training steps
  state_dict   the state dict round-trips through the safetensors checkpoint into a fresh instance
               (identical loss afterwards) and holds the backbone's weights under ``backbone.``
  device       ``.to(device)`` moves every tensor, and forward works on each device: on the CPU a
               guard catches tensors created without ``device=`` (they would be on the wrong
               device on a GPU); on CUDA, when present, it really runs there
  pipeline     a short pretrain -> freeze -> probe through the real stages on scikit-learn's digits

Backbones: registered, build, forward (shape ``(N, num_features)``), gradients, determinism,
state_dict, device, pipeline (``rotation`` on the backbone). Dataset formats: registered, options,
scan (a valid ``SourceCatalog``), read (one valid ``DecodedImage`` per entry, in order), determinism
(two scans give the same entries, two reads the same images), chunks (a fresh instance reading any
subset of the entries, in any order, decodes them as the whole read did), pipeline. Loggers:
registered, options, lifecycle (start, log_metrics, log_artifact, end on a fake run in a temporary
folder), end_twice (a second end does nothing), failed_run, pipeline (through an EventBus and a
LoggerSink, closed in time).

The checks run on the CPU in seconds, restore the global RNG and determinism settings they touch,
and write only to a temporary folder and a ``memory://`` artifact store that they delete.
"""

from __future__ import annotations

# The modules: results (CheckResult, the verdicts), harness (running checks in isolation), guard
# (HostTensorGuard, tensor placement), fixtures (tiny data, the pipeline run, registries),
# common_checks (registered, params, state dict), one module per kind (pretext, backbone,
# dataset, logger), and runner (check_plugin, assert_conforms, find_kind). `X as X`: public names that
# are not in __all__ (the CLI imports find_kind).
from pretextflow.testing.backbone import BACKBONE_CHECKS, check_backbone
from pretextflow.testing.dataset import DATASET_CHECKS, check_dataset_format
from pretextflow.testing.fixtures import registry_with
from pretextflow.testing.guard import HostTensorGuard
from pretextflow.testing.logger import LOGGER_CHECKS, check_logger
from pretextflow.testing.pretext import PRETEXT_CHECKS, check_pretext_task
from pretextflow.testing.results import FAIL as FAIL
from pretextflow.testing.results import PASS as PASS
from pretextflow.testing.results import SKIP as SKIP
from pretextflow.testing.results import CheckResult, ConformanceError, format_results
from pretextflow.testing.runner import assert_conforms, check_plugin
from pretextflow.testing.runner import find_kind as find_kind

__all__ = [
    "CheckResult",
    "ConformanceError",
    "PRETEXT_CHECKS",
    "BACKBONE_CHECKS",
    "DATASET_CHECKS",
    "LOGGER_CHECKS",
    "check_pretext_task",
    "check_backbone",
    "check_dataset_format",
    "check_logger",
    "check_plugin",
    "assert_conforms",
    "registry_with",
    "format_results",
    "HostTensorGuard",
]
