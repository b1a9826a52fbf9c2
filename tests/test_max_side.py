"""``-o max_side=N`` for the image-file formats: non-square and mixed-size images are stored with
their aspect ratio (the longer side scaled to N, centred on a zero N x N canvas) and each image's
content extent beside its pixels (``<shard>.extents.npy``, ``Dataset.train_extents``). Incremental
ingest, worker counts and Dask give the same files as ever; without the option nothing changes."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretextflow.core.data.adapt import scale_extents
from pretextflow.core.data.dataset import load_dataset
from pretextflow.core.data.ingest import IngestSettings, ingest
from pretextflow.core.data.shards import read_index, shard_paths
from pretextflow.core.data.versioning import init_workspace
from pretextflow.core.errors import DataError
from pretextflow.core.registry.registry import get_registry

FOLDER = get_registry().dataset_format("imagefolder")
CSV = get_registry().dataset_format("csv")
SIZES = [(60, 30), (20, 50), (10, 10), (33, 17), (64, 64), (5, 40)]  # (height, width)


def _image(path: Path, seed: int, hw: tuple[int, int], mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    shape = hw if mode == "L" else (*hw, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, n: int = 36) -> Path:
    """``n`` colour images of the sizes above, PNG and JPEG, in two classes."""
    for i in range(n):
        _image(root / f"c{i % 2}" / f"img{i:03d}.{'jpg' if i % 3 == 0 else 'png'}", i, SIZES[i % len(SIZES)])
    return root


def _ingest(ws, src: Path, options: dict | None = None, **settings) -> dict:
    return ingest(
        ws,
        str(src),
        "imagefolder",
        "imgs",
        options={"max_side": 16, "test_fraction": 0.25, **(options or {})},
        push=False,
        settings=IngestSettings(**{"shard_mb": 0.005, "workers": 1, **settings}),  # 6 images per shard
    )


def _files(ws) -> dict[str, str]:
    root = ws.data_dir / "imgs"
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def _by_key(ws) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    """key -> (canvas, extent) of every image, read through the shards' files."""
    root, out = ws.data_dir / "imgs", {}
    for rec in json.loads((root / "meta.json").read_bytes())["shards"]:
        paths = shard_paths(root, rec["name"])
        images, extents = np.load(paths["images"]), np.load(paths["extents"])
        for pos, row in enumerate(read_index(paths["index"].read_bytes(), rec["name"])):
            out[row.key] = (images[pos], tuple(int(v) for v in extents[pos]))
    return out


def test_non_square_and_mixed_sizes_are_stored_centred_with_their_extents(tmp_path):
    src = _folder(tmp_path / "src", n=12)
    ws = init_workspace(tmp_path / "ws")
    out = _ingest(ws, src, {"max_side": 32})
    assert out["image_shape"] == [3, 32, 32]
    meta = json.loads((ws.data_dir / "imgs" / "meta.json").read_bytes())
    assert meta["extents"] is True and meta["options"]["max_side"] == 32
    for rec in meta["shards"]:
        ext_file = shard_paths(ws.data_dir / "imgs", rec["name"])["extents"]
        assert rec["extents_md5"] == hashlib.md5(ext_file.read_bytes()).hexdigest()
    stored = _by_key(ws)
    want = {(60, 30): (32, 16), (20, 50): (13, 32), (10, 10): (32, 32), (33, 17): (32, 16), (64, 64): (32, 32)}
    for i in range(12):
        key = f"c{i % 2}/img{i:03d}.{'jpg' if i % 3 == 0 else 'png'}"
        canvas, (h, w) = stored[key]
        hw = SIZES[i % len(SIZES)]
        assert (h, w) == want.get(hw, (4, 32)), key  # (5, 40) -> (4, 32)
        top, left = (32 - h) // 2, (32 - w) // 2
        with Image.open(src / key) as im:  # the content: the image resized, as PIL resizes it
            expected = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        np.testing.assert_array_equal(canvas[:, top : top + h, left : left + w], expected)
        padding = canvas.copy()
        padding[:, top : top + h, left : left + w] = 0
        assert not padding.any(), f"{key}: the padding is not zero"
    ds = load_dataset(str(ws.data_dir), "imgs")
    assert ds.train_extents.dtype == np.int32 and ds.train_extents.shape == (len(ds.train_images), 2)
    assert ds.test_extents.shape == (len(ds.test_images), 2)
    loaded = sorted(map(tuple, [*ds.train_extents.tolist(), *ds.test_extents.tolist()]))
    assert loaded == sorted(e for _, e in stored.values())


def test_shards_are_byte_identical_for_any_worker_count_and_on_dask(tmp_path, monkeypatch):
    from pretextflow.core.data import parallel

    monkeypatch.setattr(parallel, "CHUNK", 6)  # 6 chunks, decoded by the worker pool and by Dask
    monkeypatch.setattr(parallel, "IN_PROCESS_BELOW", 2)
    src = _folder(tmp_path / "src")
    one, two = init_workspace(tmp_path / "one"), init_workspace(tmp_path / "two")
    _ingest(one, src, workers=1)
    _ingest(two, src, workers=2)
    assert _files(one) == _files(two)
    assert sum(name.endswith(".extents.npy") for name in _files(one)) >= 5
    pytest.importorskip("dask.distributed")
    dask = init_workspace(tmp_path / "dask")
    _ingest(dask, src, workers=2, runner="dask")
    assert _files(one) == _files(dask)


def test_an_incremental_ingest_keeps_untouched_shards_and_their_extents(tmp_path):
    src = _folder(tmp_path / "src")
    ws = init_workspace(tmp_path / "ws")
    _ingest(ws, src)
    before, meta1 = _files(ws), json.loads((ws.data_dir / "imgs" / "meta.json").read_bytes())
    again = _ingest(ws, src)
    assert again["changed"] is False and again["timing"]["images_read"] == 0 and _files(ws) == before
    time.sleep(0.01)
    _image(src / "c1" / "img999.png", 999, (40, 12))  # one new, non-square image
    out = _ingest(ws, src)
    assert out["timing"]["images_read"] == 1 and out["changes"]["added"] == 1
    after, meta2 = _files(ws), json.loads((ws.data_dir / "imgs" / "meta.json").read_bytes())
    untouched = [r["name"] for r in meta1["shards"] if r in meta2["shards"]]
    assert out["changes"]["shards_kept"] == len(untouched) >= len(meta1["shards"]) - 1 > 0
    for shard in untouched:
        for suffix in (".images.npy", ".labels.npy", ".index.csv", ".extents.npy"):
            assert after[f"shards/{shard}{suffix}"] == before[f"shards/{shard}{suffix}"]
    assert _by_key(ws)["c1/img999.png"][1] == (16, 5)
    fresh = init_workspace(tmp_path / "fresh")  # the same images as a first ingest of the new folder
    _ingest(fresh, src)
    a, b = _by_key(ws), _by_key(fresh)
    assert a.keys() == b.keys() and all(a[k][1] == b[k][1] and np.array_equal(a[k][0], b[k][0]) for k in a)


def test_changing_max_side_reads_everything_and_full_canvases_store_no_extents(tmp_path):
    src = tmp_path / "src"
    for i in range(8):
        _image(src / f"c{i % 2}" / f"{i}.png", i, (8, 8))
    ws = init_workspace(tmp_path / "ws")
    _ingest(ws, src, {"max_side": 12})
    meta = json.loads((ws.data_dir / "imgs" / "meta.json").read_bytes())
    assert "extents" not in meta and not any("extents_md5" in r for r in meta["shards"])
    assert load_dataset(str(ws.data_dir), "imgs").train_extents is None  # every image fills its canvas
    _image(src / "c0" / "wide.png", 100, (4, 8))
    out = _ingest(ws, src, {"max_side": 10})
    assert out["timing"]["images_read"] == 9 and out["image_shape"] == [3, 10, 10]
    ds = load_dataset(str(ws.data_dir), "imgs")
    extents = sorted(map(tuple, [*ds.train_extents.tolist(), *ds.test_extents.tolist()]))
    assert ds.meta["extents"] is True and extents == [(5, 10)] + [(10, 10)] * 8


def test_a_dataset_without_max_side_is_stored_as_before(tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        _image(src / f"c{i % 2}" / f"{i}.png", i, (8, 8))
    ws = init_workspace(tmp_path / "ws")
    ingest(ws, str(src), "imagefolder", "imgs", push=False, settings=IngestSettings(workers=1))
    meta = json.loads((ws.data_dir / "imgs" / "meta.json").read_bytes())
    assert "extents" not in meta and "max_side" not in meta["options"]  # the options as recorded before
    assert not list((ws.data_dir / "imgs").rglob("*.extents.npy"))
    ds = load_dataset(str(ws.data_dir), "imgs")
    assert ds.train_extents is None and ds.test_extents is None


def test_a_missing_or_bad_extents_file_is_refused_naming_the_fix(tmp_path):
    src = _folder(tmp_path / "src", n=12)
    ws = init_workspace(tmp_path / "ws")
    _ingest(ws, src)
    path = shard_paths(ws.data_dir / "imgs", "train-00000")["extents"]
    good = path.read_bytes()
    np.save(path, np.full((3, 2), 99, np.int32))
    with pytest.raises(DataError, match=r"train-00000 holds \(3, 2\) extents.*Re-ingest it"):
        load_dataset(str(ws.data_dir), "imgs")
    count = json.loads((ws.data_dir / "imgs" / "meta.json").read_bytes())["shards"][0]["count"]
    np.save(path, np.full((count, 2), 99, np.int32))
    with pytest.raises(DataError, match=r"extents outside its 16x16 canvas.*dvc checkout"):
        load_dataset(str(ws.data_dir), "imgs")
    path.unlink()
    with pytest.raises(DataError, match=r"train-00000 \(extents\) is missing"):
        load_dataset(str(ws.data_dir), "imgs")
    out = _ingest(ws, src)  # the next ingest repairs it
    assert out["changed"] and path.read_bytes() == good


def test_image_size_and_max_side_together_are_refused(tmp_path):
    src = _folder(tmp_path / "src", n=6)
    with pytest.raises(DataError, match=r"image_size=8 and max_side=16 were both given; choose one.*max_side=N"):
        FOLDER().scan(str(src), FOLDER.Options(image_size=8, max_side=16), {})
    ws = init_workspace(tmp_path / "ws")
    with pytest.raises(DataError, match="choose one"):
        _ingest(ws, src, {"image_size": 8})
    assert not (ws.data_dir / "imgs").exists()


def test_without_max_side_non_square_and_mixed_sizes_are_refused_suggesting_it(tmp_path):
    _image(tmp_path / "a" / "0.png", 0, (12, 8))
    catalog = FOLDER().scan(str(tmp_path / "a"), FOLDER.Options(), {})
    opts = FOLDER.Options.model_validate({**FOLDER.Options().model_dump(), **catalog.read_options})
    with pytest.raises(DataError, match=r"images must be square \(12x8\).*--option max_side=N"):
        list(FOLDER().read(str(tmp_path / "a"), catalog.entries, opts, {}))
    _image(tmp_path / "b" / "0.png", 0, (8, 8))
    _image(tmp_path / "b" / "1.png", 1, (10, 10))
    catalog = FOLDER().scan(str(tmp_path / "b"), FOLDER.Options(), {})
    opts = FOLDER.Options.model_validate({**FOLDER.Options().model_dump(), **catalog.read_options})
    with pytest.raises(DataError, match=r"differs from the first image's.*image_size=N.*--option max_side=N"):
        list(FOLDER().read(str(tmp_path / "b"), catalog.entries, opts, {}))


def test_csv_with_max_side_and_grayscale(tmp_path):
    for i, hw in enumerate([(30, 10), (10, 30), (7, 7)]):
        _image(tmp_path / "img" / f"{i}.png", i, hw, mode="L")
    (tmp_path / "t.csv").write_text("path,label\nimg/0.png,a\nimg/1.png,b\nimg/2.png,a\n")
    opts = CSV.Options(max_side=9)
    catalog = CSV().scan(str(tmp_path / "t.csv"), opts, {})
    read_opts = CSV.Options.model_validate({**opts.model_dump(), **catalog.read_options})
    items = list(CSV().read(str(tmp_path / "t.csv"), catalog.entries, read_opts, {}))
    assert [i.image.shape for i in items] == [(1, 9, 9)] * 3
    assert [i.extent for i in items] == [(9, 3), (3, 9), (9, 9)]
    assert not items[0].image[:, :, :3].any() and not items[0].image[:, :, 6:].any() and items[0].image[:, :, 3:6].any()


def test_adapting_a_dataset_scales_its_extents():
    got = scale_extents(np.asarray([[32, 16], [13, 32], [1, 32]], np.int32), (32, 32), (64, 64))
    assert got.dtype == np.int32 and got.tolist() == [[64, 32], [26, 64], [2, 64]]
    assert scale_extents(np.asarray([[32, 3]], np.int32), (32, 32), (8, 8)).tolist() == [[8, 1]]
    assert scale_extents(None, (32, 32), (8, 8)) is None
