"""Schema-2 datasets: sharded, incremental, parallel ingest (core.data.build / layout / parallel).

Same source => byte-identical shards whatever the worker count or runner; a re-ingest reads only
what was added or changed and rewrites only the shards it touches; v1 datasets load and migrate;
a truncated shard is refused; a SIGKILL during an incremental ingest leaves the previous version;
training from several shards resumes mid-epoch bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from pretextflow.core.data.dataset import load_dataset
from pretextflow.core.data.ingest import IngestSettings, ingest
from pretextflow.core.data.migrate import migrate_dataset
from pretextflow.core.data.remote import RemoteNpy
from pretextflow.core.data.shards import ImageView, ShardedArray
from pretextflow.core.data.versioning import init_workspace
from pretextflow.core.errors import DataError
from pretextflow.core.stages import StageContext, run_pretrain
from pretextflow.core.training import checkpoint
from pretextflow.plugins.datasets.imagefolder import _hash_fraction

SMALL = 0.03  # MiB per shard: 40 images of 16x16x3 per shard


def _png(path: Path, seed: int, size: int = 16) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _folder(root: Path, n: int = 240, classes: int = 3) -> Path:
    for i in range(n):
        _png(root / f"c{i % classes}" / f"img{i:05d}.png", i)
    return root


def _files(ws, name: str) -> dict[str, str]:
    root = ws.data_dir / name
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _ingest(ws, src: Path, name: str = "imgs", **settings) -> dict:
    return ingest(
        ws,
        str(src),
        "imagefolder",
        name,
        push=False,
        settings=IngestSettings(**{"shard_mb": SMALL, "workers": 1, **settings}),
    )


def _by_key(ws, name: str) -> dict[str, tuple[int, bytes]]:
    """key -> (label, pixel bytes) of every image of the dataset, read through its shards."""
    from pretextflow.core.data.shards import read_index, shard_paths

    root, out = ws.data_dir / name, {}
    for rec in json.loads((root / "meta.json").read_bytes())["shards"]:
        paths = shard_paths(root, rec["name"])
        images = np.load(paths["images"], mmap_mode="r")
        for pos, row in enumerate(read_index(paths["index"].read_bytes(), rec["name"])):
            out[row.key] = (row.label, images[pos].tobytes())
    return out


def test_shards_are_byte_identical_for_any_worker_count_and_on_dask(tmp_path, monkeypatch):
    from pretextflow.core.data import parallel

    # small chunks, and no in-process shortcut: the worker pool and Dask really decode 15 chunks
    monkeypatch.setattr(parallel, "CHUNK", 16)
    monkeypatch.setattr(parallel, "IN_PROCESS_BELOW", 2)
    src = _folder(tmp_path / "src")
    one = init_workspace(tmp_path / "one")
    two = init_workspace(tmp_path / "two")
    dask = init_workspace(tmp_path / "dask")
    a = _ingest(one, src, workers=1)
    _ingest(two, src, workers=2)
    _ingest(dask, src, workers=2, runner="dask")  # a 2-worker LocalCluster
    assert len(a["counts"]) and len(json.loads((one.data_dir / "imgs/meta.json").read_bytes())["shards"]) >= 4
    assert _files(one, "imgs") == _files(two, "imgs") == _files(dask, "imgs")
    assert a["changes"]["added"] == 240 and a["timing"]["images_read"] == 240


def _same_split_name(cls: str, old: str) -> str:
    """A new file name in ``cls`` that the path-hash split puts in the same split as ``old``."""
    want = _hash_fraction(f"{cls}/{old}") < 0.2
    for i in range(1000):
        name = f"renamed{i}.png"
        if (_hash_fraction(f"{cls}/{name}") < 0.2) == want:
            return name
    raise AssertionError("no name found")


def test_incremental_ingest_reads_and_rewrites_only_what_changed(tmp_path):
    src = _folder(tmp_path / "src")
    ws = init_workspace(tmp_path / "ws")
    first = _ingest(ws, src)
    before = _files(ws, "imgs")
    meta1 = json.loads((ws.data_dir / "imgs/meta.json").read_bytes())

    again = _ingest(ws, src)  # nothing changed: nothing read, nothing written
    assert again["changed"] is False and again["timing"]["images_read"] == 0 and _files(ws, "imgs") == before

    for i in range(240, 250):  # add 10
        _png(src / f"c{i % 3}" / f"img{i:05d}.png", i)
    for i in (3, 4, 5):  # delete 3 (all in the first shards)
        (src / f"c{i % 3}" / f"img{i:05d}.png").unlink()
    time.sleep(0.01)
    _png(src / "c0" / "img00000.png", 10_000)  # modify 1
    new_name = _same_split_name("c1", "img00001.png")
    os.rename(src / "c1" / "img00001.png", src / "c1" / new_name)  # rename 1
    out = _ingest(ws, src)
    ch = out["changes"]
    assert (ch["added"], ch["removed"], ch["modified"], ch["renamed"]) == (10, 3, 1, 1)
    assert out["timing"]["images_read"] == 12  # the added, the modified and the renamed file only
    assert "+10 / -3 / ~1 images, 1 renamed" in ch["description"]
    after = _files(ws, "imgs")
    meta2 = json.loads((ws.data_dir / "imgs/meta.json").read_bytes())
    untouched = [r["name"] for r in meta1["shards"] if r in meta2["shards"]]
    assert untouched and ch["shards_kept"] == len(untouched)
    for shard in untouched:  # byte-identical, so DVC stores and pushes nothing for them
        for suffix in (".images.npy", ".labels.npy", ".index.csv"):
            assert after[f"shards/{shard}{suffix}"] == before[f"shards/{shard}{suffix}"]
    assert ch["shards_written"] < len(meta2["shards"])

    fresh = init_workspace(tmp_path / "fresh")  # the same images as a first ingest of the new folder
    _ingest(fresh, src)
    assert _by_key(ws, "imgs") == _by_key(fresh, "imgs")
    assert meta2["counts"] == json.loads((fresh.data_dir / "imgs/meta.json").read_bytes())["counts"]
    assert meta2["mean"] == json.loads((fresh.data_dir / "imgs/meta.json").read_bytes())["mean"]
    assert first["counts"]["train"] + first["counts"]["test"] == 240


def test_a_lost_stamp_cache_costs_reads_not_a_different_version(tmp_path):
    src = _folder(tmp_path / "src", n=90)
    ws = init_workspace(tmp_path / "ws")
    _ingest(ws, src)
    before = _files(ws, "imgs")
    for f in (ws.root / ".pretextflow-cache" / "ingest").iterdir():
        f.unlink()
    out = _ingest(ws, src)
    assert out["timing"]["images_read"] == 90 and out["changed"] is False and _files(ws, "imgs") == before


def _write_v1(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A schema-1 dataset as pretextflow <= 0.x wrote it: one .npy per split and meta.json."""
    folder.mkdir(parents=True)
    n = len(images) * 3 // 4
    arrays = {
        "train_images": images[:n],
        "train_labels": labels[:n],
        "test_images": images[n:],
        "test_labels": labels[n:],
    }
    for k, v in arrays.items():
        np.save(folder / f"{k}.npy", v, allow_pickle=False)
    meta = {
        "schema_version": 1,
        "name": folder.name,
        "format": "sklearn-digits",
        "image_shape": list(images.shape[1:]),
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
        "mean": [0.5],
        "std": [0.25],
        "counts": {"train": n, "test": len(images) - n, "train_labelled": n, "test_labelled": len(images) - n},
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def test_v1_datasets_load_and_migrate_to_shards(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 1, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 200).astype(np.int64)
    _write_v1(ws.data_dir / "old", images, labels)
    v1 = load_dataset(str(ws.data_dir), "old")
    assert v1.meta["schema_version"] == 1 and np.array_equal(v1.train_images, images[:150])
    out = migrate_dataset(ws, "old", shard_mb=0.002, push=False)  # 32 images per shard
    v2 = load_dataset(str(ws.data_dir), "old")
    assert v2.meta["schema_version"] == 2 and len(v2.meta["shards"]) == 7 and out["changed"]
    assert np.array_equal(np.asarray(v2.train_images), images[:150])
    assert np.array_equal(np.asarray(v2.test_images), images[150:])
    assert np.array_equal(v2.train_labels, labels[:150]) and v2.meta["class_names"] == v1.meta["class_names"]
    assert not (ws.data_dir / "old" / "train_images.npy").exists()
    with pytest.raises(DataError, match="schema 2, not 1"):
        migrate_dataset(ws, "old", push=False)


def test_a_truncated_shard_is_refused_and_the_next_ingest_repairs_it(tmp_path):
    src = _folder(tmp_path / "src", n=120)
    ws = init_workspace(tmp_path / "ws")
    _ingest(ws, src)
    before = _files(ws, "imgs")
    shard = ws.data_dir / "imgs" / "shards" / "train-00001.images.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-00001.*(truncated|holds).*dvc checkout"):
        load_dataset(str(ws.data_dir), "imgs")
    out = _ingest(ws, src)
    assert out["changed"] and _files(ws, "imgs") == before


def test_sigkill_during_an_incremental_ingest_keeps_the_previous_version(tmp_path):
    src = _folder(tmp_path / "src", n=120)
    ws = init_workspace(tmp_path / "ws")
    _ingest(ws, src)
    before = _files(ws, "imgs")
    for i in range(120, 200):
        _png(src / f"c{i % 3}" / f"img{i:05d}.png", i)
    marker = tmp_path / "marker.json"
    driver = Path(__file__).with_name("ingest_kill_driver.py")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(driver),
            str(ws.root),
            str(src),
            "imgs",
            "staging",
            "0",
            str(marker),
            "imagefolder",
            str(SMALL),
        ]
    )
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the driver never reached the staging point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    staged = list((ws.root / ".pretextflow-tmp").glob("imgs-*"))
    assert staged and _files(ws, "imgs") == before  # half staged; data/ untouched
    out = _ingest(ws, src)  # recovers, then ingests incrementally from the intact previous version
    assert out["changes"]["added"] == 80 and out["timing"]["images_read"] == 80
    assert not list((ws.root / ".pretextflow-tmp").glob("imgs-*"))
    assert set(_by_key(ws, "imgs")) == {f"c{i % 3}/img{i:05d}.png" for i in range(200)}


def test_mid_epoch_resume_from_several_shards_is_bit_identical(
    tmp_path, digits_config, digits_workspace, crash_then_resume
):
    """Training gathers its batches from five memory-mapped shards; it follows the one-file
    (in-memory) path bit for bit, and resumes mid-epoch bit for bit."""
    ws = init_workspace(tmp_path / "ws")
    ingest(
        ws, "sklearn:digits", "sklearn-digits", "digits", push=False, settings=IngestSettings(shard_mb=0.02)
    )  # 327 images per shard
    ds = load_dataset(str(ws.data_dir), "digits")
    assert type(ds.train_images).__name__ == "ShardedArray" and len(ds.train_images.parts) == 5
    overrides = [
        "pretext.name=simclr",
        "pretext.params={}",
        "train.epochs=2",
        "train.checkpoint_every_steps=4",
        "train.threads=1",
    ]

    def ctx(store, root=ws.root):
        return StageContext.create(digits_config(*overrides, f"store.uri={store}"), str(root))

    whole, cut = ctx("memory://shards-whole"), ctx("memory://shards-cut")
    run_pretrain(whole)
    crash_then_resume(cut, 13)
    key = whole.pretrain_key(whole.dataset())
    a, _ = checkpoint.decode(whole.store.read_bytes("pretrain", key, "task.safetensors"))
    b, _ = checkpoint.decode(cut.store.read_bytes("pretrain", key, "task.safetensors"))
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
    one = ctx("memory://shards-one-file", digits_workspace.root)  # the same images in one shard
    run_pretrain(one)
    c, _ = checkpoint.decode(one.store.read_bytes("pretrain", one.pretrain_key(one.dataset()), "task.safetensors"))
    assert [k for k in a["model"] if not torch.equal(a["model"][k], c["model"][k])] == []


# -- remote shards: read by byte ranges ---------------------------------------------------------
class CountingMemoryFS(MemoryFileSystem):
    """The memory filesystem, counting the bytes handed out by ranged reads."""

    protocol = "countmem"
    read_bytes = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("countmem://"))

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        type(self).read_bytes += len(data)
        return data


fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)


@pytest.fixture
def remote_dataset(tmp_path):
    """A 240-image sharded dataset (several shards) copied into the counting memory filesystem."""
    ws = init_workspace(tmp_path / "ws")
    _ingest(ws, _folder(tmp_path / "src"))
    fs = CountingMemoryFS()
    for p in sorted(Path(ws.data_dir).rglob("*")):
        if p.is_file():
            fs.pipe_file(f"/bucket/data/{p.relative_to(ws.data_dir)}", p.read_bytes())
    CountingMemoryFS.read_bytes = 0
    yield load_dataset(str(ws.data_dir), "imgs"), load_dataset("countmem:///bucket/data", "imgs"), fs
    fs.rm("/bucket", recursive=True)


def test_opening_a_remote_dataset_reads_headers_not_images(remote_dataset):
    local, remote, _ = remote_dataset
    assert isinstance(remote.train_images, ShardedArray)
    assert all(isinstance(p, RemoteNpy) for p in remote.train_images.parts)
    # meta.json and the labels (8 bytes an image); image headers come through open(), no rows yet
    assert CountingMemoryFS.read_bytes < 0.05 * (local.train_images.nbytes + local.test_images.nbytes)
    assert remote.train_images.shape == local.train_images.shape


def test_remote_rows_match_the_local_ones_and_only_they_are_read(remote_dataset):
    local, remote, _ = remote_dataset
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(local.train_images))[:32]
    want = np.asarray(local.train_images)[idx]
    CountingMemoryFS.read_bytes = 0
    got = remote.train_images.take(idx)
    assert np.array_equal(got, want)
    row = int(np.prod(local.train_images.shape[1:]))
    assert CountingMemoryFS.read_bytes <= 32 * row * (1 + 8)  # the rows, plus at most the merged gaps
    assert CountingMemoryFS.read_bytes < local.train_images.nbytes / 2
    head = remote.train_images.head(50)  # a prefix stays unread
    before = CountingMemoryFS.read_bytes
    assert len(head) == 50 and CountingMemoryFS.read_bytes == before
    assert np.array_equal(np.asarray(head), np.asarray(local.train_images)[:50])
    view = ImageView(remote.train_images, np.arange(0, 100, 3))
    assert np.array_equal(view[2:9], np.asarray(local.train_images)[np.arange(0, 100, 3)[2:9]])
    assert np.array_equal(remote.train_images[7], np.asarray(local.train_images)[7])


def test_a_truncated_remote_shard_is_refused_naming_it(remote_dataset):
    _, remote, fs = remote_dataset
    part = remote.train_images.parts[0]
    fs.pipe_file(part.path, fs.cat_file(part.path)[: part.offset + part.row_bytes * 3 + 5])
    with pytest.raises(DataError, match="truncated"):
        part[np.arange(len(part))]
