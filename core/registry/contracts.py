"""The plugin contracts: what a pretext task, a backbone, a dataset format and a logger must provide.

Third-party plugins import these names (re-exported by ``pretextflow.api``); the built-ins use
exactly the same classes. Keep this module small and stable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from pretextflow.core.errors import DataError

if TYPE_CHECKING:
    from pretextflow.core.toolkit.augment import Augmenter

Family = Literal["predictive", "generative", "contrastive"]
FAMILIES: tuple[str, ...] = ("predictive", "generative", "contrastive")


class Params(BaseModel):
    """Base for every plugin's hyper-parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------
class BackboneParams(Params):
    """What the core tells a backbone builder about the data; ``kwargs`` are the user's extras."""

    in_chans: int
    image_size: int
    small_image_stem: bool = True
    kwargs: dict[str, Any] = {}


class TokenAPI(Protocol):
    """What a token-exposing backbone (a ViT) offers masked-image-modelling tasks such as MAE."""

    patch_size: int
    num_patches: int
    dim: int

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> patch tokens with position embeddings, ``(N, num_patches, dim)``."""

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """A subset of patch tokens ``(N, L', dim)`` -> encoded ``(N, prefix + L', dim)`` (class token first)."""


class Backbone(nn.Module):
    """Images -> feature vectors. Wraps a network and owns input normalisation, so pretraining,
    probing and any later user see the same preprocessing.

    ``forward`` takes float images in [0, 1], shape ``(N, C, H, W)``, returns ``(N, num_features)``.
    A builder may attach ``pretextflow_token_api`` (a :class:`TokenAPI`) to its network to expose
    patch tokens, and ``pretextflow_flexible_input = False`` when it only accepts its built size.
    """

    def __init__(
        self,
        net: nn.Module,
        num_features: int,
        mean: list[float],
        std: list[float],
        image_size: int,
        provides_tokens: bool = False,
    ):
        super().__init__()
        self.net = net
        self.num_features = int(num_features)
        self.token_api: TokenAPI | None = getattr(net, "pretextflow_token_api", None)
        self.provides_tokens = provides_tokens or self.token_api is not None
        self.flexible_input = bool(getattr(net, "pretextflow_flexible_input", True))
        c = len(mean)
        self.in_chans, self.image_size = c, int(image_size)  # square inputs (N, in_chans, size, size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone builder. ``name`` may end in ``/*`` to claim a namespace (``timm/*``
    builds any timm model as ``timm/<model_name>``)."""

    name: str
    build: Callable[[str, BackboneParams], tuple[nn.Module, int]]  # (full name, params) -> (net, num_features)
    description: str = ""
    provides_tokens: bool = False

    def matches(self, name: str) -> bool:
        if self.name.endswith("/*"):
            return name.startswith(self.name[:-1]) and len(name) > len(self.name) - 1
        return name == self.name


# --------------------------------------------------------------------------------------------
# Pretext tasks
# --------------------------------------------------------------------------------------------
class Requirements(BaseModel):
    """What a pretext task needs from its backbone; checked before any training starts."""

    model_config = ConfigDict(frozen=True)
    tokens: bool = False  # needs patch tokens (e.g. MAE on a ViT)
    min_image_size: int = 1
    flexible_input: bool = False  # needs a backbone that accepts crops smaller than its built size


@dataclass
class StepOutput:
    """What one training step returns: the scalar loss to minimise and numbers worth logging."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class PretextTask(nn.Module):
    """A self-supervised objective. Owns its heads, its views and its loss; the core owns the loop.

    Subclasses set ``name``, ``family``, optionally ``requires``, and a nested ``Params`` model
    whose defaults follow the published recipe scaled to small images.
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    description: ClassVar[str] = ""
    requires: ClassVar[Requirements] = Requirements()

    class Params(Params):
        pass

    def __init__(self, backbone: Backbone, params: PretextTask.Params):
        super().__init__()
        self.backbone = backbone
        self.params = params

    def forward(self, images: torch.Tensor, aug: Augmenter) -> StepOutput:  # pragma: no cover
        """``images``: a uint8 batch ``(N, C, H, W)`` already on the training device."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Hook for EMA teachers and schedules owned by the method; default does nothing."""


# --------------------------------------------------------------------------------------------
# Dataset formats
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetArrays:
    """What an :class:`ArrayDatasetFormat` returns: uint8 images ``(N, C, H, W)``, int64 labels (-1 = none)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source_files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256 of payload


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One image a dataset format found in a source, listed without reading it.

    ``key`` names the image uniquely and stably (the relative path of a file; ``train/000123`` for
    one image of an array file): ingest compares keys with the previous version to find what was
    added, removed, changed or renamed. ``stamp`` changes whenever the image may have changed
    (size and mtime, an ETag, the containing file's checksum); an unchanged stamp means "not read
    again", ``""`` means "always read". ``location`` is where :meth:`DatasetFormat.read` finds it."""

    key: str
    split: str  # "train" or "test"
    label: int = -1  # index into SourceCatalog.class_names; -1 = unlabeled
    stamp: str = ""
    location: str = ""


@dataclass
class SourceCatalog:
    """What :meth:`DatasetFormat.scan` returns: the class names and every image's entry."""

    class_names: list[str]
    entries: list[SourceEntry]
    # options read() gets in place of the user's (e.g. ``channels`` resolved from the first image,
    # so every worker decodes alike); {} = the user's options as given
    read_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """One image as :meth:`DatasetFormat.read` yields it: uint8 ``(C, H, W)`` and the sha256 of its
    source bytes (or of its pixels), which confirms whether a re-read image really changed.

    ``extent``: ``(h, w)``, the size of the image's content when it is pasted, centred, on a
    larger zero canvas ``image`` (a non-square picture stored with its aspect ratio, the image-file
    formats' ``max_side``); ``None`` = the content fills the canvas. Ingest stores the extents
    beside the pixels (``Dataset.train_extents``)."""

    image: np.ndarray
    sha256: str
    extent: tuple[int, int] | None = None


class DatasetFormat:
    """Reads one on-disk format through fsspec, as a stream: :meth:`scan` lists the images
    (cheap: nothing decoded), :meth:`read` decodes a chunk of them. Ingest calls ``read`` on
    chunks, in worker processes when ``parallel`` (so no format ever holds the whole dataset), and
    only for the entries that are new or whose stamp changed."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    parallel: ClassVar[bool] = True  # read() may run in other processes, on any chunk of entries
    # options that change how the source is read, never what (concurrency, timeouts): changing
    # them keeps the previous version's images; changing any other option re-reads everything
    io_options: ClassVar[frozenset[str]] = frozenset()

    class Options(Params):
        pass

    def scan(
        self, source: str, options: DatasetFormat.Options, storage_options: dict[str, Any]
    ) -> SourceCatalog:  # pragma: no cover
        raise NotImplementedError

    def read(
        self,
        source: str,
        entries: Sequence[SourceEntry],
        options: DatasetFormat.Options,
        storage_options: dict[str, Any],
    ) -> Iterator[DecodedImage]:  # pragma: no cover
        """One :class:`DecodedImage` per entry, in the entries' order."""
        raise NotImplementedError


class ArrayDatasetFormat(DatasetFormat):
    """A format whose source is a few array files (idx, scikit-learn's digits): implement
    :meth:`arrays`; ``scan`` and ``read`` are derived (keys ``train/000000``, stamps = the pixels'
    sha256, so an unchanged image is never rewritten). Read in the ingesting process."""

    parallel: ClassVar[bool] = False

    def arrays(
        self, source: str, options: DatasetFormat.Options, storage_options: dict[str, Any]
    ) -> DatasetArrays:  # pragma: no cover
        raise NotImplementedError

    def scan(self, source: str, options: DatasetFormat.Options, storage_options: dict[str, Any]) -> SourceCatalog:
        arrays = self.arrays(source, options, storage_options)
        self._arrays = arrays
        entries = []
        for split in ("train", "test"):
            images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
            if len(images) != len(labels):
                raise DataError(
                    f"{source}: {split} has {len(images)} images but {len(labels)} labels. Give every image "
                    f"exactly one label (the files may come from different datasets, or one is truncated)."
                )
            for i in range(len(images)):
                digest = hashlib.sha256(np.ascontiguousarray(images[i]).tobytes()).hexdigest()
                entries.append(SourceEntry(f"{split}/{i:07d}", split, int(labels[i]), digest, f"{split}:{i}"))
        return SourceCatalog(list(arrays.class_names), entries)

    def read(
        self,
        source: str,
        entries: Sequence[SourceEntry],
        options: DatasetFormat.Options,
        storage_options: dict[str, Any],
    ) -> Iterator[DecodedImage]:
        arrays = getattr(self, "_arrays", None) or self.arrays(source, options, storage_options)
        self._arrays = arrays
        for e in entries:
            split, i = e.location.split(":")
            image = np.ascontiguousarray(getattr(arrays, f"{split}_images")[int(i)])
            yield DecodedImage(image, e.stamp or hashlib.sha256(image.tobytes()).hexdigest())


@dataclass(frozen=True)
class RunInfo:
    """What a logger is told when a pipeline run starts."""

    run_id: str  # the run's id (its manifest key): one tracker run per pipeline run
    config: dict[str, Any]  # the resolved config (credentials already redacted)
    workspace: str  # the workspace folder (local): where file-based loggers write, under runs/<run_id>/
    name: str = ""  # a human name (config name, dataset and method)


class RunLogger:
    """Sends one pipeline run to an experiment tracker (TensorBoard files, an MLflow server...).

    Lifecycle: :meth:`start` once, then any number of :meth:`log_metrics` / :meth:`log_artifact`,
    then :meth:`end` once. Calls come from the training process; a logger that does network I/O must
    not block it for long (queue and send from a thread). An exception from any method is caught by
    the pipeline: the logger is warned about once and switched off, the run goes on. Options come
    from the config's ``logging.options.<name>`` mapping, validated by :attr:`Options`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    class Options(Params):
        pass

    def __init__(self, options: RunLogger.Options | None = None):
        self.options = options if options is not None else self.Options()

    def start(self, run: RunInfo) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int | None, stage: str) -> None:  # pragma: no cover
        """Scalars ``name -> value`` at ``step`` (the global training step, an epoch, or None for
        final values); names are ``<stage>/<metric>``-style, e.g. ``pretrain/loss``."""
        raise NotImplementedError

    def log_artifact(self, path: str, name: str | None = None) -> None:  # pragma: no cover - interface
        """A local file produced by the run (report, manifest, figures, the exported backbone)."""
        raise NotImplementedError

    def end(self, status: str, metrics: dict[str, float]) -> None:  # pragma: no cover - interface
        """``status``: "completed" or "failed"; ``metrics``: the final metrics (probe accuracies)."""
        raise NotImplementedError
