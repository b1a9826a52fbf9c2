"""The run configuration: one YAML per experiment, validated by pydantic, overridable by
``--set key=value``. Unknown keys and invalid values are errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from pretextflow.core.errors import ConfigError
from pretextflow.core.security import credentials
from pretextflow.core.security.redaction import register_secrets, register_url_secrets


class Strict(BaseModel):
    # unknown keys are errors; so are inf and nan (`lr: .inf` would pass gt=0 and train to nan)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# A dataset's folder name under data/: no '/', no '..', so a config can never name a path elsewhere.
DATASET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _resolve_uri(uri: str | None) -> str | None:
    """A URI with its ``${env:NAME}`` references resolved and its ``USER:PASS@`` registered as a secret
    (masked from then on in every message, log record and report: fsspec logs paths without the scheme)."""
    uri = credentials.resolve(uri) if uri else uri
    register_url_secrets(uri)
    return uri


CredentialURI = Annotated[str, AfterValidator(_resolve_uri), PlainSerializer(credentials.protect_uri)]
"""A URI that may hold credentials (data.source, backbone.weights, store.uri): resolved when validated,
serialised as references only (Prefect stores flow parameters)."""


class IngestConfig(Strict):
    """How a source is ingested (never what the dataset holds: the result is the same for any value)."""

    shard_mb: float = Field(
        256.0, gt=0, description="largest shard file, MiB (images per shard = shard_mb / image size)"
    )
    workers: int | None = Field(
        None, ge=1, description="decode processes (local) or LocalCluster workers; None = the cores"
    )
    runner: Literal["local", "dask"] = Field("local", description="decode on this machine, or on a Dask cluster")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster (tcp://HOST:8786)")


class DataConfig(Strict):
    name: str = Field(description="dataset name in the workspace's data/ folder")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if not DATASET_NAME_RE.match(v):
            raise ValueError(
                "use 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(e.g. fashion-mnist)"
            )
        return v

    source: CredentialURI | None = Field(None, description="fsspec URI to ingest from; None = use the ingested dataset")
    format: str | None = Field(None, description="dataset-format plugin for `source`")
    options: dict[str, Any] = Field({}, description="options of the dataset format")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="shard size and decode workers")


class BackboneConfig(Strict):
    name: str = "convnet-s"
    small_image_stem: bool | Literal["auto"] = Field(
        "auto",
        description="a stride-1 stem without max-pool for small images; auto = only below 64 px "
        "(at 224 px a small stem would cost ~16x the activations)",
    )
    kwargs: dict[str, Any] = {}
    weights: CredentialURI | None = Field(
        None,
        description="initial weights: a safetensors file on any fsspec URI (a timm model.safetensors, a "
        "pretextflow backbone.safetensors) or hf-hub:ORG/NAME; None = random initialisation",
    )


class PretextConfig(Strict):
    name: str = "rotation"
    params: dict[str, Any] = {}


class TrainConfig(Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(
        256,
        ge=2,
        description="the global batch; at least 2 (batch statistics: BatchNorm heads, variance and correlation losses)",
    )
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, gt=0, lt=1, description="SGD's Nesterov momentum (Nesterov needs it > 0)")
    warmup_epochs: float = Field(1.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 if supported, else fp16 + scaling)")
    threads: int | None = Field(None, gt=0, description="CPU threads; None = all cores")
    max_train_samples: int | None = Field(None, gt=0, description="use only the first N training images")
    image_size: int | None = Field(
        None,
        gt=0,
        le=4096,
        description="the backbone's input side in px: views are cropped from the stored images and "
        "resized to it, and evaluation resizes to it; None = the dataset's stored size",
    )
    checkpoint_every: int = Field(1, gt=0, description="checkpoint every N epochs")
    checkpoint_every_steps: int | None = Field(
        None,
        gt=0,
        description="also checkpoint every N optimizer steps, "
        "mid-epoch (a crash then loses at most N steps); None = per epoch only",
    )
    on_nonfinite: Literal["stop", "rollback"] = Field(
        "stop",
        description="after a non-finite loss (or weights): stop with an error, keeping the last good "
        "checkpoint; or roll back to it, multiply the lr by rollback_lr_factor and go on",
    )
    rollback_lr_factor: float = Field(0.5, gt=0, lt=1, description="on_nonfinite: rollback multiplies the lr by this")
    max_rollbacks: int = Field(3, gt=0, description="on_nonfinite: rollback stops with an error after this many")
    log_every: int = Field(50, gt=0, description="log the loss every N steps")
    devices: int = Field(
        1,
        gt=0,
        description="processes for data-parallel training (DDP): gloo on the CPU, "
        "one GPU each with NCCL; batch_size stays the global batch",
    )
    sync_batchnorm: bool = Field(True, description="with devices > 1: BatchNorm statistics over the global batch")
    compile: bool = Field(False, description="torch.compile the backbone (worth it on GPUs; slow to start)")
    channels_last: bool = Field(True, description="channels_last memory format for CNNs on CUDA")

    @model_validator(mode="after")
    def _global_batch_splits(self) -> TrainConfig:
        if self.batch_size % self.devices:
            raise ValueError(
                f"batch_size {self.batch_size} must be divisible by devices {self.devices} "
                f"(it is the global batch; each process takes batch_size / devices)"
            )
        return self


class SupervisedConfig(Strict):
    """The supervised-from-scratch baseline (and, with ``probe.finetune``, fine-tuning): the same
    backbone architecture plus a linear head, trained with cross-entropy on a labelled subset."""

    epochs: int = Field(15, gt=0, description="passes over the labelled subset")
    min_steps: int = Field(500, ge=0, description="small subsets still get this many updates (to converge)")
    batch_size: int = Field(128, gt=0)
    lr: float = Field(2e-3, gt=0, description="AdamW, linear warm-up then cosine decay")
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    crop_scale_min: float = Field(0.5, gt=0, le=1, description="random resized crop; its own augmentation")
    flip_p: float = Field(0.5, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class ProbeConfig(Strict):
    knn_k: list[int] = Field([200, 20], min_length=1)
    knn_temperature: float = Field(0.07, gt=0)
    linear_weight_decays: list[float] = Field([1e-6, 1e-5, 1e-4, 1e-3], min_length=1)
    linear_max_iter: int = Field(100, gt=0, description="L-BFGS iterations per fit")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="of the labelled train split, to choose weight decay")
    batch_size: int = Field(1024, gt=0, description="feature-extraction batch size")
    baselines: list[Literal["random_init", "pixels", "supervised"]] = ["random_init", "pixels", "supervised"]
    label_fractions: list[float] = Field(
        [0.01, 0.1, 1.0], min_length=1, description="labelled fractions for the label-efficiency table"
    )
    label_seeds: int = Field(1, gt=0, description="subset draws per fraction below 1 (mean +- std when > 1)")
    supervised: SupervisedConfig = SupervisedConfig()
    finetune: bool = Field(False, description="also fine-tune the SSL backbone on each labelled subset")
    finetune_lr_scale: float = Field(0.1, gt=0, description="fine-tuning lr = supervised.lr x this")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="features, probes and supervised runs: auto = the GPU when there is one"
    )
    data: DataConfig | None = Field(
        None,
        description="probe on this labelled dataset instead of the pretraining one (a transfer probe): "
        "name, and source + format to ingest it; resized to the backbone's input size",
    )

    @field_validator("knn_k")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError("every k must be positive")
        return list(dict.fromkeys(v))  # each k once, in order: the first is the headline k

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("every fraction must be in (0, 1], e.g. [0.01, 0.1, 1.0]")
        return sorted(set(v))


class ReportConfig(Strict):
    regression_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fail the run when linear top-1 drops by more than this (0.01 = 1 point) "
        "against the previous run of the same config name; None = never",
    )


class StoreConfig(Strict):
    uri: CredentialURI = Field(
        "artifacts", description="artifact store: fsspec URI, or a path relative to the workspace"
    )
    storage_options: dict[str, Any] = Field(
        {}, validate_default=True, description="fsspec options (credentials come from the environment)"
    )

    @field_validator("storage_options")
    @classmethod
    def _remember_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        # ${env:NAME} references are resolved, and any credential (key, secret, token...) is masked
        # from then on in every message, log record and report of this process
        v = credentials.resolve_options(v)
        register_secrets(v)
        return v

    @field_serializer("storage_options")
    def _options_by_reference(self, v: dict[str, Any]) -> dict[str, Any]:
        return credentials.protect_options(v)  # Prefect stores flow parameters: references only

    min_free_mb: float = Field(
        100,
        ge=0,
        description="a stage that writes checks first that a local store has this "
        "much free space (MB), and stops with a clear error if not; 0 = no check",
    )


class RunConfig(Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**31 - 1, description="below 2^31: torch, numpy and scikit-learn all take it")
    data: DataConfig
    backbone: BackboneConfig = BackboneConfig()
    pretext: PretextConfig = PretextConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    report: ReportConfig = ReportConfig()
    store: StoreConfig = StoreConfig()


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        if key.strip().startswith(_MAY_HOLD_CREDENTIALS):  # the value may hold a credential: not echoed
            mark = getattr(exc, "problem_mark", None)
            where = f" at column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "parse error"
            raise ConfigError(
                f"--set {key.strip()}=...: the value is not valid YAML ({problem}{where}). "
                'Quote values such as "${env:NAME}".'
            ) from None
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


_MAY_HOLD_CREDENTIALS = ("store.storage_options", "store.uri", "data.source")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return raw


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, raw: dict[str, Any] | None = None
) -> RunConfig:
    """YAML file (or a dict) + overrides -> a validated RunConfig, or a ConfigError naming the field."""
    origin = str(path) if path else "config"
    if raw is None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(
                f"{origin}: cannot read the config ({exc.strerror}). Check the path; configs/ holds examples."
            ) from exc
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(origin, exc)) from None


def format_validation_error(origin: str, exc: ValidationError, prefix: str = "") -> str:
    lines = [f"{origin}: invalid configuration"]
    for err in exc.errors():
        field = (prefix + ".".join(str(p) for p in err["loc"])).rstrip(".")  # a model-level check: its section
        got = err.get("input")
        got_text = "" if err["type"] == "missing" else f" (got {got!r})"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown key. Check the spelling; see configs/ for the known keys.")
        else:
            lines.append(f"  {field}: {err['msg']}{got_text}")
    return "\n".join(lines)


def validate_plugin_params(model: type[BaseModel], values: dict[str, Any], where: str) -> BaseModel:
    """Validate a plugin's params with the same error style as the config (``pretext.params.x``)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error("config", exc, prefix=where + ".")) from None
