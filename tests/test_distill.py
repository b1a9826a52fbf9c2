"""The `distill` pretext task: a small student regresses a frozen teacher's embedding of the same view.
The teacher is a tiny past run (pretrain -> freeze -> probe -> report on digits), or an export of it.

The target is the teacher's output; the teacher gets no gradient, never changes, stays out of the
state dict, the optimizer and train(); pretraining is deterministic; the pretrain key follows the
teacher's content; a missing teacher is a PluginError naming the URI and the fix; the conformance
kit passes with a teacher."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pretextflow
from pretextflow import api
from pretextflow.api import teachers
from pretextflow.core.config import load_config
from pretextflow.core.errors import PluginError
from pretextflow.core.registry.preflight import check_plugins, resolved_pretext_params
from pretextflow.core.registry.registry import build_registry, get_registry
from pretextflow.core.stages import StageContext, run_pretrain
from pretextflow.core.toolkit.augment import Augmenter
from pretextflow.core.training import checkpoint
from pretextflow.core.training.model import build_backbone, build_task

from .conftest import REPO, finished_run

CONFIG = REPO / "configs" / "digits_smoke.yaml"
META = {"image_shape": [1, 8, 8], "mean": [0.3], "std": [0.4]}


def _digits(n=32) -> torch.Tensor:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(np.rint(d.images[:n] * 255 / 16).astype(np.uint8)[:, None])


def _config(teacher, *overrides):
    return load_config(
        CONFIG,
        [
            "train.epochs=2",
            "data.source=null",
            "pretext.name=distill",
            "pretext.params={}",
            f"pretext.params.teacher={teacher}",
            *overrides,
        ],
    )


def _task(teacher, *overrides):
    cfg = _config(teacher, *overrides)
    reg = get_registry()
    torch.manual_seed(0)
    return build_task(cfg, build_backbone(cfg, META, reg, seed=0), reg)


@pytest.fixture(scope="module")
def teacher_run(digits_workspace, tmp_path_factory):
    """A finished past run of a wider convnet, in its own store: its run folder is the teacher."""
    store = tmp_path_factory.mktemp("teacher-store")
    cfg = load_config(
        CONFIG,
        [
            "name=distill-teacher",
            "train.epochs=1",
            "data.source=null",
            "backbone.kwargs={width: 24, depth: 3}",
            f"store.uri={store}",
            "probe.label_fractions=[1.0]",
            "probe.baselines=[]",
        ],
    )
    return finished_run(cfg, digits_workspace.root)


@pytest.fixture
def exported_teacher(teacher_run, tmp_path):
    from pretextflow.core.export.formats import export_backbone

    out = tmp_path / "teacher-export"
    export_backbone(teacher_run, "safetensors", str(out))
    return out


# -- (a) the target ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_the_target_is_the_teachers_embedding_of_the_same_view(teacher_run, loss):
    task = _task(teacher_run, f"pretext.params.loss={loss}")
    images = _digits()
    task.train()
    out = task(images, Augmenter(7))
    view = Augmenter(7).view(images, task.view)  # the same draws: the same view
    target = teachers.load_teacher(teacher_run)(view)  # a teacher loaded on its own
    assert torch.equal(target, pretextflow.load_backbone(teacher_run)(view))  # the run's frozen backbone
    projection = task.projector(task.backbone(view))
    assert projection.shape == target.shape == (32, task.teacher.num_features)
    if loss == "cosine":
        by_hand = (2 - 2 * F.cosine_similarity(projection, target, dim=-1)).mean()
    else:
        by_hand = ((F.normalize(projection, dim=-1) - F.normalize(target, dim=-1)) ** 2).mean()
    assert torch.allclose(out.loss, by_hand, rtol=1e-5, atol=1e-6)
    assert out.loss.requires_grad and not target.requires_grad


def test_the_teacher_takes_views_of_any_size_and_grey_or_rgb(teacher_run):
    teacher = teachers.load_teacher(teacher_run)
    extractor = pretextflow.load_backbone(teacher_run)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8))
    luma = (x.float() / 255 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    small = F.interpolate(luma, size=(8, 8), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    assert torch.allclose(teacher(x), extractor(small), atol=1e-6)
    task = _task(teacher_run, "train.image_size=12")  # a 12 px student of an 8 px teacher
    assert task.backbone.image_size == 12
    task.train()
    assert torch.isfinite(task(_digits(8), Augmenter(0, out_size=12)).loss)  # 12 px views, as the loop makes
    with pytest.raises(PluginError, match="takes 1-channel images, the student's have 2"):
        teacher.check_channels(2)


# -- (b) frozen ---------------------------------------------------------------------------------------
def test_the_teacher_gets_no_gradient_and_never_changes_while_the_student_learns(teacher_run):
    task = _task(teacher_run)
    teacher = task.teacher
    assert {k.split(".")[0] for k in task.state_dict()} == {"backbone", "projector"}  # no teacher in checkpoints
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in task.parameters()}
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_student = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    task.train()
    assert not any(m.training for m in teacher.modules())
    teacher.train()  # not even asked directly
    assert not teacher.training
    images, aug = _digits(), Augmenter(0)
    for _ in range(4):
        loss = task(images, aug).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before_student[k], v) for k, v in task.backbone.state_dict().items())


# -- (c) determinism, through the pipeline's pretrain stage -----------------------------------------------
def test_two_identical_pretrainings_give_identical_losses(digits_workspace, teacher_run):
    ctxs = [
        StageContext.create(_config(teacher_run, f"store.uri=memory://distill-{i}"), str(digits_workspace.root))
        for i in (1, 2)
    ]
    for ctx in ctxs:
        run_pretrain(ctx)
    key = ctxs[0].pretrain_key(ctxs[0].dataset())
    a, b = (ctx.store.read_json("pretrain", key, "history.json") for ctx in ctxs)
    assert a["step_loss"] == b["step_loss"] and len(a["step_loss"]) > 10
    assert a["epoch_loss"][-1] < a["epoch_loss"][0]  # the student learns the teacher's embedding
    weights = checkpoint.decode(ctxs[0].store.read_bytes("pretrain", key, "task.safetensors"))[0]["model"]
    assert {k.split(".")[0] for k in weights} == {"backbone", "projector"}


def test_the_report_puts_the_student_beside_its_teacher(digits_workspace, teacher_run, tmp_path):
    from pretextflow.core.store import ArtifactStore

    cfg = _config(
        teacher_run,
        f"store.uri={tmp_path / 'store'}",
        "backbone.kwargs={width: 8, depth: 3}",
        "probe.label_fractions=[0.1, 1.0]",
        "probe.baselines=[]",
    )
    run = ArtifactStore(finished_run(cfg, digits_workspace.root))
    manifest, teacher = run.read_json("manifest.json"), ArtifactStore(teacher_run).read_json("manifest.json")
    record = manifest["teacher"]
    assert record["run_id"] == teacher["run_id"] and record["backbone"]["kwargs"]["width"] == 24
    assert record["sha256"] == manifest["config"]["pretext"]["params"]["teacher_sha256"]
    assert record["metrics"]["linear_top1"] == teacher["metrics"]["linear_top1"]
    report = run.read_bytes("report.md").decode()
    section = report.split("## Distilled from a teacher (test top-1)")[1].split("## ")[0]
    teacher_row, student_row = (
        line for line in section.splitlines() if line.startswith("| teacher") or line.startswith("| student")
    )
    assert teacher["run_id"] in teacher_row and f"{teacher['metrics']['linear_top1']:.4f}" in teacher_row
    assert "width 8" in student_row and f"{manifest['metrics']['linear_top1']:.4f}" in student_row
    assert "SSL linear, fewest labels" in section and "(10%," in student_row


def test_other_tasks_record_no_teacher(teacher_run):
    from pretextflow.core.store import ArtifactStore

    assert ArtifactStore(teacher_run).read_json("manifest.json")["teacher"] is None  # the SimCLR teacher itself


# -- the stage key follows the teacher's content ---------------------------------------------------------
def _rewrite_weights(folder) -> None:
    """Other weights in the same export folder, at the same URI."""
    path = folder / "backbone.safetensors"
    groups, spec = checkpoint.decode(path.read_bytes())
    name = next(k for k, v in groups["backbone"].items() if v.is_floating_point() and v.ndim > 1)
    groups["backbone"][name] = groups["backbone"][name] + 0.05
    path.write_bytes(checkpoint.encode(groups, spec))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, whatever the clock's resolution


def test_the_pretrain_key_changes_with_the_teachers_content_at_the_same_uri(digits_workspace, exported_teacher):
    ctx = StageContext.create(_config(exported_teacher, "store.uri=memory://distill-key"), str(digits_workspace.root))
    ds = ctx.dataset()
    params = resolved_pretext_params(ctx.cfg, ctx.registry)
    assert params["teacher_sha256"] == teachers.teacher_sha256(str(exported_teacher))
    key = ctx.pretrain_key(ds)
    assert ctx.pretrain_key(ds) == key  # stable while the teacher is
    x = _digits(4)
    before = teachers.load_teacher(str(exported_teacher))(x)
    _rewrite_weights(exported_teacher)
    assert ctx.pretrain_key(ds) != key
    assert not torch.equal(teachers.load_teacher(str(exported_teacher))(x), before)
    pinned = _config(exported_teacher, f"pretext.params.teacher_sha256={params['teacher_sha256']}")
    with pytest.raises(PluginError, match="has changed.*drop teacher_sha256"):
        check_plugins(pinned, get_registry())


# -- (d) no teacher there ---------------------------------------------------------------------------------
def test_a_missing_teacher_is_refused_naming_the_uri_and_the_fix(tmp_path):
    missing = tmp_path / "artifacts" / "runs" / "20990101-000000-nope"
    with pytest.raises(PluginError) as err:
        check_plugins(_config(missing), get_registry())
    msg = str(err.value)
    assert f"pretext.params.teacher {missing} does not exist" in msg
    assert "`pretextflow runs`" in msg and "pretextflow export" in msg and "Traceback" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(PluginError, match="holds no manifest.json and no pretextflow-export.json"):
        check_plugins(_config(tmp_path / "empty"), get_registry())
    with pytest.raises(PluginError, match=r"teacher .*weights\.safetensors does not exist"):
        teachers.load_teacher(str(tmp_path / "weights.safetensors"))


# -- the conformance kit, with a teacher --------------------------------------------------------------------
def test_distill_passes_the_conformance_kit(teacher_run):
    from pretextflow.testing import check_pretext_task

    results = check_pretext_task(
        "distill", params={"teacher": teacher_run}, registry=build_registry(load_entry_points=False)
    )
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)
    assert {r.name for r in results} >= {"params", "determinism", "state_dict", "device", "pipeline"}


def test_only_the_distill_task_has_the_teacher_code_in_its_key():
    """The teacher loader is the stable API's ``pretextflow.api.teachers``: a task importing only
    ``pretextflow.api`` has neither it nor the export code it reads in its pretrain key's closure."""
    from pretextflow.core.keys import import_closure
    from pretextflow.plugins.pretext import distill, simclr

    assert api.API_VERSION == "2.2"
    assert set(teachers.__all__) == {"load_teacher", "teacher_sha256"}

    def files(module) -> set[str]:
        return {p.replace(os.sep, "/") for p in import_closure(module.__name__, module.__file__)}

    assert not {f for f in files(simclr) if "/core/export/" in f or f.endswith("api/teachers.py")}
    assert any(f.endswith("core/export/teacher.py") for f in files(distill))
    assert any(f.endswith("api/teachers.py") for f in files(distill))
