"""Issue #16, the backbone out of the pipeline: load_backbone from a run, a manifest and every export
folder; stock timm loading the timm export; TorchScript and onnxruntime matching PyTorch; embed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import pretextflow
from pretextflow.cli import app
from pretextflow.core.errors import DataError, StageInputError
from pretextflow.core.export.embed import embed
from pretextflow.core.export.formats import export_backbone

from .conftest import REPO, finished_run

FORMATS = ("safetensors", "torchscript", "onnx", "timm")


def _run(workspace, backbone: str, *overrides: str) -> str:
    from pretextflow.core.config import load_config

    cfg = load_config(
        REPO / "configs" / "digits_smoke.yaml",
        [
            "train.epochs=1",
            "data.source=null",
            f"backbone.name={backbone}",
            "probe.label_fractions=[1.0]",
            "probe.baselines=[]",
            *overrides,
        ],
    )
    return finished_run(cfg, workspace.root)


@pytest.fixture(scope="module")
def timm_run(digits_workspace):
    """A timm ResNet with timm's own stem, so every format (timm included) can express it."""
    return _run(digits_workspace, "timm/resnet10t", "backbone.small_image_stem=false", "backbone.kwargs={}")


@pytest.fixture(scope="module")
def convnet_run(digits_workspace):
    return _run(digits_workspace, "convnet-s")


@pytest.fixture(scope="module")
def exports(timm_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {fmt: (str(root / fmt), export_backbone(timm_run, fmt, str(root / fmt))) for fmt in FORMATS}


def _images(n=5, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 8), dtype=np.uint8))


def test_load_backbone_from_a_run_and_its_manifest(timm_run):
    fe = pretextflow.load_backbone(timm_run)
    assert not fe.training and not any(p.requires_grad for p in fe.parameters())
    x = _images()
    feats = fe(x)
    assert feats.shape == (5, fe.num_features) == (5, 512)
    assert torch.equal(pretextflow.load_backbone(timm_run + "/manifest.json")(x), feats)
    assert torch.equal(fe(x.float() / 255), feats)  # uint8 and float in [0, 1] are the same images
    assert fe.info["backbone"]["name"] == "timm/resnet10t" and fe.info["data_version"]
    assert fe.info["metrics"]["linear_top1"] > 0.5


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_loads_back_with_the_same_features(timm_run, exports, fmt):
    folder, marker = exports[fmt]
    x = _images(7, seed=1)  # not the batch size any export was traced or checked with
    want = pretextflow.load_backbone(timm_run)(x)
    got = pretextflow.load_backbone(folder, trust_torchscript=fmt == "torchscript")(x)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4
    assert marker["max_abs_error"] <= 1e-4
    card = open(f"{folder}/README.md").read()
    assert "timm/resnet10t" in card and marker["info"]["data_version"] in card and "load_backbone" in card
    assert "mean" in card and "linear_top1" in card


def test_stock_timm_loads_the_timm_export_strictly(timm_run, exports):
    import timm

    folder, _ = exports["timm"]
    cfg = json.load(open(f"{folder}/config.json"))
    assert cfg["architecture"] == "resnet10t" and cfg["num_classes"] == 0
    assert list(cfg["pretrained_cfg"]["input_size"]) == [1, 8, 8]
    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    from safetensors.torch import load_file

    missing, unexpected = net.load_state_dict(load_file(f"{folder}/model.safetensors"), strict=True)
    assert not missing and not unexpected
    x = _images().float() / 255
    mean = torch.tensor(cfg["pretrained_cfg"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["pretrained_cfg"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        got = net((x - mean) / std)
    assert torch.allclose(got, pretextflow.load_backbone(timm_run)(x), atol=1e-5)


def test_timm_export_refuses_what_timm_cannot_build(convnet_run, digits_workspace, tmp_path):
    with pytest.raises(StageInputError, match="pretextflow's own network.*safetensors"):
        export_backbone(convnet_run, "timm", str(tmp_path / "a"))
    small_stem = _run(digits_workspace, "timm/resnet10t", "backbone.kwargs={}")  # small_image_stem: true
    with pytest.raises(StageInputError, match="small_image_stem.*cannot express"):
        export_backbone(small_stem, "timm", str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-written
    # the other formats take pretextflow's own network
    export_backbone(convnet_run, "torchscript", str(tmp_path / "c"))
    with pytest.raises(StageInputError, match="runs the code inside it.*trust_torchscript=True"):
        pretextflow.load_backbone(str(tmp_path / "c"))
    assert pretextflow.load_backbone(str(tmp_path / "c"), trust_torchscript=True)(_images()).shape[0] == 5


def test_export_never_overwrites(timm_run, exports):
    folder, _ = exports["safetensors"]
    before = open(f"{folder}/backbone.safetensors", "rb").read()
    with pytest.raises(StageInputError, match="not empty"):
        export_backbone(timm_run, "torchscript", folder)
    assert open(f"{folder}/backbone.safetensors", "rb").read() == before


def test_load_backbone_names_what_it_needs(tmp_path, timm_run):
    with pytest.raises(StageInputError, match="not a run folder, a manifest.json or an export folder"):
        pretextflow.load_backbone(str(tmp_path))
    fe = pretextflow.load_backbone(timm_run)
    with pytest.raises(StageInputError, match=r"shape \(N, 1, 8, 8\).*got \(2, 3, 8, 8\)"):
        fe(torch.zeros(2, 3, 8, 8))
    with pytest.raises(StageInputError, match="batch dimension"):
        fe(torch.zeros(1, 8, 8))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 digit images as PNG files in two sub-folders, one of them 16x16 (resized on the way in)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("to-embed")
    digits = load_digits().images[:12]
    for i, img in enumerate(digits):
        arr = (img * 255 / 16).astype(np.uint8)
        (root / f"d{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(arr).save(root / f"d{i % 2}" / f"{i:02d}.png")
    return root, digits


def test_embed_writes_one_row_per_image_with_load_backbones_vectors(timm_run, image_folder, tmp_path):
    root, _ = image_folder
    fe = pretextflow.load_backbone(timm_run)
    result = embed(fe, str(root), str(tmp_path / "feats.npy"), batch_size=5)  # 3 batches, the last partial
    vectors = np.load(tmp_path / "feats.npy")
    rows = list(csv.DictReader(open(tmp_path / "feats.index.csv")))
    assert result.count == 12 and vectors.shape == (12, 512) and len(rows) == 12
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    from PIL import Image

    for r in (rows[0], rows[11]):
        img = torch.from_numpy(np.asarray(Image.open(root / r["path"])))[None, None]
        assert np.allclose(vectors[int(r["row"])], fe(img)[0].numpy(), atol=1e-5)
    again = embed(fe, str(root), str(tmp_path / "again.npy"), batch_size=12)
    assert again.count == 12 and np.array_equal(np.load(tmp_path / "again.npy"), vectors)  # batch-independent


def test_embed_parquet_csv_and_archive(timm_run, image_folder, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    root, _ = image_folder
    fe = pretextflow.load_backbone(timm_run)
    embed(fe, str(root), str(tmp_path / "ref.npy"))
    ref = np.load(tmp_path / "ref.npy")
    embed(fe, str(root), str(tmp_path / "feats.parquet"), batch_size=4)
    table = pq.read_table(tmp_path / "feats.parquet")
    assert table.column_names == ["path", "sha256", "embedding"] and table.num_rows == 12
    assert np.allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), ref)
    listed = tmp_path / "list.csv"
    listed.write_text("path,label\n" + "".join(f"{root}/d1/{i:02d}.png,x\n" for i in (1, 3)))
    embed(fe, str(listed), str(tmp_path / "two.npy"))
    assert np.array_equal(np.load(tmp_path / "two.npy"), ref[[6, 7]])  # d1/01, d1/03 sort after d0/*
    archive = shutil.make_archive(str(tmp_path / "imgs"), "zip", root)
    embed(fe, archive, str(tmp_path / "zip.npy"))
    assert np.array_equal(np.load(tmp_path / "zip.npy"), ref)


def test_embed_refuses_bad_input(timm_run, tmp_path):
    fe = pretextflow.load_backbone(timm_run)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match="no image files"):
        embed(fe, str(tmp_path / "imgs"), str(tmp_path / "f.npy"))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        embed(fe, str(tmp_path / "imgs"), str(tmp_path / "f.npy"))
    assert not (tmp_path / "f.npy").exists()
    with pytest.raises(StageInputError, match="FILE.npy"):
        embed(fe, str(tmp_path / "imgs"), str(tmp_path / "f.txt"))


def test_cli_export_and_embed(timm_run, image_folder, tmp_path):
    root, _ = image_folder
    runner = CliRunner()
    res = runner.invoke(app, ["export", timm_run, "--format", "torchscript", "--out", str(tmp_path / "ts")])
    assert res.exit_code == 0, res.output
    assert "exported timm/resnet10t (512 features, input 1x8x8) as torchscript" in res.output
    res = runner.invoke(app, ["embed", str(tmp_path / "ts"), str(root), "--out", str(tmp_path / "e.npy")])
    assert res.exit_code == 2 and "--trust-torchscript" in res.output
    args = ["embed", str(tmp_path / "ts"), str(root), "--out", str(tmp_path / "e.npy"), "--trust-torchscript"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "embedded 12 images -> 512 features each on cpu" in res.output
    res = runner.invoke(app, ["export", timm_run, "--format", "keras", "--out", str(tmp_path / "k")])
    assert res.exit_code == 2 and "unknown export format 'keras'" in res.output


def test_python_api_runs_the_pipeline_in_process(tmp_path, capfd):
    """pretextflow.run from a dict with overrides (quiet: no progress lines), then runs() and run.backbone()."""
    import yaml

    from pretextflow.core.data.versioning import init_workspace

    ws = init_workspace(tmp_path / "ws")
    config = yaml.safe_load((REPO / "configs" / "digits_smoke.yaml").read_text())
    run = pretextflow.run(
        config,
        ["train.epochs=1", "probe.label_fractions=[1.0]", "probe.baselines=[]"],
        workspace=ws.root,
        push=False,
        quiet=True,
    )
    assert "| progress |" not in capfd.readouterr().err
    assert run.manifest["config"]["progress"]["mode"] == "off"
    assert run.metrics["linear_top1"] > 0.5 and run.data_version
    assert open(run.report_html.removeprefix("file://")).read().startswith("<!doctype html>")
    listed = pretextflow.runs(ws.root)
    assert [r.run_id for r in listed] == [run.run_id]
    assert listed[0].metrics["linear_top1"] == run.metrics["linear_top1"]
    assert run.backbone()(_images(2)).shape == (2, run.backbone().num_features)
    with pytest.raises(Exception, match="train.epochs"):
        pretextflow.run(config, ["train.epochs=-1"], workspace=ws.root)


def test_export_and_load_through_any_fsspec_uri(timm_run):
    """The export is uploaded through fsspec and load_backbone reads it back from the same URI."""
    import fsspec

    x = _images(3)
    want = pretextflow.load_backbone(timm_run)(x)
    for fmt in ("safetensors", "timm", "onnx"):
        uri = f"memory://pretextflow-test-exports/{fmt}"
        export_backbone(timm_run, fmt, uri)
        assert fsspec.filesystem("memory").exists(f"/pretextflow-test-exports/{fmt}/README.md")
        assert float((pretextflow.load_backbone(uri)(x) - want).abs().max()) <= 1e-4
