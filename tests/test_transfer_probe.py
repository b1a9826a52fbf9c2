"""Issue #16, evaluate on your own task: ``probe.data`` probes a backbone pretrained on one dataset
on another labelled dataset, resized to the backbone's input; both datasets are in the manifest,
the probe key and the report."""

from __future__ import annotations

import numpy as np
import pytest

from pretextflow.core.errors import DataError
from pretextflow.core.stages import StageContext, run_freeze, run_ingest, run_pretrain, run_probe, run_report

from .conftest import REPO


def _digit_folder(root, size: int, mode: str = "L", n: int = 400):
    """sklearn's digits as an imagefolder of size x size PNGs in train/ and test/ class folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images[:n], d.target[:n], strict=True)):
        split = "test" if i % 4 == 0 else "train"
        folder = root / split / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        im.convert(mode).save(folder / f"{i:04d}.png")
    return root


def _config(folder, name="digits16"):
    from pretextflow.core.config import load_config

    return load_config(
        REPO / "configs" / "digits_smoke.yaml",
        [
            "train.epochs=1",
            "probe.label_fractions=[0.5, 1.0]",
            "probe.baselines=[random_init, pixels, supervised]",
            "probe.supervised.min_steps=50",
            f"probe.data.name={name}",
            f"probe.data.source={folder}",
            "probe.data.format=imagefolder",
        ],
    )


def test_a_transfer_probe_judges_the_backbone_on_another_dataset(tmp_path):
    from pretextflow.core.data.versioning import init_workspace

    ws = init_workspace(tmp_path / "ws")
    cfg = _config(_digit_folder(tmp_path / "digits16", 16))
    ctx = StageContext.create(cfg, str(ws.root))
    ingested = run_ingest(ctx, push=False)
    assert ingested["name"] == "digits" and ingested["probe_data"]["name"] == "digits16"
    assert ingested["data_version"] == ingested["probe_data"]["data_version"]  # one version holds both
    run_pretrain(ctx)
    run_freeze(ctx)
    metrics = run_probe(ctx)["metrics"]
    out = run_report(ctx)
    manifest = out["manifest"]
    assert manifest["dataset"]["name"] == "digits" and manifest["dataset"]["image_shape"] == [1, 8, 8]
    probe_ds = manifest["probe_dataset"]
    assert probe_ds["name"] == "digits16" and probe_ds["image_shape"] == [1, 8, 8]
    assert probe_ds["source_image_shape"] == [1, 16, 16]
    assert metrics["num_train"] == 300 and metrics["num_test"] == 100
    assert metrics["linear_top1"] > 0.5  # digits features transfer to (resized) digits
    rows = metrics["label_efficiency"]
    assert rows[-1]["supervised_top1"] is not None and rows[-1]["num_labels"] == 300
    report = ctx.store.read_bytes("runs", out["run_id"], "report.md").decode()
    assert "pretrained on digits" in report and "on the digits16 test split" in report
    # the probe key follows the probe dataset, the pretrain key does not
    plain = StageContext.create(
        cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"data": None})}), str(ws.root)
    )
    ds = ctx.dataset()
    assert plain.keys(ds)["pretrain"] == ctx.keys(ds)["pretrain"]
    assert plain.keys(ds)["probe"] != ctx.keys(ds)["probe"]


def test_a_probe_dataset_with_other_channels_is_refused(tmp_path):
    from pretextflow.core.data.versioning import init_workspace

    ws = init_workspace(tmp_path / "ws")
    cfg = _config(_digit_folder(tmp_path / "rgb", 8, mode="RGB", n=40), name="rgb")
    ctx = StageContext.create(cfg, str(ws.root))
    run_ingest(ctx, push=False)
    with pytest.raises(DataError, match=r"3-channel images.*pretrained on 1-channel.*channels=1"):
        ctx.keys(ctx.dataset())
