"""``tensorboard``: the run as TensorBoard event files, under ``<workspace>/runs/<run_id>/tensorboard/``.

Scalars per step (``pretrain/loss`` at each logged step), the report's figures (PNG artifacts) as
images, the final metrics as scalars under ``final/``, and the resolved config as a text table
(``hparams``). Written with ``torch.utils.tensorboard.SummaryWriter``, which needs the
``tensorboard`` package (``pip install 'pretextflow[trackers]'``); ``tensorboard --logdir
<workspace>/runs`` shows every run side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from pretextflow.api import Params, PluginError, RunInfo, RunLogger, hookimpl

from .flatten import flatten, markdown_table

INSTALL = "pip install 'pretextflow[trackers]'"


class TensorBoardOptions(Params):
    log_dir: str | None = Field(
        None, description="folder for the event files; None = <workspace>/runs/<run_id>/tensorboard"
    )
    flush_secs: int = Field(30, gt=0, le=3600, description="write pending events to disk at least this often")
    images: bool = Field(True, description="log PNG artifacts (the report's figures) as images")


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise PluginError(
            f"the tensorboard logger needs the tensorboard package ({exc}): {INSTALL}, "
            f"or remove tensorboard from logging.loggers"
        ) from None
    return SummaryWriter


class TensorBoardLogger(RunLogger):
    name = "tensorboard"
    description = "TensorBoard event files under the run: scalars per step, the report's figures as images"
    Options = TensorBoardOptions

    def __init__(self, options: TensorBoardOptions | None = None):
        super().__init__(options)
        _summary_writer()  # a missing library is an error now, before the run, naming the fix
        self._writer: Any = None
        self.log_dir: Path | None = None

    def start(self, run: RunInfo) -> None:
        if self.options.log_dir:
            log_dir = Path(self.options.log_dir)
        else:
            log_dir = Path(run.workspace or ".") / "runs" / run.run_id / "tensorboard"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self._writer = _summary_writer()(log_dir=str(log_dir), flush_secs=self.options.flush_secs)
        self._writer.add_text("run", f"pretextflow run `{run.run_id}` {run.name}".strip())
        self._writer.add_text("hparams", markdown_table(flatten(run.config)))

    def log_metrics(self, metrics: dict[str, float], step: int | None, stage: str) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)

    def log_artifact(self, path: str, name: str | None = None) -> None:
        if not (self.options.images and path.lower().endswith(".png")):
            return  # TensorBoard holds no files: only figures are worth showing there
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        tag = "artifacts/" + (name or Path(path).name).removesuffix(".png")
        self._writer.add_image(tag, pixels, global_step=0, dataformats="HWC")

    def end(self, status: str, metrics: dict[str, float]) -> None:
        if self._writer is None:
            return  # never started, or already ended
        for name, value in metrics.items():
            self._writer.add_scalar(f"final/{name}", value, global_step=0)
        self._writer.add_text("status", status)
        self._writer.flush()
        self._writer.close()
        self._writer = None


@hookimpl
def pretextflow_loggers():
    return [TensorBoardLogger]
