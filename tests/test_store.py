import pytest

from pretextflow.core.store import ArtifactStore, StoreError


def test_memory_store_round_trip_and_completion_marker():
    store = ArtifactStore("memory://store-test")
    store.write_json({"a": 1}, "probe", "k1", "metrics.json")
    assert store.read_json("probe", "k1", "metrics.json") == {"a": 1}
    assert not store.is_complete("probe", "k1")
    store.mark_complete("probe", "k1")
    assert store.is_complete("probe", "k1")
    assert store.listdir("probe", "k1") == ["_COMPLETE", "metrics.json"]  # no temp files left behind


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path / "s"))

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.fs, "mv", boom)
    with pytest.raises(StoreError, match="No space left"):
        store.write_bytes(b"x" * 10, "pretrain", "k", "task.safetensors")
    assert not store.exists("pretrain", "k", "task.safetensors")
    assert store.listdir("pretrain", "k") == []
