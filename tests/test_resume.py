"""An interrupted pretraining resumes from its last checkpoint and ends with the same weights."""
import pytest
import torch

from pretextflow.core import checkpoint
from pretextflow.core.stages import StageContext, run_pretrain


class Interrupted(Exception):
    pass


def final_weights(ctx):
    ds = ctx.dataset()
    groups, _ = checkpoint.decode(ctx.store.read_bytes("pretrain", ctx.pretrain_key(ds), "task.safetensors"))
    return groups["model"]


@pytest.mark.parametrize("pretext", ["simclr", "rotation", "inpainting"])
def test_resume_after_interruption_matches_uninterrupted(digits_workspace, digits_config, pretext):
    overrides = [f"pretext.name={pretext}", "pretext.params={}", "train.epochs=4"]
    whole = StageContext.create(digits_config(*overrides, f"store.uri=memory://whole-{pretext}"),
                                str(digits_workspace.root))
    run_pretrain(whole)

    cut = StageContext.create(digits_config(*overrides, f"store.uri=memory://cut-{pretext}"),
                              str(digits_workspace.root))

    def crash(epoch):
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_pretrain(cut, on_epoch_end=crash)
    key = cut.pretrain_key(cut.dataset())
    assert cut.store.exists("pretrain", key, "checkpoint.safetensors")
    assert not cut.store.is_complete("pretrain", key)

    resumed = run_pretrain(cut)
    assert resumed["cached"] is False
    a, b = final_weights(whole), final_weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist_a = whole.store.read_json("pretrain", key, "history.json")
    hist_b = cut.store.read_json("pretrain", key, "history.json")
    assert hist_a["step_loss"] == hist_b["step_loss"]
    assert not cut.store.exists("pretrain", key, "checkpoint.safetensors")  # cleaned up once complete
