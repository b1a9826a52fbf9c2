"""The probe stage's metrics: one schema that probe writes and runs, publish, report and sweep read.

``metrics.json`` of a probe (and ``manifest["metrics"]`` of a run) is a :class:`ProbeMetrics`. The
accuracy names below are the only place their spelling lives: the label-efficiency columns are
:data:`EFFICIENCY_COLUMNS` (with the label a table or a figure shows), the headline accuracies
:data:`HEADLINE`, the frozen-feature baselines :data:`BASELINES`. :func:`check_metrics` validates a
dict against the schema (pydantic), so a renamed key fails loudly where it is written, not as a
``KeyError`` in a report three stages later.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

from pretextflow.core.errors import StageInputError

LINEAR_TOP1 = "linear_top1"
LINEAR_TOP5 = "linear_top5"
KNN_TOP1 = "knn_top1"
HEADLINE = (LINEAR_TOP1, LINEAR_TOP5, KNN_TOP1)
"""The run's headline accuracies on the test split (top-5 only when there are more than 5 classes)."""


class Column(NamedTuple):
    key: str  # the key in a label-efficiency row (its spread is ``key + "_std"``)
    label: str  # the header of its column in the report's label-efficiency table


SSL_LINEAR = Column("ssl_linear_top1", "SSL linear")
SSL_KNN = Column("ssl_knn_top1", "SSL kNN")
SUPERVISED = Column("supervised_top1", "supervised from scratch")
RANDOM_INIT_LINEAR = Column("random_init_linear_top1", "random init linear")
PIXELS_LINEAR = Column("pixels_linear_top1", "pixels linear")
FINETUNE = Column("finetune_top1", "SSL fine-tuned")
LPFT = Column("lpft_top1", "SSL LP-FT")
FIXMATCH_SSL = Column("fixmatch_ssl_top1", "FixMatch from SSL")
FIXMATCH_SCRATCH = Column("fixmatch_scratch_top1", "FixMatch from scratch")
EFFICIENCY_COLUMNS = (
    SSL_LINEAR,
    SSL_KNN,
    LPFT,
    FIXMATCH_SSL,
    SUPERVISED,
    FIXMATCH_SCRATCH,
    RANDOM_INIT_LINEAR,
    PIXELS_LINEAR,
    FINETUNE,
)
"""Every accuracy of a label-efficiency row, in the order tables show them."""
OPTIONAL_COLUMNS = (FINETUNE, LPFT, FIXMATCH_SSL, FIXMATCH_SCRATCH)
"""Columns a row leaves out (rather than sets to ``None``) when the protocol did not run."""
SSL_BASED = (SSL_LINEAR, SSL_KNN, LPFT, FIXMATCH_SSL, FINETUNE)
"""The label-efficient methods built on the SSL backbone (the report names the best at 1%)."""

BASELINES = ("random_init", "pixels")
"""Frozen-feature baselines the probe can evaluate beside the SSL backbone (``probe.baselines``)."""


def linear_column(features: str) -> str:
    """The label-efficiency key of a linear probe on ``features`` (``ssl``, a baseline name)."""
    return f"{features}_linear_top1"


_FORBID = ConfigDict(extra="forbid")


class BaselineMetrics(TypedDict):
    __pydantic_config__ = _FORBID  # type: ignore[misc]
    linear_top1: float
    knn_top1: float


class TrainedRun(TypedDict):
    """What one supervised or fine-tuning run of a label-efficiency row did (the first seed's recipe)."""

    __pydantic_config__ = _FORBID  # type: ignore[misc]
    steps: int
    epochs: int | float
    lr: float
    train_top1: float | None
    seconds: float
    tuning: NotRequired[dict[str, Any] | None]  # probe.tuning's search (the first seed's): choice, grid, folds
    mask_rate: NotRequired[float | None]  # FixMatch: the share of confident pseudo labels at the end


class KnnDetail(TypedDict):
    __pydantic_config__ = _FORBID  # type: ignore[misc]
    k: int
    temperature: float
    top1_by_k: dict[str, float | None]


class EfficiencyRow(TypedDict):
    """The probes at one labelled fraction: mean and std over ``seeds`` class-stratified subsets."""

    __pydantic_config__ = _FORBID  # type: ignore[misc]
    fraction: float
    num_labels: int
    seeds: int
    ssl_linear_top1: float | None
    ssl_linear_top1_std: float | None
    ssl_knn_top1: float | None
    ssl_knn_top1_std: float | None
    supervised_top1: float | None
    supervised_top1_std: float | None
    random_init_linear_top1: float | None
    random_init_linear_top1_std: float | None
    pixels_linear_top1: float | None
    pixels_linear_top1_std: float | None
    finetune_top1: NotRequired[float | None]
    finetune_top1_std: NotRequired[float | None]
    lpft_top1: NotRequired[float | None]
    lpft_top1_std: NotRequired[float | None]
    fixmatch_ssl_top1: NotRequired[float | None]
    fixmatch_ssl_top1_std: NotRequired[float | None]
    fixmatch_scratch_top1: NotRequired[float | None]
    fixmatch_scratch_top1_std: NotRequired[float | None]
    knn: KnnDetail
    supervised: NotRequired[TrainedRun]
    finetune: NotRequired[TrainedRun]
    lpft: NotRequired[TrainedRun]
    fixmatch_ssl: NotRequired[TrainedRun]
    fixmatch_scratch: NotRequired[TrainedRun]


class InitialWeights(TypedDict):
    __pydantic_config__ = _FORBID  # type: ignore[misc]
    uri: str  # credentials redacted, references kept
    sha256: str


class ProbeMetrics(TypedDict):
    """``metrics.json`` of the probe stage; ``detail`` and ``seconds`` are free-form diagnostics."""

    __pydantic_config__ = _FORBID  # type: ignore[misc]
    linear_top1: float
    linear_top5: NotRequired[float]
    initial_weights: NotRequired[InitialWeights]  # backbone.weights: the random-init baseline starts there
    knn_top1: float
    baselines: dict[str, BaselineMetrics]
    knn: dict[str, Any]
    linear: dict[str, Any]
    label_efficiency: list[EfficiencyRow]
    supervised_recipe: dict[str, Any] | None
    confusion_matrix: list[list[int]]
    per_class_top1: list[float]
    class_names: list[Any]
    feature_keys: dict[str, str]
    num_train: int
    num_test: int
    detail: NotRequired[dict[str, Any]]  # the manifest leaves it out (metrics_detail)
    seconds: dict[str, float]


_ADAPTER: TypeAdapter[ProbeMetrics] | None = None


def check_metrics(metrics: dict[str, Any], where: str = "metrics") -> ProbeMetrics:
    """``metrics`` unchanged if it matches :class:`ProbeMetrics`, else a StageInputError naming the keys."""
    global _ADAPTER
    if _ADAPTER is None:
        _ADAPTER = TypeAdapter(ProbeMetrics)
    try:
        _ADAPTER.validate_python(metrics, strict=False)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:8])
        raise StageInputError(
            f"{where} does not match the probe metrics schema (core/evaluation/metrics.py): {problems}. "
            "It was written by another pretextflow version, or edited by hand: re-run the probe stage."
        ) from None
    return metrics  # type: ignore[return-value]


def efficiency_value(row: dict[str, Any], column: Column) -> float | None:
    """One accuracy of a label-efficiency row, ``None`` where that protocol did not run."""
    return row.get(column.key)


def flat_accuracies(metrics: dict[str, Any], prefix: str = "probe/") -> dict[str, float]:
    """Every accuracy of a probe's metrics under one flat name, as trackers and DVC show them: the
    headline (``probe/linear_top1``, ``probe/knn_top1``, ``probe/linear_top5``), the baselines on all
    labels (``probe/random_init/linear_top1``) and each label-efficiency cell by method and fraction
    of the labels (``probe/ssl_linear_top1@10%``, ``probe/supervised_top1@1%``)."""
    out = {prefix + k: float(metrics[k]) for k in HEADLINE if metrics.get(k) is not None}
    for name, baseline in sorted(metrics.get("baselines", {}).items()):
        for k, v in sorted(baseline.items()):
            if v is not None:
                out[f"{prefix}{name}/{k}"] = float(v)
    for row in metrics.get("label_efficiency", []):
        pct = f"{row['fraction'] * 100:g}%"
        for column in EFFICIENCY_COLUMNS:
            value = efficiency_value(row, column)
            if value is not None:
                out[f"{prefix}{column.key}@{pct}"] = float(value)
    return out
