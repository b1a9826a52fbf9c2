"""The checks of a dataset format: :func:`check_dataset_format`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import DatasetArrays, DatasetFormat
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.testing.common_checks import _params_check, _registered_check
from pretextflow.testing.fixtures import _resolve_name, _run_pipeline, _with_plugin
from pretextflow.testing.harness import _run, _where
from pretextflow.testing.results import CheckResult, _Fail, _Skip

DATASET_CHECKS = ("registered", "options", "read", "validate", "determinism", "pipeline")


class _DatasetChecks:
    """The checks of one dataset format reading one source; each public method is one check. The
    arrays the read check got are the input of the checks after it."""

    def __init__(
        self,
        cls: type[DatasetFormat],
        registry: Registry,
        source: str,
        values: dict,
        storage_options: dict,
        max_train_samples: int,
    ) -> None:
        self.cls, self.registry, self.source, self.values = cls, registry, source, values
        self.so, self.max_train_samples = storage_options, max_train_samples
        self.state: dict[str, Any] = {}

    def _read_once(self) -> DatasetArrays:
        try:
            opts = self.cls.Options.model_validate(self.values)
        except Exception:
            raise _Skip("Options could not be built; see the options check") from None
        return self.cls().read(self.source, opts, self.so)

    def read(self) -> str:
        arrays = self._read_once()
        if not isinstance(arrays, DatasetArrays):
            raise _Fail(f"read() must return DatasetArrays, got {type(arrays).__name__}")
        for key in ("train_images", "train_labels", "test_images", "test_labels"):
            if not isinstance(getattr(arrays, key), np.ndarray):
                raise _Fail(f"DatasetArrays.{key} must be a numpy array, got {type(getattr(arrays, key)).__name__}")
        self.state["arrays"] = arrays
        return (
            f"train {arrays.train_images.shape} {arrays.train_images.dtype}, test {arrays.test_images.shape}, "
            f"{len(arrays.class_names)} classes"
        )

    def validate(self) -> str:
        from pretextflow.core.data.dataset import validate_arrays

        arrays = self.state["arrays"]
        try:
            validate_arrays(arrays, self.source)
        except Exception as exc:
            raise _Fail(str(exc)) from None
        if arrays.train_labels.dtype != np.int64 or arrays.test_labels.dtype != np.int64:
            raise _Fail(f"labels must be int64, got {arrays.train_labels.dtype} / {arrays.test_labels.dtype}")
        labelled = int((arrays.train_labels >= 0).sum())
        return f"uint8 (N, C, H, W), int64 labels (-1 = none): {labelled}/{len(arrays.train_labels)} train labelled"

    def determinism(self) -> str:
        from pretextflow.core.data.dataset import encode_dataset

        first = encode_dataset("kit", self.cls.name, self.state["arrays"])
        second = encode_dataset("kit", self.cls.name, self._read_once())
        diff = sorted(k for k in first if first[k] != second.get(k))
        if diff:
            raise _Fail(
                f"reading the same source twice gave different bytes in {diff}: the DVC version of the "
                f"same data would change (sort file listings; no timestamps or random order)"
            )
        return "the same source gives byte-identical canonical files"

    def pipeline(self) -> str:
        arrays = self.state["arrays"]
        train_classes = np.unique(arrays.train_labels[arrays.train_labels >= 0])
        test_labelled = int((arrays.test_labels >= 0).sum())
        probe = len(train_classes) >= 2 and test_labelled > 0
        try:
            return _run_pipeline(
                self.registry,
                arrays,
                "kit-data",
                self.cls.name,
                "rotation",
                {},
                "convnet-s",
                {"width": 8, "depth": 3},
                max_train_samples=self.max_train_samples,
                probe=probe,
            )
        except _Fail:
            raise
        except Exception as exc:
            raise _Fail(f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0]}{_where(exc)}") from None


def check_dataset_format(
    fmt: str | type[DatasetFormat],
    *,
    source: str | None = None,
    options: dict | None = None,
    storage_options: dict | None = None,
    pipeline: bool = True,
    max_train_samples: int = 256,
    registry: Registry | None = None,
    only: Sequence[str] | None = None,
) -> list[CheckResult]:
    """Check a dataset format (its name, or the class) by reading ``source`` with ``options``."""
    base = registry or get_registry()
    cls = _resolve_name(base, "dataset", fmt) if isinstance(fmt, str) else fmt
    if not (isinstance(cls, type) and issubclass(cls, DatasetFormat)):
        raise PluginError(f"{fmt!r} is not a DatasetFormat subclass")
    if not source:
        raise PluginError(f"checking dataset format {cls.name!r} needs a source to read (--source PATH_OR_URI)")
    values = dict(options or {})
    c = _DatasetChecks(
        cls, _with_plugin(base, "dataset", cls), source, values, dict(storage_options or {}), max_train_samples
    )
    return _run(
        [
            ("registered", _registered_check(base, "dataset", cls), ()),
            ("options", _params_check(getattr(cls, "Options", None), values, f"{cls.__name__}.Options"), ()),
            ("read", c.read, ()),
            ("validate", c.validate, ("read",)),
            ("determinism", c.determinism, ("read",)),
            *([("pipeline", c.pipeline, ("validate",))] if pipeline else []),
        ],
        only,
    )
