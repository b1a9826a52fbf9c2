"""What the checks run on: tiny data (scikit-learn's digits, resized), a throw-away workspace, the
real pipeline on them, and registries that hold the plugin under check."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretextflow.core.errors import PluginError
from pretextflow.core.registry.contracts import BackboneSpec, DatasetArrays, DatasetFormat, PretextTask, RunLogger
from pretextflow.core.registry.hookspecs import hookimpl
from pretextflow.core.registry.registry import PluginInfo, Registry, build_registry
from pretextflow.testing.results import _Fail, _fmt

if TYPE_CHECKING:
    from pretextflow.core.stages import StageContext

log = logging.getLogger("pretextflow.testing")


# --------------------------------------------------------------------------------------------
# Tiny data: scikit-learn's digits, resized and with as many channels as asked
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> DatasetArrays:
    from pretextflow.core.data.decode import read_all
    from pretextflow.plugins.datasets.sklearn_digits import DigitsFormat

    return read_all(DigitsFormat(), "sklearn:digits", DigitsFormat.Options(), {})


def _resize_uint8(images: np.ndarray, size: int, chans: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    if chans != x.shape[1]:
        x = x.repeat(1, chans, 1, 1)
    return x.numpy()


def _tiny_batch(n: int, size: int, chans: int) -> torch.Tensor:
    return torch.from_numpy(_resize_uint8(_digits_arrays().train_images[:n], size, chans))


def _meta(size: int, chans: int) -> dict[str, Any]:
    return {"image_shape": [chans, size, size], "mean": [0.3] * chans, "std": [0.35] * chans}


@contextlib.contextmanager
def _kit_workspace(arrays: DatasetArrays, name: str, fmt: str) -> Iterator[tuple[Path, str]]:
    """A throw-away workspace folder with ``data/<name>`` in the canonical layout, and a
    ``memory://`` artifact store; both are deleted afterwards."""
    from pretextflow.core.data.layout import write_arrays

    root = Path(tempfile.mkdtemp(prefix="pretextflow-kit-"))
    store_uri = f"memory://pretextflow-kit-{uuid.uuid4().hex[:12]}"
    try:
        (root / "data" / name).mkdir(parents=True)
        write_arrays(root / "data", name, fmt, arrays)
        yield root, store_uri
    finally:
        shutil.rmtree(root, ignore_errors=True)
        import fsspec

        fs = fsspec.filesystem("memory")
        path = store_uri.split("://", 1)[1]
        with contextlib.suppress(Exception):
            if fs.exists("/" + path) or fs.exists(path):
                fs.rm("/" + path, recursive=True)


def _digits_for(size: int, chans: int) -> DatasetArrays:
    d = _digits_arrays()
    return DatasetArrays(
        train_images=_resize_uint8(d.train_images, size, chans),
        train_labels=d.train_labels,
        test_images=_resize_uint8(d.test_images, size, chans),
        test_labels=d.test_labels,
        class_names=d.class_names,
        source_files=d.source_files,
    )


def _pipeline_config(
    data_name: str,
    pretext: str,
    pretext_params: dict,
    backbone: str,
    backbone_kwargs: dict,
    n: int,
    batch: int,
    store_uri: str,
) -> dict[str, Any]:
    """The raw config of the kit's pipeline run: one short epoch on the CPU, a small probe."""
    return {
        "name": "pretextflow-kit",
        "seed": 0,
        "data": {"name": data_name},
        "backbone": {"name": backbone, "kwargs": backbone_kwargs},
        "pretext": {"name": pretext, "params": pretext_params},
        "train": {
            "epochs": 1,
            "batch_size": batch,
            "lr": 1e-3,
            "warmup_epochs": 0,
            "device": "cpu",
            "max_train_samples": n,
        },
        "probe": {
            "knn_k": [5],
            "linear_weight_decays": [1e-4],
            "linear_max_iter": 50,
            "label_fractions": [1.0],
            "baselines": [],
        },
        "store": {"uri": store_uri},
    }


def _run_pipeline(
    registry: Registry,
    arrays: DatasetArrays,
    data_name: str,
    fmt: str,
    pretext: str,
    pretext_params: dict,
    backbone: str,
    backbone_kwargs: dict,
    max_train_samples: int = 512,
    batch_size: int = 64,
    probe: bool = True,
) -> str:
    """pretrain -> freeze -> probe through ``core.stages`` (the functions the Prefect flows wrap)."""
    from pretextflow.core.config import load_config
    from pretextflow.core.stages import StageContext, run_freeze, run_pretrain
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.workspace import Workspace

    n = min(max_train_samples, len(arrays.train_images))
    batch = max(2, min(batch_size, n))
    with _kit_workspace(arrays, data_name, fmt) as (root, store_uri):
        raw = _pipeline_config(data_name, pretext, pretext_params, backbone, backbone_kwargs, n, batch, store_uri)
        ctx = StageContext(Workspace(root), load_config(raw=raw), registry, ArtifactStore(store_uri))
        pre = run_pretrain(ctx, logger=log)
        if pre["final_loss"] is None or not math.isfinite(pre["final_loss"]):
            raise _Fail(f"pretraining ended with a non-finite loss ({pre['final_loss']})")
        run_freeze(ctx, logger=log)
        size = arrays.train_images.shape[-1]
        done = f"pretrain {n // batch} steps (final loss {_fmt(pre['final_loss'])}), freeze"
        if not probe:
            return done + f" on {data_name} ({size}px); probe skipped: the data has no two labelled classes"
        return f"{done}, {_run_probe(ctx, data_name, size)}"


def _run_probe(ctx: StageContext, data_name: str, size: int) -> str:
    """The probe stage of the kit's pipeline run, and what it measured."""
    from pretextflow.core.stages import run_probe

    metrics = run_probe(ctx, logger=log)["metrics"]
    for key in ("linear_top1", "knn_top1"):
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise _Fail(f"probe: {key} is {value!r}, expected a number in [0, 1]")
    return (
        f"probe on {data_name} ({size}px): linear top-1 {metrics['linear_top1']:.3f}, "
        f"kNN top-1 {metrics['knn_top1']:.3f}"
    )


# --------------------------------------------------------------------------------------------
# Finding the plugin, and a registry that holds it
# --------------------------------------------------------------------------------------------
def registry_with(*plugins: Any, load_entry_points: bool = False) -> Registry:
    """A registry with the built-ins and ``plugins`` (PretextTask / DatasetFormat / RunLogger
    classes, BackboneSpec objects) registered through the real hooks, as if installed: checks a
    plugin before it is packaged. ``load_entry_points=True`` also loads installed third-party plugins."""
    tasks = [p for p in plugins if isinstance(p, type) and issubclass(p, PretextTask)]
    formats = [p for p in plugins if isinstance(p, type) and issubclass(p, DatasetFormat)]
    loggers = [p for p in plugins if isinstance(p, type) and issubclass(p, RunLogger)]
    specs = [p for p in plugins if isinstance(p, BackboneSpec)]
    other = [p for p in plugins if not (p in tasks or p in formats or p in loggers or p in specs)]
    if other:
        raise TypeError(
            f"registry_with() takes PretextTask/DatasetFormat/RunLogger classes and BackboneSpecs, got {other!r}"
        )

    class _Plugin:
        __package_name__ = "(registry_with)"
        __version__ = "0"

        @hookimpl
        def pretextflow_pretext_tasks(self):
            return tasks

        @hookimpl
        def pretextflow_backbones(self):
            return specs

        @hookimpl
        def pretextflow_dataset_formats(self):
            return formats

        @hookimpl
        def pretextflow_loggers(self):
            return loggers

    return build_registry(extra_plugins=[("registry_with", _Plugin())], load_entry_points=load_entry_points)


def _skipped_note(registry: Registry, name: str) -> str:
    notes = [
        f"{s.plugin} ({s.package}): {s.reason}"
        for s in registry.skipped
        if name in s.reason or name in s.plugin or name.replace("-", "_") in s.plugin
    ]
    return (" Skipped plugins: " + "; ".join(notes)) if notes else ""


def _resolve_name(registry: Registry, kind: str, name: str) -> Any:
    try:
        if kind == "pretext":
            return registry.pretext_task(name)
        if kind == "backbone":
            return registry.backbone(name)
        if kind == "logger":
            return registry.logger(name)
        return registry.dataset_format(name)
    except PluginError as exc:
        raise PluginError(
            f"{exc}{_skipped_note(registry, name)} If it is yours: declare the entry point "
            f'([project.entry-points.pretextflow] {name} = "your_package.module") and '
            f"`pip install -e .` the package."
        ) from None


def _table(registry: Registry, kind: str) -> dict:
    return registry.table(kind)


def _with_plugin(registry: Registry, kind: str, obj: Any) -> Registry:
    """``registry`` if it already holds ``obj`` under its name, else a copy where it does (so an
    unregistered plugin can still go through the other checks and the pipeline)."""
    table = _table(registry, kind)
    if table.get(obj.name) is obj:
        return registry
    new = Registry(
        pretext=dict(registry.pretext),
        backbones=dict(registry.backbones),
        formats=dict(registry.formats),
        loggers=dict(registry.loggers),
        info=list(registry.info),
        skipped=list(registry.skipped),
    )
    new_table = _table(new, kind)
    new_table.pop(obj.name, None)
    if kind == "backbone":  # first, so it wins over a namespace (``timm/*``) that would also match
        new.backbones = {obj.name: obj, **new.backbones}
    else:
        new_table[obj.name] = obj
    new.info = [
        PluginInfo(
            name=obj.name,
            kind=kind,
            family=getattr(obj, "family", None) if kind == "pretext" else None,
            package="(not installed)",
            version="0",
            plugin="pretextflow.testing",
        )
    ] + [i for i in new.info if not (i.kind == kind and i.name == obj.name)]
    return new
