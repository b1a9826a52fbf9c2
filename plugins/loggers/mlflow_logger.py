"""``mlflow``: one MLflow run per pipeline run, through ``mlflow.tracking.MlflowClient``.

``start`` creates the run in the experiment (``experiment``, default ``pretextflow``) on the
tracking server or store ``tracking_uri`` (None: MLflow's own default, which reads
``MLFLOW_TRACKING_URI``), tagged with the pretextflow run id, the dataset, the method and the
backbone, and logs the resolved config flattened as params (``train.lr``...); ``log_metrics`` sends
each step's metrics in one ``log_batch``; artifacts are uploaded with ``log_artifact``; ``end`` logs
the final metrics and sets the run's status (FINISHED, FAILED, KILLED).

Explicit run ids everywhere: no global active run (``mlflow.start_run``), so nothing else in the
process is affected. Credentials: a tracking URI with ``USER:PASS@`` (or ``${env:NAME}``
resolving to one) is redacted in every message; MLflow's own ``MLFLOW_TRACKING_USERNAME`` /
``_PASSWORD`` / ``_TOKEN`` work as usual. Needs ``pip install 'pretextflow[trackers]'`` (the
MLflow client, ``mlflow-skinny``; the full ``mlflow`` works too)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from pretextflow.api import Params, PluginError, RunInfo, RunLogger, hookimpl, redact

from .flatten import flatten

INSTALL = "pip install 'pretextflow[trackers]'"
# The lowest limits any MLflow server applies (older servers keep param values to 500 characters).
MAX_PARAM_VALUE = 500
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
STATUS = {"completed": "FINISHED", "cached": "FINISHED", "killed": "KILLED", "cancelled": "KILLED"}
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_SET_BY_US: dict[str, str] = {}  # the MLFLOW_HTTP_REQUEST_* variables this module set (the user's win)


class MlflowOptions(Params):
    tracking_uri: str | None = Field(
        None,
        description="tracking server or store (http://HOST:5000, sqlite:///mlflow.db, databricks); None = "
        "MLflow's default (MLFLOW_TRACKING_URI, else its local store). A URI with credentials: ${env:NAME}",
    )
    experiment: str = Field("pretextflow", min_length=1, max_length=500, description="the MLflow experiment")
    artifacts: bool = Field(True, description="upload the run's artifacts (report, manifest, figures, the backbone)")
    tags: dict[str, str] = Field({}, description="extra tags on every run")
    max_retries: int = Field(
        2, ge=0, le=10, description="HTTP retries per request (MLFLOW_HTTP_REQUEST_MAX_RETRIES wins when set)"
    )
    request_timeout: int = Field(
        15, gt=0, le=600, description="seconds per HTTP request (MLFLOW_HTTP_REQUEST_TIMEOUT wins when set)"
    )


def _mlflow() -> Any:
    try:
        import mlflow.entities
        import mlflow.tracking
    except ImportError as exc:
        raise PluginError(
            f"the mlflow logger needs MLflow's client ({exc}): {INSTALL} (mlflow-skinny, or mlflow), "
            f"or remove mlflow from logging.loggers"
        ) from None
    return mlflow


def _http_settings(options: MlflowOptions) -> None:
    """Bounded requests, so a dead server fails a call in seconds, not minutes: MLflow reads these
    variables on every request. A value the user set is kept."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": options.max_retries,
        "MLFLOW_HTTP_REQUEST_TIMEOUT": options.request_timeout,
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
    }
    for var, value in wanted.items():
        current = os.environ.get(var)
        if current is None or _SET_BY_US.get(var) == current:
            os.environ[var] = _SET_BY_US[var] = str(value)


def _key(name: str) -> str:
    """A valid MLflow param / metric / tag key: letters, digits, ``_ - . / space``; at most 250 chars."""
    return _KEY_CHARS.sub("_", name)[:MAX_KEY]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _value(text: str) -> str:
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def _name_in(config: dict[str, Any], section: str) -> Any:
    value = config.get(section)
    return value.get("name") if isinstance(value, dict) else None


def _tags(run: RunInfo, extra: dict[str, str]) -> dict[str, str]:
    config = run.config
    tags = {
        "pretextflow.run_id": run.run_id,
        "dataset": _name_in(config, "data"),
        "method": _name_in(config, "pretext"),
        "backbone": _name_in(config, "backbone"),
        "config": config.get("name"),
        **extra,
    }
    return {_key(k): redact(_value(str(v))) for k, v in tags.items() if v is not None}


class MlflowLogger(RunLogger):
    name = "mlflow"
    description = "one MLflow run per pipeline run: the config as params, metrics per step, artifacts"
    Options = MlflowOptions

    def __init__(self, options: MlflowOptions | None = None):
        super().__init__(options)
        _mlflow()  # a missing library is an error now, before the run, naming the fix
        self._client: Any = None
        self.run_id: str | None = None  # the MLflow run's id (None before start and after end)

    @property
    def where(self) -> str:
        """The tracking URI for messages: credentials redacted."""
        return redact(self.options.tracking_uri or "MLflow's default tracking URI")

    def start(self, run: RunInfo) -> None:
        mlflow = _mlflow()
        _http_settings(self.options)
        client = mlflow.tracking.MlflowClient(tracking_uri=self.options.tracking_uri)
        experiment_id = self._experiment_id(client)
        created = client.create_run(
            experiment_id, tags=_tags(run, self.options.tags), run_name=_key(run.name or run.run_id)
        )
        self._client, self.run_id = client, created.info.run_id
        Param = mlflow.entities.Param
        params = [Param(_key(k), _value(v)) for k, v in flatten(run.config).items()]
        for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=chunk, synchronous=True)

    def _experiment_id(self, client: Any) -> str:
        name = self.options.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name)
            except Exception:  # created meanwhile by another run: use it
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise PluginError(
                f"the MLflow experiment {name!r} at {self.where} is deleted: restore it "
                f"(`mlflow experiments restore`) or set logging.options.mlflow.experiment to another name"
            )
        return experiment.experiment_id

    def _log(self, run_id: str, metrics: dict[str, float], step: int | None) -> None:
        Metric = _mlflow().entities.Metric
        now = int(time.time() * 1000)
        batch = [Metric(_key(k), float(v), now, int(step or 0)) for k, v in metrics.items()]
        for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=chunk, synchronous=True)

    def log_metrics(self, metrics: dict[str, float], step: int | None, stage: str) -> None:
        if self.run_id is not None:
            self._log(self.run_id, metrics, step)

    def log_artifact(self, path: str, name: str | None = None) -> None:
        if self.run_id is None or not self.options.artifacts:
            return
        source = Path(path)
        target = [p for p in (name or source.name).replace("\\", "/").split("/") if p not in ("", ".", "..")]
        folder = "/".join(target[:-1]) or None
        if source.is_dir():
            self._client.log_artifacts(self.run_id, str(source), "/".join(target) or source.name)
        elif not target or target[-1] == source.name:
            self._client.log_artifact(self.run_id, str(source), folder)
        else:  # uploaded under the name it was given
            with tempfile.TemporaryDirectory(prefix="pretextflow-mlflow-") as tmp:
                renamed = Path(tmp) / target[-1]
                shutil.copyfile(source, renamed)
                self._client.log_artifact(self.run_id, str(renamed), folder)

    def end(self, status: str, metrics: dict[str, float]) -> None:
        if self.run_id is None:
            return  # never started, or already ended
        run_id, self.run_id = self.run_id, None  # ended: a second end() does nothing, even after an error
        if metrics:
            self._log(run_id, metrics, None)
        self._client.set_terminated(run_id, status=STATUS.get(status, "FAILED"))


@hookimpl
def pretextflow_loggers():
    return [MlflowLogger]
