"""The checks of a dataset format: :func:`check_dataset_format`.

A format is a stream: ``scan`` lists the source's images, ``read`` decodes any chunk of them,
in a worker process with a fresh instance of the format. The checks follow that: the listing, a
read of every entry, the same scan and read twice, a read of arbitrary chunks (a subset, in
another order, by a fresh instance) against the whole, and the pipeline on what was read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import DatasetArrays, DatasetFormat, DecodedImage, SourceCatalog, SourceEntry
from pretextflow.core.registry.registry import Registry, get_registry
from pretextflow.testing.common_checks import _params_check, _registered_check
from pretextflow.testing.fixtures import _resolve_name, _run_pipeline, _with_plugin
from pretextflow.testing.harness import _run, _where
from pretextflow.testing.results import CheckResult, _Fail, _Skip

DATASET_CHECKS = ("registered", "options", "scan", "read", "determinism", "chunks", "pipeline")
SPLITS = ("train", "test")


class _DatasetChecks:
    """The checks of one dataset format reading one source; each public method is one check. The
    catalog and images the scan and read checks got are the input of the checks after them."""

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

    # -- helpers ---------------------------------------------------------------------------
    def _options(self) -> DatasetFormat.Options:
        try:
            return self.cls.Options.model_validate(self.values)
        except Exception:
            raise _Skip("Options could not be built; see the options check") from None

    def _scan(self) -> SourceCatalog:
        return self.cls().scan(self.source, self._options(), self.so)

    def _catalog(self) -> SourceCatalog:
        if "catalog" not in self.state:
            self.scan()
        return self.state["catalog"]

    def _read_options(self, catalog: SourceCatalog) -> DatasetFormat.Options:
        """What ingest gives ``read``: the user's options updated with the catalog's read_options."""
        merged = {**self._options().model_dump(mode="json"), **catalog.read_options}
        try:
            return self.cls.Options.model_validate(merged)
        except Exception as exc:
            raise _Fail(
                f"scan()'s read_options {sorted(catalog.read_options)} are not valid {self.cls.__name__}.Options: "
                f"{str(exc).splitlines()[0]}"
            ) from None

    def _decode(self, fmt: DatasetFormat, entries: Sequence[SourceEntry]) -> list[DecodedImage]:
        """``fmt.read(entries)``, checked: one uint8 (C, H, W) DecodedImage per entry, no more."""
        from pretextflow.core.data.decode import check_extent, check_image

        catalog = self._catalog()
        items = iter(fmt.read(self.source, list(entries), self._read_options(catalog), self.so))
        out, shape = [], None
        for entry in entries:
            item = next(items, None)
            if item is None:
                raise _Fail(f"read() stopped before {entry.key}: it must yield one DecodedImage per entry, in order")
            if not isinstance(item, DecodedImage):
                raise _Fail(f"read() must yield DecodedImage, got {type(item).__name__} for {entry.key}")
            try:
                shape = check_image(item.image, entry, shape).shape
                check_extent(getattr(item, "extent", None), item.image, entry)
            except Exception as exc:
                raise _Fail(str(exc)) from None
            if not isinstance(item.sha256, str) or not item.sha256:
                raise _Fail(f"{entry.key}: DecodedImage.sha256 must be a non-empty str, got {item.sha256!r}")
            out.append(item)
        if next(items, None) is not None:
            raise _Fail(f"read() yielded more images than the {len(entries)} entries it was given")
        return out

    def _whole(self) -> dict[str, DecodedImage]:
        """key -> image, as the read check decoded every entry."""
        if "decoded" not in self.state:
            self.read()
        return self.state["decoded"]

    def _entries(self) -> list[SourceEntry]:
        """Every entry, ordered as ingest orders them (by split, then key)."""
        return sorted(self._catalog().entries, key=lambda e: (e.split, e.key))

    # -- checks ----------------------------------------------------------------------------
    def scan(self) -> str:
        from pretextflow.core.data.decode import check_catalog

        catalog = self._scan()
        if not isinstance(catalog, SourceCatalog):
            raise _Fail(f"scan() must return a SourceCatalog, got {type(catalog).__name__}")
        bad = next((e for e in catalog.entries if not isinstance(e, SourceEntry)), None)
        if bad is not None:
            raise _Fail(f"SourceCatalog.entries must hold SourceEntry objects, got {type(bad).__name__}")
        try:
            check_catalog(catalog, self.source)
        except Exception as exc:
            raise _Fail(str(exc)) from None
        self._read_options(catalog)
        self.state["catalog"] = catalog
        counts = {s: sum(e.split == s for e in catalog.entries) for s in SPLITS}
        labelled = sum(e.label >= 0 for e in catalog.entries if e.split == "train")
        return (
            f"{counts['train']} train / {counts['test']} test entries ({labelled} train labelled), "
            f"{len(catalog.class_names)} classes, unique keys"
        )

    def read(self) -> str:
        entries = self._entries()
        items = self._decode(self.cls(), entries)
        self.state["decoded"] = {e.key: item for e, item in zip(entries, items, strict=True)}
        self.state["arrays"] = arrays = self._arrays(entries, items)
        return (
            f"one uint8 image per entry, in order: train {arrays.train_images.shape}, test {arrays.test_images.shape}"
        )

    def _arrays(self, entries: list[SourceEntry], items: list[DecodedImage]) -> DatasetArrays:
        from pretextflow.core.data.dataset import validate_arrays

        out: dict[str, Any] = {}
        shape = items[0].image.shape
        for split in SPLITS:
            chosen = [(e, i) for e, i in zip(entries, items, strict=True) if e.split == split]
            images = [i.image for _, i in chosen]
            out[f"{split}_images"] = np.stack(images) if images else np.zeros((0, *shape), np.uint8)
            out[f"{split}_labels"] = np.asarray([e.label for e, _ in chosen], dtype=np.int64)
        arrays = DatasetArrays(class_names=list(self._catalog().class_names), **out)
        try:
            validate_arrays(arrays, self.source)
        except Exception as exc:
            raise _Fail(str(exc)) from None
        return arrays

    def determinism(self) -> str:
        first, second = self._catalog(), self._scan()
        if not isinstance(second, SourceCatalog) or second.entries != first.entries:
            raise _Fail(
                "scanning the same source twice gave different entries: the same data would make a "
                "new version (sort file listings; no timestamps or random order)"
            )
        if second.class_names != first.class_names or second.read_options != first.read_options:
            raise _Fail("scanning the same source twice gave different class names or read_options")
        entries = self._entries()
        again = self._decode(self.cls(), entries)
        decoded = self._whole()
        diff = [e.key for e, item in zip(entries, again, strict=True) if not _same(item, decoded[e.key])]
        if diff:
            raise _Fail(
                f"reading the same source twice gave different images or sha256 for {len(diff)} entries "
                f"(e.g. {diff[0]}): the version of the same data would change (no unseeded randomness)"
            )
        return f"two scans give the same {len(entries)} entries; two reads the same images and sha256"

    def chunks(self) -> str:
        entries = self._entries()
        decoded = self._whole()
        chunk = list(reversed(entries[1::2])) or entries  # every other entry, in reverse order
        tried = [chunk, entries[-1:]]  # ... and the last one alone
        for part in tried:
            got = self._decode(self.cls(), part)  # a fresh instance, as in a worker process
            diff = [e.key for e, item in zip(part, got, strict=True) if not _same(item, decoded[e.key])]
            if diff:
                raise _Fail(
                    f"read() of a chunk of {len(part)} entries (a subset, in another order, by a fresh "
                    f"instance) differs from the whole read for {diff[0]}: a read must decode exactly "
                    f"the entries it is given (ingest gives workers arbitrary chunks)"
                )
        return f"a {len(chunk)}-entry subset in reverse order and a single entry read as in the whole"

    def pipeline(self) -> str:
        self._whole()
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


def _same(a: DecodedImage, b: DecodedImage) -> bool:
    same_extent = getattr(a, "extent", None) == getattr(b, "extent", None)
    return same_extent and a.sha256 == b.sha256 and a.image.shape == b.image.shape and np.array_equal(a.image, b.image)


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
            ("scan", c.scan, ()),
            ("read", c.read, ("scan",)),
            ("determinism", c.determinism, ("read",)),
            ("chunks", c.chunks, ("read", "determinism")),
            *([("pipeline", c.pipeline, ("read",))] if pipeline else []),
        ],
        only,
    )
