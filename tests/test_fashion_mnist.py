"""The committed data.dvc is reproducible: ingesting Fashion-MNIST gives exactly its md5."""

import hashlib

import pytest
import yaml

from pretextflow.core.data.ingest import ingest
from pretextflow.core.errors import DataError
from pretextflow.plugins.datasets.known import fetch_known

from .conftest import REPO, require_fashion_mnist


def test_ingest_reproduces_the_committed_data_dvc(workspace):
    source = require_fashion_mnist()
    result = ingest(workspace, str(source), "idx", "fashion-mnist")
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    produced = yaml.safe_load(workspace.data_dvc.read_text())["outs"][0]
    assert produced["md5"] == committed["md5"] == result["data_version"]
    assert (produced["size"], produced["nfiles"]) == (committed["size"], committed["nfiles"])
    assert result["counts"] == {"train": 60000, "test": 10000, "train_labelled": 60000, "test_labelled": 10000}
    # pushed: the remote holds the directory listing object
    md5 = produced["md5"].removesuffix(".dir")
    assert (workspace.root / ".dvc-remote" / "files" / "md5" / md5[:2] / (md5[2:] + ".dir")).exists()
    # ingesting the same source again changes nothing
    assert ingest(workspace, str(source), "idx", "fashion-mnist")["changed"] is False


def test_fetch_verifies_checksums_from_a_mirror(tmp_path):
    source = require_fashion_mnist()
    out = fetch_known("fashion-mnist", tmp_path / "dl", mirror=f"file://{source}")
    for f in source.iterdir():
        assert hashlib.sha256((out / f.name).read_bytes()).digest() == hashlib.sha256(f.read_bytes()).digest()
    # a corrupt mirror: refused, and nothing written under the real name
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in source.iterdir():
        data = f.read_bytes()
        (bad / f.name).write_bytes(data[:-100] if "train-images" in f.name else data)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_known("fashion-mnist", tmp_path / "dl2", mirror=str(bad))
    assert not (tmp_path / "dl2" / "train-images-idx3-ubyte.gz").exists()


def test_remote_sources_must_verify():
    from pretextflow.plugins.datasets.idx import IdxOptions, _verify

    with pytest.raises(DataError, match="must be verified"):
        _verify("https://example.invalid/x", {"train-images-idx3-ubyte": "00"}, IdxOptions())
