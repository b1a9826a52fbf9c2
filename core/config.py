"""The run configuration: one YAML per experiment, validated by pydantic, overridable by
``--set key=value``. Unknown keys and invalid values are errors that name the field."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    name: str = Field(description="dataset name in the workspace's data/ folder")
    source: str | None = Field(None, description="fsspec URI to ingest from; None = use the ingested dataset")
    format: str | None = Field(None, description="dataset-format plugin for `source`")
    options: dict[str, Any] = Field({}, description="options of the dataset format")


class BackboneConfig(Strict):
    name: str = "convnet-s"
    small_image_stem: bool = True
    kwargs: dict[str, Any] = {}


class PretextConfig(Strict):
    name: str = "rotation"
    params: dict[str, Any] = {}


class TrainConfig(Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 if supported, else fp16 + scaling)")
    threads: int | None = Field(None, gt=0, description="CPU threads; None = all cores")
    max_train_samples: int | None = Field(None, gt=0, description="use only the first N training images")
    checkpoint_every: int = Field(1, gt=0, description="checkpoint every N epochs")
    log_every: int = Field(50, gt=0, description="log the loss every N steps")


class ProbeConfig(Strict):
    knn_k: list[int] = Field([200, 20], min_length=1)
    knn_temperature: float = Field(0.07, gt=0)
    linear_weight_decays: list[float] = Field([1e-6, 1e-5, 1e-4, 1e-3], min_length=1)
    linear_max_iter: int = Field(100, gt=0, description="L-BFGS iterations per fit")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="of the labelled train split, to choose weight decay")
    batch_size: int = Field(1024, gt=0, description="feature-extraction batch size")
    baselines: list[Literal["random_init", "pixels"]] = ["random_init", "pixels"]

    @field_validator("knn_k")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k <= 0 for k in v):
            raise ValueError("every k must be positive")
        return v


class StoreConfig(Strict):
    uri: str = Field("artifacts", description="artifact store: fsspec URI, or a path relative to the workspace")
    storage_options: dict[str, Any] = Field({}, description="fsspec options (credentials come from the environment)")


class RunConfig(Strict):
    name: str = "run"
    seed: int = Field(0, ge=0)
    data: DataConfig
    backbone: BackboneConfig = BackboneConfig()
    pretext: PretextConfig = PretextConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    store: StoreConfig = StoreConfig()


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                raw: dict[str, Any] | None = None) -> RunConfig:
    """YAML file (or a dict) + overrides -> a validated RunConfig, or a ConfigError naming the field."""
    origin = str(path) if path else "config"
    if raw is None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read the config ({exc.strerror}).") from exc
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
        field = prefix + ".".join(str(p) for p in err["loc"])
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
