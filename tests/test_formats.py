"""The built-in image-file formats under the streaming contract (API 2.0): ``imagefolder``'s
layouts (an unlabeled folder beside the classes, explicit splits), stamps, reads of arbitrary
chunks, concurrent fetching; the ``csv`` table format (CSV and Parquet)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import uuid

import fsspec
import numpy as np
import pytest
from PIL import Image

from pretextflow.core.data.decode import read_all
from pretextflow.core.errors import DataError
from pretextflow.core.registry.registry import get_registry
from pretextflow.plugins.datasets import image_files
from pretextflow.testing import check_dataset_format

FOLDER = get_registry().dataset_format("imagefolder")
CSV = get_registry().dataset_format("csv")


def png(seed: int, size: int = 8, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def folder(root, layout: dict[str, int], **kw):
    """``layout``: relative folder -> number of images in it."""
    seed = 0
    for rel, count in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            seed += 1
            (root / rel / f"{i:02d}.png").write_bytes(png(seed, **kw))
    return root


def scan(fmt, source, **options):
    return fmt().scan(str(source), fmt.Options(**options), {})


def read(fmt, source, entries, read_options=None, **options):
    """What a worker does: a fresh instance, the user's options updated with read_options."""
    opts = fmt.Options.model_validate({**fmt.Options(**options).model_dump(), **(read_options or {})})
    return {e.key: item for e, item in zip(entries, fmt().read(str(source), entries, opts, {}), strict=True)}


@pytest.fixture
def memory_root():
    root = f"/pretextflow-formats-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


# -- imagefolder: layouts --------------------------------------------------------------------
def test_an_unlabeled_folder_beside_the_classes_is_trained_on_and_is_no_class(tmp_path):
    folder(tmp_path, {"cat": 10, "dog": 10, "unlabeled": 6, "unlabeled/deeper": 2})
    catalog = scan(FOLDER, tmp_path, test_fraction=0.3)
    assert catalog.class_names == ["cat", "dog"]
    unlabeled = [e for e in catalog.entries if e.key.startswith("unlabeled/")]
    assert len(unlabeled) == 8 and all(e.label == -1 and e.split == "train" for e in unlabeled)
    labelled = [e for e in catalog.entries if not e.key.startswith("unlabeled/")]
    assert all(e.label >= 0 for e in labelled) and {e.split for e in labelled} == {"train", "test"}
    arrays = read_all(FOLDER(), str(tmp_path), FOLDER.Options(test_fraction=0.3), {})
    assert (arrays.train_labels == -1).sum() == 8 and (arrays.test_labels >= 0).all()


def test_unlabeled_dir_none_restores_the_old_layout_and_the_name_is_an_option(tmp_path):
    folder(tmp_path, {"cat": 4, "dog": 4, "unlabeled": 4})
    assert scan(FOLDER, tmp_path, unlabeled_dir=None).class_names == ["cat", "dog", "unlabeled"]
    assert all(e.label >= 0 for e in scan(FOLDER, tmp_path, unlabeled_dir=None).entries)
    folder(tmp_path / "b", {"cat": 4, "dog": 4, "extra": 3})
    catalog = scan(FOLDER, tmp_path / "b", unlabeled_dir="extra")
    assert catalog.class_names == ["cat", "dog"] and sum(e.label == -1 for e in catalog.entries) == 3


def test_loose_images_beside_class_folders_are_refused_pointing_at_unlabeled_dir(tmp_path):
    folder(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "loose.png").write_bytes(png(99))
    with pytest.raises(DataError, match=r"mixes images in class folders.*loose\.png.*unlabeled/.*unlabeled_dir"):
        scan(FOLDER, tmp_path)
    with pytest.raises(DataError, match="Put every image in a class folder.*--option unlabeled_dir=FOLDER"):
        scan(FOLDER, tmp_path, unlabeled_dir=None)
    folder(tmp_path / "flat", {".": 5})  # no class folders at all: an unlabeled dataset, as before
    catalog = scan(FOLDER, tmp_path / "flat", test_fraction=0.0)
    assert catalog.class_names == [] and all(e.label == -1 and e.split == "train" for e in catalog.entries)


def test_explicit_splits_with_an_unlabeled_training_folder(tmp_path):
    folder(tmp_path, {"train/cat": 3, "train/dog": 3, "train/unlabeled": 4, "test/cat": 2, "test/dog": 2})
    catalog = scan(FOLDER, tmp_path)
    assert catalog.class_names == ["cat", "dog"]
    by_split = {s: [e for e in catalog.entries if e.split == s] for s in ("train", "test")}
    assert len(by_split["train"]) == 10 and len(by_split["test"]) == 4
    assert sorted(e.key for e in by_split["train"] if e.label == -1) == [
        f"train/unlabeled/{i:02d}.png" for i in range(4)
    ]
    assert all(e.label >= 0 for e in by_split["test"])
    folder(tmp_path, {"unlabeled": 2})  # at the top, beside train/ and test/: still the explicit layout
    top = [e for e in scan(FOLDER, tmp_path).entries if e.key.startswith("unlabeled/")]
    assert len(top) == 2 and all(e.split == "train" and e.label == -1 for e in top)
    folder(tmp_path, {"test/unlabeled": 1})
    with pytest.raises(DataError, match="unlabeled image in the test split.*train/unlabeled/"):
        scan(FOLDER, tmp_path)


def test_the_hash_split_is_unchanged(tmp_path):
    """Existing datasets keep their splits: the split is the same function of the relative path."""
    folder(tmp_path, {"cat": 20, "dog": 20})
    for e in scan(FOLDER, tmp_path, test_fraction=0.25).entries:
        want = int.from_bytes(hashlib.sha256(e.key.encode()).digest()[:8], "big") / 2**64 < 0.25
        assert (e.split == "test") == want


# -- imagefolder: stamps, chunks, read options -------------------------------------------------
def test_stamps_change_when_a_file_is_rewritten_and_stay_when_untouched(tmp_path):
    folder(tmp_path, {"cat": 3, "dog": 3})
    before = {e.key: e for e in scan(FOLDER, tmp_path).entries}
    assert all(e.stamp and e.location == "" for e in before.values())  # read() finds ROOT/key
    target = tmp_path / "cat" / "01.png"
    mtime = target.stat().st_mtime_ns
    target.write_bytes(png(1234))
    os.utime(target, ns=(mtime + 10**9, mtime + 10**9))  # a coarse clock may not have moved on
    after = {e.key: e.stamp for e in scan(FOLDER, tmp_path).entries}
    assert after.pop("cat/01.png") != before["cat/01.png"].stamp
    assert after == {k: e.stamp for k, e in before.items() if k != "cat/01.png"}


def test_remote_stamps_come_from_the_listing(memory_root):
    fs = fsspec.filesystem("memory")
    for i in range(4):
        fs.pipe_file(f"{memory_root}/{'ab'[i % 2]}/{i}.png", png(i))
    first = {e.key: e.stamp for e in scan(FOLDER, f"memory://{memory_root}").entries}
    assert set(first) == {"a/0.png", "b/1.png", "a/2.png", "b/3.png"} and all(first.values())
    fs.pipe_file(f"{memory_root}/a/0.png", png(100))
    again = {e.key: e.stamp for e in scan(FOLDER, f"memory://{memory_root}").entries}
    assert again["a/0.png"] != first["a/0.png"] and again["b/1.png"] == first["b/1.png"]


def test_a_shuffled_subset_reads_as_in_the_whole(tmp_path):
    folder(tmp_path, {"cat": 12, "dog": 12, "unlabeled": 5}, size=10, mode="RGB")
    catalog = scan(FOLDER, tmp_path, image_size=8)
    whole = read(FOLDER, tmp_path, catalog.entries, catalog.read_options, image_size=8)
    part = random.Random(0).sample(catalog.entries, 9)
    for key, item in read(FOLDER, tmp_path, part, catalog.read_options, image_size=8).items():
        assert item.image.shape == (3, 8, 8) and item.sha256 == whole[key].sha256
        np.testing.assert_array_equal(item.image, whole[key].image)
    assert whole["cat/00.png"].sha256 == hashlib.sha256((tmp_path / "cat" / "00.png").read_bytes()).hexdigest()


def test_scan_resolves_channels_from_the_first_image_for_every_reader(tmp_path):
    folder(tmp_path, {"a": 2}, mode="RGB")
    folder(tmp_path, {"b": 2})  # grayscale
    catalog = scan(FOLDER, tmp_path)
    assert catalog.read_options["channels"] == 3
    assert catalog.read_options["first_image"]["path"].endswith("a/00.png")
    gray_only = [e for e in catalog.entries if e.key.startswith("b/")]  # a worker that never sees a/
    with pytest.raises(DataError, match=r"b/00\.png is grayscale but .*a/00\.png is colour.*channels=1"):
        read(FOLDER, tmp_path, gray_only, catalog.read_options)
    explicit = scan(FOLDER, tmp_path, channels=1)
    assert explicit.read_options["channels"] == 1 and explicit.read_options["first_image"]["gray"] is None
    images = read(FOLDER, tmp_path, explicit.entries, explicit.read_options, channels=1)
    assert {item.image.shape for item in images.values()} == {(1, 8, 8)}


def test_a_size_that_differs_from_the_first_image_is_named_in_any_chunk(tmp_path):
    folder(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "b" / "big.png").write_bytes(png(7, size=16))
    catalog = scan(FOLDER, tmp_path)
    big = [e for e in catalog.entries if e.key == "b/big.png"]
    with pytest.raises(
        DataError, match=r"big\.png: size \(16, 16\) differs from the first image's \(8, 8\).*image_size"
    ):
        read(FOLDER, tmp_path, big, catalog.read_options)


@pytest.mark.parametrize("threads", [False, True], ids=["memory-sequential", "memory-threads"])
def test_read_concurrency_does_not_change_what_is_read(memory_root, monkeypatch, threads):
    if threads:  # memory:// is read one file at a time (measured faster); force the thread pool
        monkeypatch.setattr(image_files, "_sequential_filesystems", lambda: ())
    fs = fsspec.filesystem("memory")
    for i in range(40):
        fs.pipe_file(f"{memory_root}/{'abc'[i % 3]}/{i:02d}.png", png(i, mode="RGB" if i % 2 else "L"))
    source = f"memory://{memory_root}"
    catalog = scan(FOLDER, source, channels=3)
    entries = random.Random(1).sample(catalog.entries, len(catalog.entries))
    one = read(FOLDER, source, entries, catalog.read_options, channels=3, read_concurrency=1)
    many = read(FOLDER, source, entries, catalog.read_options, channels=3, read_concurrency=32)
    assert list(one) == list(many) == [e.key for e in entries]
    for key in one:
        assert one[key].sha256 == many[key].sha256 and np.array_equal(one[key].image, many[key].image)


def test_async_filesystems_fetch_in_order_in_concurrent_windows(memory_root):
    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    fs = fsspec.filesystem("memory")
    paths = [f"{memory_root}/f[{i}].png" for i in range(23)]  # glob characters must stay literal
    for i, p in enumerate(paths):
        fs.pipe_file(p, bytes([i]) * (i + 1))
    wrapped = AsyncFileSystemWrapper(fs, asynchronous=False)
    assert list(image_files.fetch(wrapped, paths, 5)) == [fs.cat_file(p) for p in paths]
    with pytest.raises(DataError, match=r"f\[missing\]\.png: the file is gone"):
        list(image_files.fetch(wrapped, [*paths[:3], f"{memory_root}/f[missing].png"], 5))


# -- csv ------------------------------------------------------------------------------------
def images(root, n: int, mode: str = "L") -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "img" / f"{i:02d}.png").write_bytes(png(i, mode=mode))
    return [f"img/{i:02d}.png" for i in range(n)]


def table(path, rows: list[dict], columns=("path", "label", "split")):
    path.write_text(
        "\n".join([",".join(columns), *(",".join(str(r.get(c, "")) for c in columns) for r in rows)]) + "\n"
    )
    return path


def test_csv_relative_paths_empty_labels_and_a_split_column(tmp_path):
    paths = images(tmp_path, 12)
    rows = [
        {"path": p, "label": ["cat", "dog", ""][i % 3], "split": "test" if i < 2 else ""} for i, p in enumerate(paths)
    ]
    source = table(tmp_path / "t.csv", rows)
    catalog = scan(CSV, source, test_fraction=0.0)
    assert catalog.class_names == ["cat", "dog"]
    entries = {e.key: e for e in catalog.entries}
    assert entries["img/00.png"].split == "test" and entries["img/01.png"].split == "test"
    assert entries["img/02.png"].label == -1 and entries["img/02.png"].split == "train"
    assert entries["img/03.png"].label == 0 and entries["img/04.png"].label == 1
    assert entries["img/05.png"].location == str(tmp_path / "img" / "05.png") and entries["img/05.png"].stamp
    arrays = read_all(CSV(), str(source), CSV.Options(test_fraction=0.0), {})
    assert arrays.train_images.shape == (10, 1, 8, 8) and list(arrays.test_labels) == [0, 1]


def test_csv_labels_sort_numerically_or_follow_class_names(tmp_path):
    paths = images(tmp_path, 6)
    source = table(tmp_path / "t.csv", [{"path": p, "label": [2, 10, 1][i % 3]} for i, p in enumerate(paths)])
    assert scan(CSV, source).class_names == ["1", "2", "10"]
    named = scan(
        CSV, source, class_names=["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
    assert [e.label for e in named.entries] == [2, 10, 1, 2, 10, 1]  # indexes into the given names
    with pytest.raises(DataError, match=r"row 1: label '2' is not one of the class names given"):
        scan(CSV, source, class_names=["a", "b"])


def test_csv_a_missing_file_is_refused_by_scan_naming_the_row(tmp_path, monkeypatch):
    paths = images(tmp_path, 4)
    rows = [{"path": p, "label": "ab"[i % 2]} for i, p in enumerate(paths)] + [{"path": "img/gone.png", "label": "a"}]
    source = table(tmp_path / "t.csv", rows)
    decoded = []
    monkeypatch.setattr(image_files, "decode_image", lambda *a: decoded.append(a))
    with pytest.raises(
        DataError,
        match=r"t\.csv row 5: img/gone\.png does not exist \(looked for .*img/gone\.png\)"
        r"\. Fix the path in the table .*or remove the row",
    ):
        scan(CSV, source)
    assert decoded == []


def test_csv_bad_rows_and_tables_are_named(tmp_path):
    paths = images(tmp_path, 2)
    with pytest.raises(DataError, match="row 2: split 'validation'"):
        scan(
            CSV,
            table(tmp_path / "a.csv", [{"path": paths[0], "label": "a"}, {"path": paths[1], "split": "validation"}]),
        )
    with pytest.raises(DataError, match="rows 1 and 2 both name img/00.png"):
        scan(CSV, table(tmp_path / "b.csv", [{"path": paths[0], "label": "a"}, {"path": paths[0], "label": "b"}]))
    with pytest.raises(DataError, match="no column 'label'"):
        scan(CSV, table(tmp_path / "c.csv", [{"path": paths[0]}], columns=("path",)))
    with pytest.raises(DataError, match=r"a \.csv, \.tsv or \.parquet file"):
        scan(CSV, tmp_path / "img" / "00.png")


def test_csv_a_sha256_column_is_the_stamp_and_is_checked(tmp_path):
    paths = images(tmp_path, 4)
    digests = [hashlib.sha256((tmp_path / p).read_bytes()).hexdigest() for p in paths]
    rows = [{"path": p, "label": "ab"[i % 2], "sha256": d} for i, (p, d) in enumerate(zip(paths, digests, strict=True))]
    source = table(tmp_path / "t.csv", rows, columns=("path", "label", "sha256"))
    catalog = scan(CSV, source)
    assert [e.stamp for e in catalog.entries] == digests
    read(CSV, source, catalog.entries, catalog.read_options)  # the hashes match: fine
    (tmp_path / paths[2]).write_bytes(png(77))
    with pytest.raises(DataError, match=r"02\.png: its sha256 is .*the table's sha256 column says"):
        read(CSV, source, catalog.entries, catalog.read_options)


def test_csv_from_parquet_with_any_fsspec_uri(tmp_path, memory_root):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe_file(f"{memory_root}/remote/{i}.png", png(50 + i))
    local = images(tmp_path, 3)
    paths = [*local, *(f"memory://{memory_root}/remote/{i}.png" for i in range(3))]
    labels = ["x", "y", None, "x", "y", "x"]
    pq.write_table(
        pa.table({"path": paths, "label": labels, "split": ["train"] * 5 + ["test"]}), tmp_path / "t.parquet"
    )
    catalog = scan(CSV, tmp_path / "t.parquet")
    assert catalog.class_names == ["x", "y"] and [e.label for e in catalog.entries] == [0, 1, -1, 0, 1, 0]
    assert all(e.stamp for e in catalog.entries)
    whole = read(CSV, tmp_path / "t.parquet", catalog.entries, catalog.read_options)
    part = list(reversed(catalog.entries[1:5]))  # local and remote files in one chunk
    for key, item in read(CSV, tmp_path / "t.parquet", part, catalog.read_options).items():
        assert item.sha256 == whole[key].sha256


def test_csv_a_remote_table_may_not_name_local_files(tmp_path, memory_root):
    images(tmp_path, 1)
    fsspec.filesystem("memory").pipe_file(f"{memory_root}/t.csv", f"path,label\n{tmp_path}/img/00.png,a\n".encode())
    with pytest.raises(DataError, match="row 1: .* is a local file, and the table is not"):
        scan(CSV, f"memory://{memory_root}/t.csv")


def test_parquet_without_pyarrow_names_the_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real(name, *a, **k)

    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match="pip install pyarrow"):
        scan(CSV, tmp_path / "t.parquet")


# -- the conformance kit on the built-in formats ------------------------------------------------
def test_imagefolder_and_csv_pass_the_conformance_kit(tmp_path):
    folder(tmp_path / "f", {"cat": 8, "dog": 8, "unlabeled": 4})
    results = check_dataset_format("imagefolder", source=str(tmp_path / "f"), pipeline=False)
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)
    paths = images(tmp_path / "c", 12)
    source = table(tmp_path / "c" / "t.csv", [{"path": p, "label": "ab"[i % 2]} for i, p in enumerate(paths)])
    results = check_dataset_format("csv", source=str(source), pipeline=False)
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)
    results = check_dataset_format("sklearn-digits", source="sklearn:digits", pipeline=False)
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)


def test_scan_reads_only_the_first_images_header_or_all_of_it_when_the_header_is_longer(tmp_path, monkeypatch):
    folder(tmp_path, {"a": 2, "b": 2}, size=12)
    opened = []
    monkeypatch.setattr(image_files, "HEADER_BYTES", 16)  # shorter than a PNG header: the whole file is read
    real = image_files._cat
    monkeypatch.setattr(image_files, "_cat", lambda fs, p: opened.append(p) or real(fs, p))
    first = scan(FOLDER, tmp_path).read_options["first_image"]
    assert (first["width"], first["height"]) == (12, 12) and opened == [str(tmp_path / "a" / "00.png")]
    monkeypatch.setattr(image_files, "HEADER_BYTES", 256 * 2**10)
    opened.clear()
    assert scan(FOLDER, tmp_path).read_options["first_image"]["width"] == 12 and opened == []
