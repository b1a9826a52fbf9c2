"""bench/comm_volume.py: what a pretext method hands to collectives per step, recorded in one process."""

import sys

import pytest

from .conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
try:
    import comm_volume
finally:
    sys.path.pop(0)

CONVNET = ("convnet-s", {"width": 16, "depth": 4}, 28, 1)


@pytest.fixture(scope="module")
def vols():
    return {m: comm_volume.volumes(m, *CONVNET, local_batch=4) for m in ("simclr", "rotation")}


def _trainable(method):
    task = comm_volume.build(method, *CONVNET)
    return sum(p.numel() for p in task.parameters() if p.requires_grad)


def test_simclr_gathers_its_projections_and_rotation_gathers_nothing(vols):
    simclr = vols["simclr"]["collectives"]
    assert simclr["gather_with_grad"]["calls"] == 2  # one per view
    assert simclr["gather_with_grad"]["shapes"] == [[4, 128], [4, 128]]
    assert simclr["gather_with_grad"]["bytes"] == 2 * 4 * 128 * 4
    assert comm_volume.per_rank_bytes(vols["simclr"], 16)["gathered"] > 0
    rotation = vols["rotation"]["collectives"]
    assert all(rotation[k]["calls"] == 0 for k in comm_volume.KINDS)
    assert comm_volume.per_rank_bytes(vols["rotation"], 16)["gathered"] == 0


@pytest.mark.parametrize("method", ["simclr", "rotation"])
def test_batchnorm_statistics_and_gradient_size(vols, method):
    vol = vols[method]
    assert vol["bn_calls"] > 0 and vol["bn_allreduces"] == 4 * vol["bn_calls"]  # every call has a backward
    assert vol["params"] == _trainable(method)
    b = comm_volume.per_rank_bytes(vol, 16)
    assert b["gradient"] == pytest.approx(vol["params"] * 4 * 2 * 15 / 16)


def test_one_rank_sends_nothing(vols):
    assert all(v == 0 for v in comm_volume.per_rank_bytes(vols["simclr"], 1).values())


def test_batch_sized_tensors_scale_with_the_local_batch():
    scaled = comm_volume.volumes("simclr", *CONVNET, local_batch=8, run_batch=4)
    direct = comm_volume.volumes("simclr", *CONVNET, local_batch=8, run_batch=8)
    assert scaled["collectives"] == direct["collectives"]
    assert (scaled["bn_elements"], scaled["params"]) == (direct["bn_elements"], direct["params"])


def test_markdown_has_the_heading_and_a_row_per_method(vols):
    text = comm_volume.markdown([vols["simclr"], vols["rotation"]], 16, 4)
    assert text.startswith("### ")
    assert "| simclr |" in text and "| rotation |" in text
