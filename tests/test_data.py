import gzip
import io

import numpy as np
import pytest
from PIL import Image

from pretextflow.core.data.dataset import check_name, validate_arrays
from pretextflow.core.data.decode import read_all
from pretextflow.core.errors import DataError
from pretextflow.core.registry.contracts import DatasetArrays
from pretextflow.core.registry.registry import get_registry
from pretextflow.plugins.datasets.idx import FILES, IdxOptions


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_source(fs_root: str, n_train=20, n_test=10, size=6, gz=True, corrupt=None):
    """A tiny MNIST-like IDX source written through fsspec (works for memory:// too)."""
    import fsspec

    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, size, size)),
        "train_labels": np.arange(n_train) % 3,
        "test_images": rng.integers(0, 256, (n_test, size, size)),
        "test_labels": np.arange(n_test) % 3,
    }
    for key, stem in FILES.items():
        payload = idx_bytes(arrays[key])
        if corrupt == key:
            payload = payload[:-5]
        data = gzip.compress(payload, mtime=0) if gz else payload
        with fsspec.open(f"{fs_root}/{stem}{'.gz' if gz else ''}", "wb") as f:
            f.write(data)
    return arrays


def read_idx(source, **options):
    fmt = get_registry().dataset_format("idx")()
    return read_all(fmt, source, IdxOptions(**options), {})


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reads_gz_and_raw_through_fsspec(gz):
    import fsspec

    fsspec.filesystem("memory").rm("/idx", recursive=True) if fsspec.filesystem("memory").exists("/idx") else None
    arrays = write_idx_source("memory://idx", gz=gz)
    out = read_idx("memory://idx")
    assert out.train_images.shape == (20, 1, 6, 6) and out.train_images.dtype == np.uint8
    np.testing.assert_array_equal(out.train_images[:, 0], arrays["train_images"])
    np.testing.assert_array_equal(out.test_labels, arrays["test_labels"])
    assert out.class_names == ["0", "1", "2"]


def test_idx_truncated_file_is_refused(tmp_path):
    write_idx_source(str(tmp_path), corrupt="train_images")
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(str(tmp_path))


def test_idx_corrupt_gzip_and_bad_magic(tmp_path):
    write_idx_source(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(str(tmp_path))


def test_idx_missing_files_and_count_mismatch(tmp_path):
    with pytest.raises(DataError, match="no train-images-idx3-ubyte.gz"):
        read_idx(str(tmp_path))
    write_idx_source(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(7))))
    with pytest.raises(DataError, match="20 images but 7 labels"):
        read_idx(str(tmp_path))


def test_idx_checksum_option_is_enforced(tmp_path):
    write_idx_source(str(tmp_path))
    with pytest.raises(DataError, match="expected deadbeef"):
        read_idx(str(tmp_path), checksums={"train-images-idx3-ubyte": "deadbeef"})


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root, layout: dict[str, int], size=8, mode="L"):
    rng = np.random.default_rng(1)
    for rel, count in layout.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size) if mode == "L" else (size, size, 3)
            (d / f"img{i:03d}.png").write_bytes(_png(rng.integers(0, 256, shape, dtype=np.uint8)))


def read_folder(source, **options):
    fmt = get_registry().dataset_format("imagefolder")
    return read_all(fmt(), str(source), fmt.Options(**options), {})


def test_imagefolder_class_folders_with_hash_split(tmp_path):
    make_folder(tmp_path, {"cat": 30, "dog": 30})
    out = read_folder(tmp_path, test_fraction=0.25)
    assert out.class_names == ["cat", "dog"]
    assert len(out.train_images) + len(out.test_images) == 60 and 0 < len(out.test_images) < 30
    again = read_folder(tmp_path, test_fraction=0.25)
    np.testing.assert_array_equal(out.test_images, again.test_images)  # the split is a function of the paths


def test_imagefolder_explicit_splits_and_unlabeled(tmp_path):
    make_folder(tmp_path / "a", {"train/x": 4, "train/y": 4, "test/x": 2, "test/y": 2}, mode="RGB")
    out = read_folder(tmp_path / "a")
    assert out.train_images.shape == (8, 3, 8, 8) and len(out.test_images) == 4
    make_folder(tmp_path / "b", {".": 10})
    flat = read_folder(tmp_path / "b", test_fraction=0.0)
    assert flat.class_names == [] and (flat.train_labels == -1).all() and len(flat.train_images) == 10


def test_imagefolder_bad_inputs_are_named(tmp_path):
    # two classes: a folder of one class is refused by the listing check, before anything is decoded
    make_folder(tmp_path / "sizes", {"a": 2, "b": 2})
    (tmp_path / "sizes" / "a" / "big.png").write_bytes(_png(np.zeros((16, 16), np.uint8)))
    with pytest.raises(DataError, match="image_size"):
        read_folder(tmp_path / "sizes")
    assert read_folder(tmp_path / "sizes", image_size=8).train_images.shape[1:] in ((1, 8, 8),)
    make_folder(tmp_path / "bad", {"a": 2, "b": 2})
    (tmp_path / "bad" / "a" / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match="zero.png: empty file"):
        read_folder(tmp_path / "bad")
    (tmp_path / "bad" / "a" / "zero.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="zero.png: not a readable image"):
        read_folder(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        read_folder(tmp_path / "empty")


def _arrays(**kw):
    base = dict(
        train_images=np.zeros((4, 1, 4, 4), np.uint8),
        train_labels=np.array([0, 1, 0, 1]),
        test_images=np.zeros((2, 1, 4, 4), np.uint8),
        test_labels=np.array([0, 1]),
        class_names=["a", "b"],
    )
    base.update(kw)
    return DatasetArrays(**base)


def test_validate_arrays_refuses_what_would_break_training():
    validate_arrays(_arrays(), "src")
    with pytest.raises(DataError, match="out of range"):
        validate_arrays(_arrays(test_labels=np.array([0, 5])), "src")
    with pytest.raises(DataError, match="at least two classes"):
        validate_arrays(_arrays(train_labels=np.zeros(4, int)), "src")
    with pytest.raises(DataError, match="training split is empty"):
        validate_arrays(_arrays(train_images=np.zeros((0, 1, 4, 4), np.uint8), train_labels=np.zeros(0, int)), "src")
    with pytest.raises(DataError, match="square"):
        validate_arrays(
            _arrays(train_images=np.zeros((4, 2, 4, 4), np.uint8), test_images=np.zeros((2, 2, 4, 4), np.uint8)), "src"
        )
    with pytest.raises(DataError, match="must match"):
        validate_arrays(_arrays(test_images=np.zeros((2, 1, 5, 5), np.uint8)), "src")
    with pytest.raises(DataError, match="dataset name"):
        check_name("../escape")


def test_canonical_encoding_is_deterministic(tmp_path):
    from pretextflow.core.data.layout import write_arrays

    fmt = get_registry().dataset_format("sklearn-digits")
    for out in ("a", "b"):
        write_arrays(tmp_path / out, "digits", "sklearn-digits", read_all(fmt(), "sklearn:digits", fmt.Options(), {}))

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    a, b = files(tmp_path / "a" / "digits"), files(tmp_path / "b" / "digits")
    assert a == b and "meta.json" in a and any(k.endswith(".npy") for k in a)


def test_default_dataset_names():
    from pretextflow.core.data.dataset import default_name

    assert default_name("/usr/share/datasets/fashion-mnist/") == "fashion-mnist"
    assert default_name("sklearn:digits") == "digits"
    assert default_name("s3://bucket/My Photos") == "my-photos"


def test_imagefolder_mixed_channel_counts_need_a_choice(tmp_path):
    make_folder(tmp_path / "mixed" / "a", {".": 3})  # grayscale
    make_folder(tmp_path / "mixed" / "b", {".": 3}, mode="RGB")
    with pytest.raises(DataError, match="mixes channel counts.*channels=1.*channels=3"):
        read_folder(tmp_path / "mixed")
    for channels in (1, 3):  # either choice converts every image
        out = read_folder(tmp_path / "mixed", channels=channels, test_fraction=0.0)
        assert out.train_images.shape == (6, channels, 8, 8)
