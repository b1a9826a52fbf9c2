"""The run configuration: one YAML per experiment, validated by pydantic, overridable by
``--set key=value``. Unknown keys and invalid values are errors that name the field."""

from __future__ import annotations

import math
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
from pretextflow.core.security.redaction import has_url_credentials, register_secrets, register_url_secrets


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
    uri: CredentialURI | None = Field(
        None,
        description="where the stages read the ingested dataset: None = the workspace's data/ folder; an "
        "fsspec URI of a folder holding <name>/ (s3://bucket/datasets) for nodes that do not hold the data: "
        "images are read row range by row range, with store.storage_options",
    )

    @model_validator(mode="after")
    def _read_from_one_place(self) -> DataConfig:
        if self.uri and self.source:
            raise ValueError(
                f"uri and source are both set for {self.name!r}: the stages read the dataset at uri, so "
                f"an ingest of source would never be used. Ingest where the data is published (without "
                f"uri), copy data/{self.name}/ to the uri, and keep only uri on the nodes that read it."
            )
        return self


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
    nodes: int = Field(
        1,
        gt=0,
        description="machines that train together, each running train.devices processes "
        "(the same command on every node; they meet at train.rdzv_endpoint)",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port of the rendezvous (PyTorch's c10d) that the nodes meet at; the node whose "
        "address it is hosts it. Needed with nodes > 1; None on one node = a free local port",
    )
    rdzv_timeout: int = Field(600, gt=0, description="seconds to wait for every node to join the rendezvous")
    max_restarts: int = Field(
        3,
        ge=0,
        description="with several processes: restarts of the whole group after a worker dies (from the "
        "last checkpoint, see checkpoint_every_steps); errors a restart would repeat stop at once",
    )
    local_addr: str | None = Field(
        None, description="this node's address as the other nodes reach it; None = its hostname (127.0.0.1 on one node)"
    )
    sync_batchnorm: bool = Field(True, description="with devices > 1: BatchNorm statistics over the global batch")
    compile: bool = Field(False, description="torch.compile the backbone (worth it on GPUs; slow to start)")
    channels_last: bool = Field(True, description="channels_last memory format for CNNs on CUDA")

    @model_validator(mode="after")
    def _global_batch_splits(self) -> TrainConfig:
        world = self.devices * self.nodes
        if self.batch_size % world:
            what = f"devices {self.devices}" if self.nodes == 1 else f"nodes x devices = {world}"
            raise ValueError(
                f"batch_size {self.batch_size} must be divisible by {what} "
                f"(it is the global batch; each process takes batch_size / {world})"
            )
        return self

    @model_validator(mode="after")
    def _nodes_meet_somewhere(self) -> TrainConfig:
        if self.nodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"nodes={self.nodes} needs rdzv_endpoint: the host:port every node can reach, on the "
                f"first node (e.g. node0.cluster:29400)"
            )
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"rdzv_endpoint {self.rdzv_endpoint!r} is not host:port (e.g. node0.cluster:29400 or 10.0.0.5:29400)"
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


class TuningConfig(Strict):
    """How the networks trained on a labelled subset (LP-FT and the supervised baseline) choose their
    learning rate and length: k-fold cross-validation on the subset's own labels (stratified; never
    the test split). Each candidate is (the recipe's lr x a factor, its epochs x a factor); the one
    with the best mean validation top-1 over the folds is retrained on the whole subset and scored
    once on the test split. The supervised baseline gets the same folds, the same grid of factors
    and so the same number of training runs as LP-FT: a baseline is never under-tuned. Subsets of
    more than ``max_labels`` labels (and 100%) train with the recipe's values, untuned, both alike."""

    folds: int = Field(5, ge=2, le=20, description="k of the stratified k-fold CV on the labelled subset")
    lr_factors: list[float] = Field([0.3, 1.0, 3.0], min_length=1, description="candidate lrs: the recipe's x these")
    epoch_factors: list[float] = Field(
        [0.5, 1.0], min_length=1, description="candidate lengths: the recipe's epochs (and min_steps) x these"
    )
    max_labels: int = Field(10_000, ge=1, description="subsets with more labels are not tuned (the recipe's values)")

    @field_validator("lr_factors", "epoch_factors")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("every factor must be > 0")
        return sorted(set(v))


class LPFTConfig(Strict):
    """Linear probe, then fine-tune (Kumar et al., ICLR'22): the linear head is fitted on the frozen
    SSL features (the linear probe's L-BFGS fit), then backbone and head are fine-tuned together with
    the supervised recipe (its augmentation, schedule and budget) at ``lr_scale`` x its lr, the lr
    and epochs chosen by ``probe.tuning``."""

    lr_scale: float = Field(0.1, gt=0, description="fine-tuning lr = probe.supervised.lr x this (x the tuned factor)")


class SemiSupervisedConfig(Strict):
    """FixMatch (Sohn et al. 2020) consistency training on a labelled subset plus the unlabelled pool
    (every training image): a weak view's confident prediction is the pseudo label of a strong view
    of the same image. Run from the SSL backbone and, with the same recipe and budget, from random
    initialisation, so the report separates what SSL adds from what the unlabelled loss adds."""

    steps: int = Field(2000, gt=0, description="training steps (each: a labelled and an unlabelled batch)")
    batch_size: int = Field(64, gt=0, description="labelled images per step")
    mu: int = Field(4, ge=1, description="unlabelled images per step = mu x batch_size")
    threshold: float = Field(0.95, ge=0, le=1, description="pseudo labels below this confidence are masked out")
    lambda_u: float = Field(1.0, ge=0, description="weight of the unlabelled (consistency) loss")
    lr: float = Field(2e-3, gt=0, description="AdamW, linear warm-up then cosine decay (the same from SSL or scratch)")
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    weak_crop_scale_min: float = Field(0.8, gt=0, le=1, description="weak view: random resized crop + flip")
    strong_crop_scale_min: float = Field(0.2, gt=0, le=1, description="strong view: crop, flip, jitter, grayscale")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="on the labelled loss")


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
    lpft: bool = Field(
        False, description="also LP-FT from the SSL backbone on each labelled subset (probe.lpft_recipe)"
    )
    lpft_recipe: LPFTConfig = LPFTConfig()
    tuning: TuningConfig | None = Field(
        None,
        description="k-fold CV of lr and epochs for LP-FT and the supervised baseline alike; None = the recipes' values",
    )
    semisupervised: bool = Field(
        False, description="also FixMatch on each labelled subset below 100%, from the SSL backbone and from scratch"
    )
    semisupervised_recipe: SemiSupervisedConfig = SemiSupervisedConfig()
    lpft_fractions: list[float] | None = Field(
        None, description="the label fractions LP-FT runs at (each one of label_fractions); None = all of them"
    )
    semisupervised_fractions: list[float] | None = Field(
        None,
        description="the label fractions FixMatch runs at (each one of label_fractions, below 1); None = all below 1",
    )
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

    @model_validator(mode="after")
    def _protocol_fractions(self) -> ProbeConfig:
        for name in ("lpft_fractions", "semisupervised_fractions"):
            chosen = getattr(self, name)
            if chosen is None:
                continue
            unknown = [f for f in chosen if not in_fractions(f, self.label_fractions)]
            if unknown:
                raise ValueError(
                    f"probe.{name} {unknown} are not in probe.label_fractions {self.label_fractions}: "
                    f"add them there, or choose among those"
                )
            if name == "semisupervised_fractions" and any(f >= 1 for f in chosen):
                raise ValueError("probe.semisupervised_fractions: FixMatch needs unlabelled images, so fractions < 1")
        return self


def in_fractions(fraction: float, fractions: list[float]) -> bool:
    """Whether ``fraction`` is one of ``fractions`` (label fractions compare with ``math.isclose``)."""
    return any(math.isclose(fraction, f) for f in fractions)


class ReportConfig(Strict):
    regression_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fail the run when linear top-1 drops by more than this (0.01 = 1 point) "
        "against the previous run of the same config name; None = never",
    )


class MonitorConfig(Strict):
    """Online monitors during pretraining (``core/training/monitors.py``): every ``every_epochs``
    epochs and after the last, kNN top-1 on a small seeded labelled subset of the *training* split
    and RankMe (Garrido et al. 2023: the effective rank of the embeddings of a fixed batch), a
    label-free collapse signal. They read the backbone and change nothing it learns.

    ``collapse_rank`` defaults to 1.5, an absolute threshold rather than a fraction of min(n, dim).
    RankMe is 1 (+ ~1e-3: the eps and float error) when every image maps to one vector, the
    collapse ``stop_on_collapse`` is for, and at most min(n, dim). Healthy runs use only part of
    their dimensions, and how much depends on the backbone, its width and the method (measured on
    the demo's convnet-s, 128 features: 27.8 at random initialisation, 16 to 23 over its first 30
    SimCLR steps), so a fraction of the dimension would have to be tuned per backbone to avoid
    stopping healthy runs. 1.5 sits just above the collapsed value, with room for its float noise
    and for a near-constant output (a constant plus noise of 0.1% of it: 1.05 at 16 dimensions,
    1.47 at 2048), and far below the healthy runs measured. Raise it to also stop partial
    (dimensional) collapse."""

    every_epochs: int = Field(1, ge=0, description="check every N epochs, and after the last; 0 = off")
    knn_samples: int = Field(
        1000,
        ge=2,
        description="labelled training images of the kNN check (class-stratified, seeded; never test); "
        "all of them when the dataset has fewer",
    )
    knn_k: int = Field(20, ge=1, description="neighbours of the kNN vote (weights exp(cos / 0.07))")
    rankme_samples: int = Field(
        512, ge=2, description="training images (labelled or not, a fixed seeded batch) RankMe is computed on"
    )
    stop_on_collapse: bool = Field(False, description="stop the run when RankMe stays below collapse_rank")
    collapse_rank: float = Field(
        1.5, ge=1, description="RankMe below this is collapse (1 = every image has the same embedding)"
    )
    collapse_patience: int = Field(1, ge=1, description="consecutive checks below collapse_rank before stopping")


class ProgressConfig(Strict):
    """How a running stage shows its progress (``core/training/progress.py``): nothing it computes
    depends on it, so it is in no stage key."""

    mode: Literal["auto", "bars", "lines", "off"] = Field(
        "auto",
        description="auto = rich progress bars when stderr is a terminal, plain lines otherwise (CI, "
        "Prefect workers, nohup); off = neither (the CLI's --quiet)",
    )
    every_s: float = Field(30.0, gt=0, description="plain lines: one per bar at most every N seconds (and every 10%)")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML reads a bare `off` (`--set progress.mode=off`, `mode: off`) as false, `on` as true
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v


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


class LoggingConfig(Strict):
    """Experiment trackers the run is sent to (logger plugins: ``pretextflow plugins`` lists them).

    ``options.<logger>`` holds one logger's options, validated by its ``Options`` model (before any
    work starts). Values may be ``${env:NAME}`` references (an MLflow tracking URI with credentials,
    a token): resolved here, masked in every message and log record, serialised as references only."""

    loggers: list[str] = Field([], description="logger plugins to turn on, e.g. [tensorboard, mlflow]")
    options: dict[str, dict[str, Any]] = Field(
        {}, validate_default=True, description="per logger: its options, e.g. {mlflow: {tracking_uri: ...}}"
    )

    @field_validator("loggers")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("options")
    @classmethod
    def _remember_secrets(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        v = credentials.resolve_options(v)
        register_secrets(v)  # credential-named values (token, password, api_key...)
        for value in _strings(v):
            register_url_secrets(value)  # the USER:PASS of a tracking URI
        return v

    @field_serializer("options")
    def _options_by_reference(self, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        protected = credentials.protect_options(v)
        return {name: {k: _protect_url(x) for k, x in opts.items()} for name, opts in protected.items()}


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _protect_url(value: Any) -> Any:
    """A URL with credentials as one reference: the ``${env:NAME}`` it was read from, or a new one."""
    return credentials.reference(value) if isinstance(value, str) and has_url_credentials(value) else value


class RunConfig(Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**31 - 1, description="below 2^31: torch, numpy and scikit-learn all take it")
    data: DataConfig
    backbone: BackboneConfig = BackboneConfig()
    pretext: PretextConfig = PretextConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    report: ReportConfig = ReportConfig()
    monitor: MonitorConfig = MonitorConfig()
    progress: ProgressConfig = ProgressConfig()
    store: StoreConfig = StoreConfig()
    logging: LoggingConfig = LoggingConfig()


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


_MAY_HOLD_CREDENTIALS = ("store.storage_options", "store.uri", "data.source", "data.uri", "logging.options")


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
