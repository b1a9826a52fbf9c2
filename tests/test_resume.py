"""An interrupted pretraining resumes from its last checkpoint and ends with the same weights
(in-process interruptions and a real SIGKILL); a non-finite loss stops or rolls back (train.on_nonfinite)."""

from pathlib import Path

import pytest
import torch

from pretextflow.core.stages import StageContext, run_pretrain
from pretextflow.core.training import checkpoint


class Interrupted(Exception):
    pass


def final_weights(ctx):
    ds = ctx.dataset()
    groups, _ = checkpoint.decode(ctx.store.read_bytes("pretrain", ctx.pretrain_key(ds), "task.safetensors"))
    return groups["model"]


@pytest.mark.parametrize("pretext", ["simclr", "rotation", "inpainting"])
def test_resume_after_interruption_matches_uninterrupted(digits_workspace, digits_config, pretext):
    overrides = [f"pretext.name={pretext}", "pretext.params={}", "train.epochs=4"]
    whole = StageContext.create(
        digits_config(*overrides, f"store.uri=memory://whole-{pretext}"), str(digits_workspace.root)
    )
    run_pretrain(whole)

    cut = StageContext.create(
        digits_config(*overrides, f"store.uri=memory://cut-{pretext}"), str(digits_workspace.root)
    )

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


# -- mid-epoch checkpoints (train.checkpoint_every_steps) ----------------------------------------
def _ctx(digits_workspace, digits_config, store: str, *overrides: str) -> StageContext:
    return StageContext.create(digits_config(*overrides, f"store.uri={store}"), str(digits_workspace.root))


def _history(ctx):
    return ctx.store.read_json("pretrain", ctx.pretrain_key(ctx.dataset()), "history.json")


@pytest.mark.parametrize("pretext", ["simclr", "byol", "moco", "dino"])
def test_mid_epoch_interruption_resumes_bit_identical(digits_workspace, digits_config, pretext):
    """Digits: 10 steps per epoch. A checkpoint every 4 steps (and at each epoch end); the run dies
    after step 13, so it resumes from step 12, two steps into the second epoch: the permutation, the
    partial epoch's losses, the augmenter, the optimizer and the task's buffers (BYOL's EMA target
    and momentum, MoCo's queue, DINO's centre, teacher and schedule progress) must all come back."""
    overrides = [
        f"pretext.name={pretext}",
        "pretext.params={}",
        "train.epochs=3",
        "train.checkpoint_every_steps=4",
        "train.threads=1",
    ]
    whole = _ctx(digits_workspace, digits_config, f"memory://mid-whole-{pretext}", *overrides)
    run_pretrain(whole)
    cut = _ctx(digits_workspace, digits_config, f"memory://mid-cut-{pretext}", *overrides)
    key = cut.pretrain_key(cut.dataset())
    assert key == whole.pretrain_key(whole.dataset())
    seen = []

    def crash(steps):
        seen.append(steps)
        if steps == 13:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_pretrain(cut, on_step=crash)
    assert seen == list(range(1, 14))
    _, info = checkpoint.decode(cut.store.read_bytes("pretrain", key, "checkpoint.safetensors"))
    assert info["step"] == 12 and len(info["epoch_losses"]) == 2  # mid-epoch, with its partial sums

    resumed = []
    run_pretrain(cut, on_step=resumed.append)
    assert resumed == list(range(13, 31))  # steps 13..30 only: nothing before the checkpoint is redone
    a, b = final_weights(whole), final_weights(cut)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ha, hb = _history(whole), _history(cut)
    assert ha["step_loss"] == hb["step_loss"] and ha["epoch_loss"] == hb["epoch_loss"]
    assert ha["epoch_logs"] == hb["epoch_logs"]  # e.g. DINO's teacher temperature, BYOL's momentum
    assert hb["rollbacks"] == []


def test_checkpoint_every_steps_is_validated_and_not_in_the_key(digits_workspace, digits_config):
    from pretextflow.core.errors import ConfigError

    for bad in (
        "train.checkpoint_every_steps=0",
        "train.on_nonfinite=skip",
        "train.rollback_lr_factor=1.5",
        "train.max_rollbacks=0",
    ):
        field = bad.split("=")[0]
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            digits_config(bad)
    ds = None
    keys = {}
    for name, extra in {
        "plain": [],
        "steps": ["train.checkpoint_every_steps=3"],
        "factor": ["train.rollback_lr_factor=0.25"],
        "rb": ["train.on_nonfinite=rollback"],
        "rb-steps": ["train.on_nonfinite=rollback", "train.checkpoint_every_steps=3"],
    }.items():
        ctx = _ctx(digits_workspace, digits_config, "memory://keys", *extra)
        ds = ds or ctx.dataset()
        keys[name] = ctx.pretrain_key(ds)
    # how often a checkpoint is written does not change what is learned...
    assert keys["plain"] == keys["steps"] == keys["factor"]
    # ...except in rollback mode, where the last good checkpoint is where a rollback goes back to
    assert keys["rb"] != keys["plain"] and keys["rb-steps"] != keys["rb"]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """A crash while a checkpoint is being written (here: half the bytes, then death) leaves the
    previous checkpoint under the real name, whole: writes go to a temporary name, then rename."""
    from pretextflow.core.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "store"))
    old = checkpoint.encode({"model": {"w": torch.arange(1000.0)}}, {"step": 4})
    store.write_bytes(old, "pretrain", "k", "checkpoint.safetensors")
    new = checkpoint.encode({"model": {"w": torch.zeros(1000)}}, {"step": 8})

    def dies_halfway(path, data, **kw):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise SystemExit("killed")  # not an OSError: no clean-up runs, as with SIGKILL

    monkeypatch.setattr(store.fs, "pipe_file", dies_halfway)
    with pytest.raises(SystemExit):
        store.write_bytes(new, "pretrain", "k", "checkpoint.safetensors")
    assert store.read_bytes("pretrain", "k", "checkpoint.safetensors") == old
    assert checkpoint.decode(old)[1]["step"] == 4


# -- a real SIGKILL ------------------------------------------------------------------------------
# The pretrain stage in a process of its own: argv = config, workspace, overrides...
RUN_STAGE = (
    "import sys; from pretextflow.core.config import load_config; "
    "from pretextflow.core.stages import StageContext, run_pretrain; "
    "run_pretrain(StageContext.create(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2]))"
)


def test_sigkill_at_a_random_time_then_rerun_gives_identical_weights(digits_workspace, tmp_path):
    import hashlib
    import random
    import signal
    import subprocess
    import sys
    import time

    from pretextflow.core.config import load_config

    config = str(Path(__file__).resolve().parents[1] / "configs" / "digits_smoke.yaml")
    overrides = [
        "pretext.name=moco",
        "pretext.params={}",
        "train.epochs=20",
        "train.checkpoint_every_steps=5",
        "train.threads=1",
        "train.log_every=1000",
    ]

    def stage(store):
        return [sys.executable, "-c", RUN_STAGE, config, str(digits_workspace.root), *overrides, f"store.uri={store}"]

    ctx = StageContext.create(
        load_config(config, overrides + [f"store.uri={tmp_path / 'killed'}"]), str(digits_workspace.root)
    )
    key = ctx.pretrain_key(ctx.dataset())
    folder = tmp_path / "killed" / "pretrain" / key
    proc = subprocess.Popen(stage(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (folder / "checkpoint.safetensors").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    delay = random.uniform(0.0, 0.5)  # somewhere in the remaining ~190 steps (~7 s on this machine)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"not killed: finished within {delay:.3f} s of its first checkpoint"
    assert not (folder / "_COMPLETE").exists()
    _, info = checkpoint.decode((folder / "checkpoint.safetensors").read_bytes())
    assert 5 <= info["step"] < 200

    for store in (tmp_path / "killed", tmp_path / "whole"):  # the rerun, and an uninterrupted run
        done = subprocess.run(stage(store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    killed, whole = (
        (d / "pretrain" / key / "task.safetensors").read_bytes() for d in (tmp_path / "killed", tmp_path / "whole")
    )
    assert hashlib.sha256(killed).hexdigest() == hashlib.sha256(whole).hexdigest(), (
        f"killed {delay:.3f} s after the first checkpoint, resumed from step {info['step']}"
    )
    a, b = checkpoint.decode(killed)[0]["model"], checkpoint.decode(whole)[0]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    assert not (folder / "checkpoint.safetensors").exists()


# -- non-finite losses (train.on_nonfinite) ------------------------------------------------------
def _nan_at(monkeypatch, calls):
    """Make SimCLR's forward return a NaN loss on the given forward calls (0-based, counted across
    rollbacks and resumes in this process): a deterministic stand-in for a diverging step."""
    from pretextflow.plugins.pretext.simclr import SimCLR

    count = [0]
    forward = SimCLR.forward

    def patched(self, images, aug):
        out = forward(self, images, aug)
        if calls(count[0]):
            out.loss = out.loss * float("nan")
        count[0] += 1
        return out

    monkeypatch.setattr(SimCLR, "forward", patched)


NAN_RUN = [
    "pretext.name=simclr",
    "pretext.params={}",
    "train.epochs=2",
    "train.checkpoint_every_steps=4",
    "train.log_every=1",
    "train.threads=1",
]


def test_nonfinite_loss_stops_naming_step_and_method_and_keeps_the_checkpoint(
    digits_workspace, digits_config, monkeypatch
):
    from pretextflow.core.errors import TrainingDiverged

    ctx = _ctx(digits_workspace, digits_config, "memory://nan-stop", *NAN_RUN)
    key = ctx.pretrain_key(ctx.dataset())
    saved = {}
    _nan_at(monkeypatch, lambda call: call == 9)
    with pytest.raises(
        TrainingDiverged,
        match=r"simclr: non-finite loss \(nan\) at step 9 .*last good "
        r"checkpoint \(step 8\) is kept",
    ) as err:
        run_pretrain(
            ctx,
            on_step=lambda s: (
                saved.setdefault(s, ctx.store.read_bytes("pretrain", key, "checkpoint.safetensors"))
                if s in (4, 8)
                else None
            ),
        )
    assert "train.on_nonfinite: rollback" in str(err.value)  # names the fix
    assert ctx.store.read_bytes("pretrain", key, "checkpoint.safetensors") == saved[8]  # byte-identical
    assert not ctx.store.is_complete("pretrain", key)

    # nothing lost: without the fault, the rerun resumes at step 8 and ends as a run never interrupted
    monkeypatch.undo()
    resumed = []
    run_pretrain(ctx, on_step=resumed.append)
    assert resumed[0] == 9
    whole = _ctx(digits_workspace, digits_config, "memory://nan-stop-whole", *NAN_RUN)
    run_pretrain(whole)
    a, b = final_weights(whole), final_weights(ctx)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_weights_are_never_checkpointed(digits_workspace, digits_config, monkeypatch):
    """A finite loss whose gradient is NaN (sqrt at 0) poisons the weights at step 7; the checkpoint
    due after it is refused and the one from step 4 stays."""
    from pretextflow.core.errors import TrainingDiverged
    from pretextflow.plugins.pretext.simclr import SimCLR

    forward, count = SimCLR.forward, [0]

    def patched(self, images, aug):
        out = forward(self, images, aug)
        if count[0] == 7:
            out.loss = out.loss + torch.sqrt(next(self.parameters()).sum() * 0)  # + 0, gradient NaN
        count[0] += 1
        return out

    monkeypatch.setattr(SimCLR, "forward", patched)
    ctx = _ctx(digits_workspace, digits_config, "memory://nan-weights", *NAN_RUN)
    key = ctx.pretrain_key(ctx.dataset())
    saved = {}
    with pytest.raises(TrainingDiverged, match=r"simclr: non-finite weights after the update at step 7 "):
        run_pretrain(
            ctx,
            on_step=lambda s: (
                saved.setdefault(s, ctx.store.read_bytes("pretrain", key, "checkpoint.safetensors")) if s == 4 else None
            ),
        )
    data = ctx.store.read_bytes("pretrain", key, "checkpoint.safetensors")
    assert data == saved[4]
    groups, _ = checkpoint.decode(data)
    assert all(torch.isfinite(t).all() for t in groups["model"].values() if t.is_floating_point())


def _logged_lrs(records) -> dict[int, float]:
    import re

    out = {}
    for r in records:
        m = re.search(r"step (\d+)/\d+ loss \S+ lr (\S+)$", r.getMessage())
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def test_rollback_lowers_the_lr_and_finishes_deterministically(digits_workspace, digits_config, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="pretextflow")
    rb = [*NAN_RUN, "train.on_nonfinite=rollback", "train.rollback_lr_factor=0.5"]
    clean = _ctx(digits_workspace, digits_config, "memory://rb-clean", *rb)
    run_pretrain(clean)
    clean_lrs = _logged_lrs(caplog.records)
    caplog.clear()

    runs = []
    for i in range(2):  # same config, same fault => same result
        _nan_at(monkeypatch, lambda call: call == 9)
        ctx = _ctx(digits_workspace, digits_config, f"memory://rb-{i}", *rb)
        run_pretrain(ctx)
        runs.append(ctx)
    lrs = _logged_lrs(caplog.records)
    hist = _history(runs[0])
    assert hist["rollbacks"] == [
        {
            "step": 9,
            "epoch": 1,
            "problem": "non-finite loss (nan)",
            "restored_step": 8,
            "lr_scale": 0.5,
            "lr": pytest.approx(0.001),
        }
    ]
    assert any("rolled back to step 8" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert len(hist["step_loss"]) == 20  # every step once in the history, the failed one not counted
    assert hist["step_loss"][:8] == _history(clean)["step_loss"][:8]  # restored from step 8
    assert hist["step_loss"][8:] != _history(clean)["step_loss"][8:]
    for step in range(9, 21):  # the lr after the rollback is half the schedule's
        assert lrs[step] == pytest.approx(0.5 * clean_lrs[step], rel=1e-2)
    a, b = final_weights(runs[0]), final_weights(runs[1])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _history(runs[1])["rollbacks"] == hist["rollbacks"]


def test_rollback_before_any_checkpoint_goes_back_to_the_start(digits_workspace, digits_config, monkeypatch):
    _nan_at(monkeypatch, lambda call: call == 2)
    ctx = _ctx(digits_workspace, digits_config, "memory://rb-start", *NAN_RUN, "train.on_nonfinite=rollback")
    run_pretrain(ctx)
    assert [(e["step"], e["restored_step"]) for e in _history(ctx)["rollbacks"]] == [(2, 0)]


def test_rollbacks_are_recorded_in_the_manifest_and_the_report(digits_workspace, digits_config, monkeypatch):
    from pretextflow.core.stages import run_freeze, run_probe, run_report

    _nan_at(monkeypatch, lambda call: call == 2)
    ctx = _ctx(
        digits_workspace,
        digits_config,
        "memory://rb-report",
        *NAN_RUN,
        "train.on_nonfinite=rollback",
        "probe.baselines=[]",
        "probe.label_fractions=[1.0]",
        "probe.linear_max_iter=20",
    )
    run_pretrain(ctx)
    run_freeze(ctx)
    run_probe(ctx)
    out = run_report(ctx)
    manifest = out["manifest"]
    assert [(r["step"], r["restored_step"], r["lr_scale"]) for r in manifest["pretrain"]["rollbacks"]] == [(2, 0, 0.5)]
    report = ctx.store.read_bytes("runs", manifest["run_id"], "report.md").decode()
    assert "1 rollback (non-finite loss (nan) at step 2 -> back to step 0, lr x0.5)" in report


def test_rollback_survives_a_crash_with_its_lower_lr(digits_workspace, digits_config, monkeypatch):
    """The lowered lr and the rollback record are in the checkpoints: rollback at step 9, crash after
    step 14, resume from step 12 => the same weights as the run that never crashed."""
    rb = [*NAN_RUN, "train.on_nonfinite=rollback"]
    _nan_at(monkeypatch, lambda call: call == 9)
    whole = _ctx(digits_workspace, digits_config, "memory://rb-crash-whole", *rb)
    run_pretrain(whole)

    _nan_at(monkeypatch, lambda call: call == 9)
    cut = _ctx(digits_workspace, digits_config, "memory://rb-crash-cut", *rb)

    def crash(steps):
        if steps == 14:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_pretrain(cut, on_step=crash)
    run_pretrain(cut)
    a, b = final_weights(whole), final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _history(cut)["rollbacks"] == _history(whole)["rollbacks"] != []


def test_too_many_rollbacks_stop_the_run(digits_workspace, digits_config, monkeypatch):
    from pretextflow.core.errors import TrainingDiverged

    _nan_at(monkeypatch, lambda call: call >= 9)  # diverges whatever the lr
    ctx = _ctx(
        digits_workspace,
        digits_config,
        "memory://rb-max",
        *NAN_RUN,
        "train.on_nonfinite=rollback",
        "train.max_rollbacks=2",
    )
    # the first NaN at step 9, then at step 8 after each rollback to the checkpoint at step 8
    with pytest.raises(
        TrainingDiverged,
        match=r"simclr: non-finite loss \(nan\) at step 8 .*after 2 rollbacks "
        r"\(train\.max_rollbacks=2\).*0\.25 x train\.lr.*step 8\) is kept",
    ):
        run_pretrain(ctx)
    assert not ctx.store.is_complete("pretrain", ctx.pretrain_key(ctx.dataset()))


def test_rollback_in_two_processes_agrees_across_ranks(digits_workspace, digits_config, tmp_path):
    """DDP (2 CPU processes): every rank sees the non-finite loss (it is reduced before the update) and
    rolls back together; an lr of 1e30 diverges at any factor, so the run stops after max_rollbacks
    with the rank's own error instead of hanging in a collective."""
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.errors import TrainingDiverged
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    cfg = digits_config(
        "train.devices=2",
        "train.threads=1",
        "train.epochs=2",
        "train.lr=1e30",
        "train.warmup_epochs=0",
        "pretext.name=rotation",
        "pretext.params={}",
        "train.on_nonfinite=rollback",
        "train.max_rollbacks=2",
        "train.checkpoint_every_steps=4",
    )
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(TrainingDiverged, match=r"rotation: non-finite .* at step \d+ .*after 2 rollbacks"):
        pretrain(cfg, load_dataset(str(digits_workspace.data_dir), "digits"), store, "key", get_registry())
    assert not store.is_complete("pretrain", "key")
