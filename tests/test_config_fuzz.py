"""Property: any config either is refused with a PretextflowError (ConfigError, PluginError, DataError:
a message naming the field and the fix) or runs. Never another exception from inside.

Hypothesis builds configs around configs/digits_smoke.yaml with random values and types for
train.*, probe.*, pretext.name (installed names and random strings) and pretext.params (the task's
own fields with random values, and random keys), backbone.name/kwargs, data.*, store.*, report.*,
the seed and the name. "Runs" is the cheapest real path: the plugin checks the CLI makes before
starting (core.preflight), the dataset, the stage keys, the real pretraining loop for exactly one
step (one epoch over one batch of digits), and the linear + kNN probes with the config's probe
settings on a few hundred raw-pixel vectors.

Integers drawn for sizes are small valid values or absurd ones (10**6 and up): the property is about
validation, not about exhausting memory with an allowed but huge model, so in-range sizes stay small.
train.devices is never above 1 (that launches processes) and train.compile never true (45 s).

Deterministic (derandomize=True, no example database); PRETEXTFLOW_FUZZ_PROFILE=explore draws new
random examples (PRETEXTFLOW_FUZZ_EXAMPLES, default 300) to look further."""

from __future__ import annotations

import collections
import copy
import math
import os
import uuid

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from .conftest import REPO

_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.function_scoped_fixture,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]
settings.register_profile(
    "pretextflow", max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=_CHECKS
)
settings.register_profile(
    "explore",
    max_examples=int(os.environ.get("PRETEXTFLOW_FUZZ_EXAMPLES", 300)),
    deadline=None,
    database=None,
    suppress_health_check=_CHECKS,
    report_multiple_bugs=True,
    phases=[Phase.explicit, Phase.generate],
)  # no shrinking: the raw failing config is noted
PROFILE = settings.get_profile(os.environ.get("PRETEXTFLOW_FUZZ_PROFILE", "pretextflow"))

BASE = yaml.safe_load((REPO / "configs" / "digits_smoke.yaml").read_text())

# -- values -------------------------------------------------------------------------------------
# Each field has a "clean" strategy (mostly valid, with edge values) and the "wild" one adds anything at
# all. Each section of an example is clean or wild: clean ones reach the training step, wild ones hunt
# for a value that passes validation and then breaks something inside.
ABSURD_INTS = st.sampled_from([10**6, 10**9, 2**63, 10**30, -(2**63)])
ODD_FLOATS = st.sampled_from([0.0, 1.0, 1e-12, 1e300, -1e300, math.inf, -math.inf, math.nan])
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    ABSURD_INTS,
    st.floats(-2, 2),
    ODD_FLOATS,
    st.text(max_size=6),
    st.lists(st.integers(-3, 300), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


class Fields:
    """Strategies for one example, clean or wild."""

    def __init__(self, wild: bool):
        self.wild = wild

    def v(self, clean: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(clean, clean, JUNK) if self.wild else clean

    def int(self, lo: int, hi: int) -> st.SearchStrategy:
        return self.v(st.one_of(st.integers(lo, hi), ABSURD_INTS) if self.wild else st.integers(lo, hi))

    def float(self, lo: float, hi: float) -> st.SearchStrategy:
        return self.v(st.one_of(st.floats(lo, hi), ODD_FLOATS) if self.wild else st.floats(lo, hi))

    def pick(self, *values) -> st.SearchStrategy:
        return self.v(st.sampled_from(values))

    def section(self, **fields: st.SearchStrategy) -> st.SearchStrategy:
        """Any subset of ``fields`` (the rest default); wild ones may hold an unknown key."""
        return st.fixed_dictionaries({}, optional={**fields, **({"unknwon_key": JUNK} if self.wild else {})})

    def train(self):
        f = self
        return f.section(
            epochs=f.int(1, 3),
            batch_size=f.pick(1, 2, 4, 8, 16, 64) if not f.wild else f.pick(0, 1, 2, 3, 16, 5000, -8),
            optimizer=f.pick("adamw", "sgd") if not f.wild else f.pick("adamw", "sgd", "adam", ""),
            lr=f.float(1e-5, 1.0),
            weight_decay=f.float(0, 0.5),
            momentum=f.float(0, 0.99),
            warmup_epochs=f.float(0, 5),
            device=f.pick("auto", "cpu") if not f.wild else f.pick("cuda", "tpu", 3),
            amp=f.v(st.booleans()),
            threads=f.pick(None, 1, 2) if not f.wild else f.pick(0, -1, "two"),
            max_train_samples=f.pick(None, 16, 64, 512) if not f.wild else f.pick(None, 1, 2, 0, -3, 10**9),
            image_size=f.pick(None, 6, 12) if not f.wild else f.pick(None, 0, -2, 10**6, "big"),
            checkpoint_every=f.int(1, 3),
            log_every=f.int(1, 3),
            devices=f.pick(1) if not f.wild else f.pick(0, -1, "x", 1.5),  # > 1 would launch processes
            sync_batchnorm=f.v(st.booleans()),
            compile=f.pick(False) if not f.wild else f.pick("sometimes", 2),
            channels_last=f.v(st.booleans()),
        )

    def probe(self):
        f = self
        supervised = f.section(
            epochs=f.int(1, 5),
            min_steps=f.int(0, 5),
            batch_size=f.int(1, 64),
            lr=f.float(1e-5, 1),
            weight_decay=f.float(0, 1),
            warmup_fraction=f.float(0, 0.99),
            crop_scale_min=f.float(0.01, 1),
            flip_p=f.float(0, 1),
            label_smoothing=f.float(0, 0.99),
        )
        return f.section(
            knn_k=f.v(st.lists(f.int(1, 300), min_size=1, max_size=3)),
            knn_temperature=f.float(1e-3, 10),
            linear_weight_decays=f.v(st.lists(f.float(0, 1), min_size=1, max_size=3)),
            linear_max_iter=f.int(1, 30),
            val_fraction=f.float(0.01, 0.99),
            batch_size=f.int(1, 2048),
            baselines=f.v(
                st.lists(
                    st.sampled_from(["random_init", "pixels", "supervised"] + (["oracle"] if f.wild else [])),
                    max_size=3,
                )
            ),
            label_fractions=f.v(st.lists(f.float(0.001, 1), min_size=1, max_size=3)),
            label_seeds=f.int(1, 3),
            supervised=supervised,
            finetune=f.v(st.booleans()),
            finetune_lr_scale=f.float(1e-3, 1),
        )

    def data(self):
        f = self
        names = ["digits"] if not f.wild else ["digits", "../digits", "Digits", "", "a" * 70, "/etc", "d/../x"]
        return st.fixed_dictionaries(
            {"name": st.one_of(st.sampled_from(names), st.text(max_size=8)) if f.wild else st.just("digits")},
            optional={
                "source": f.pick(None, "sklearn:digits", "/nonexistent/x", "data.zip", "https://u:pw@127.0.0.1:9/x"),
                "format": f.pick(None, "idx", "imagefolder", "sklearn-digits", "parquet", "os:system"),
                "options": f.v(
                    st.dictionaries(
                        st.sampled_from(["image_size", "channels", "test_fraction"]), f.int(1, 64), max_size=2
                    )
                ),
            },
        )

    def store(self):
        f = self
        return f.section(
            uri=f.pick("artifacts", "memory://fuzz", "s3://u:pw@bucket/x"),
            storage_options=f.v(
                st.dictionaries(
                    st.sampled_from(["key", "secret", "token", "anon"]), st.text(min_size=1, max_size=12), max_size=2
                )
            ),
        )

    def backbone_kwargs(self, name: str):
        f = self
        if name.startswith("timm/"):
            return f.section(
                drop_rate=f.float(0, 0.5),
                global_pool=f.pick("avg", "max", "x"),
                **(
                    {"checkpoint_path": st.just("/etc/passwd"), "pretrained": st.booleans(), "in_chans": JUNK}
                    if f.wild
                    else {}
                ),
            )
        return f.section(width=f.int(1, 16), depth=f.int(1, 4))

    def params_for(self, task_cls) -> st.SearchStrategy:
        """The task's own fields with random values of their kind (wild: plus a random key)."""
        fields = {}
        for name, info in task_cls.Params.model_fields.items():
            ann = info.annotation
            if ann is bool:
                fields[name] = self.v(st.booleans())
            elif ann is int:
                fields[name] = self.int(0, 64)
            elif ann is float:
                fields[name] = self.float(0, 1)
            else:
                fields[name] = JUNK
        if self.wild:
            fields["random_key"] = JUNK
        return st.fixed_dictionaries({}, optional=fields)


BACKBONE_NAMES = ["convnet-s", "convnet-s", "convnet-s", "convnet-s", "timm/resnet18"]
BAD_BACKBONE_NAMES = ["timm/no_such_model", "timm/", "resnet18", "os:system", "timm/hf-hub:timm/resnet18.a1_in1k"]
BAD_PRETEXT_NAMES = ["os:system", "simclr.SimCLR", "", "SIMCLR", "pretextflow.plugins.pretext.simclr"]


# the parts of a config that are drawn clean or wild as a whole
SECTIONS = (
    "pretext.name",
    "pretext.params",
    "backbone.name",
    "backbone.kwargs",
    "backbone.small_image_stem",
    "train",
    "probe",
    "data",
    "store",
    "report",
    "seed",
    "name",
)


@st.composite
def configs(draw, pretext_tasks: dict):
    # clean or wild section by section: a config with one wild section (say pretext.params) and the
    # rest clean reaches the code that uses that section. Up to two wild sections, or all of them.
    wild = set(SECTIONS) if draw(st.integers(0, 4)) == 0 else draw(st.sets(st.sampled_from(SECTIONS), max_size=2))

    def fields(section: str) -> Fields:
        return Fields(wild=section in wild)

    raw = copy.deepcopy(BASE)
    f = fields("pretext.name")
    names = sorted(pretext_tasks)
    name = draw(
        st.one_of(st.sampled_from(names + BAD_PRETEXT_NAMES), st.text(max_size=8)) if f.wild else st.sampled_from(names)
    )
    raw["pretext"] = {"name": name}
    if draw(st.booleans()):
        f = fields("pretext.params")
        raw["pretext"]["params"] = draw(
            f.params_for(pretext_tasks[name])
            if name in pretext_tasks
            else st.dictionaries(st.text(max_size=5), JUNK, max_size=2)
        )
    f = fields("backbone.name")
    backbone = draw(
        st.one_of(st.sampled_from(BACKBONE_NAMES + BAD_BACKBONE_NAMES), st.text(max_size=8))
        if f.wild
        else st.sampled_from(BACKBONE_NAMES)
    )
    raw["backbone"] = {"name": backbone, "kwargs": draw(fields("backbone.kwargs").backbone_kwargs(backbone))}
    if draw(st.booleans()):
        raw["backbone"]["small_image_stem"] = draw(fields("backbone.small_image_stem").v(st.booleans()))
    raw["train"] = {**raw["train"], **draw(fields("train").train())}
    raw["probe"] = {**raw["probe"], **draw(fields("probe").probe())}
    raw["data"] = draw(fields("data").data())
    if draw(st.booleans()):
        raw["store"] = draw(fields("store").store())
    if draw(st.booleans()):
        f = fields("report")
        raw["report"] = draw(f.section(regression_threshold=f.v(st.one_of(st.none(), st.floats(0, 1)))))
    if draw(st.booleans()):
        f = fields("seed")
        raw["seed"] = draw(f.int(0, 2**31 - 1) if not f.wild else st.one_of(st.integers(-5, 2**70), JUNK))
    if draw(st.booleans()):
        raw["name"] = draw(fields("name").v(st.text(max_size=10)))
    return raw


# -- the cheapest real run -----------------------------------------------------------------------
def cheap_run(raw: dict, ws, registry) -> None:
    """Validation as the CLI does it, then one real training step and the probes. Raises whatever
    the code raises: a PretextflowError is a refusal, anything else a bug."""
    import torch

    from pretextflow.core.config import load_config
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.evaluation.probe import evaluate_features, label_subsets
    from pretextflow.core.registry.preflight import check_plugins
    from pretextflow.core.stages import StageContext
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training.loop import pretrain

    cfg = load_config(raw=copy.deepcopy(raw))
    check_plugins(cfg, registry)
    ds = load_dataset(str(ws.data_dir), cfg.data.name)
    store = ArtifactStore(f"memory://fuzz-{uuid.uuid4().hex}")
    try:
        StageContext(ws, cfg, registry, store).keys(ds)
        tc = cfg.train
        # exactly one step: one epoch over one batch (a smaller max_train_samples is kept: it must be refused)
        one_step = tc.model_copy(
            update={"epochs": 1, "max_train_samples": min(tc.max_train_samples or tc.batch_size, tc.batch_size)}
        )
        pretrain(cfg.model_copy(update={"train": one_step}), ds, store, "fuzz", registry)
        x = ds.train_images[:240].reshape(240, -1).astype(np.float32) / 255
        xt = ds.test_images[:120].reshape(120, -1).astype(np.float32) / 255
        y, yt = np.asarray(ds.train_labels[:240]), np.asarray(ds.test_labels[:120])
        label_subsets(y, cfg.probe.label_fractions, cfg.seed)
        evaluate_features("pixels", x, y, xt, yt, ds.num_classes, cfg.probe, cfg.seed, _NullLog())
    finally:
        store.fs.rm(store.root, recursive=True) if store.fs.exists(store.root) else None
        torch.set_num_threads(_THREADS)


def _with(**sections) -> dict:
    raw = copy.deepcopy(BASE)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


class _NullLog:
    def info(self, *args, **kwargs):
        pass


_THREADS = 1


@pytest.mark.slow
def test_random_configs_run_or_are_refused_with_a_validation_error(digits_workspace):
    import torch

    from pretextflow.core.errors import PretextflowError
    from pretextflow.core.registry.registry import get_registry

    global _THREADS
    _THREADS = torch.get_num_threads()
    registry = get_registry()
    outcomes: collections.Counter = collections.Counter()

    @PROFILE
    @given(raw=configs(registry.pretext))
    # what hypothesis found, kept as explicit examples (both raised from inside before the fixes):
    @example(raw=_with(train={"optimizer": "sgd", "momentum": 0.0}))  # SGD's Nesterov: ValueError in torch
    @example(raw=_with(probe={"knn_k": [1, 1]}))  # a repeated k: ValueError in the kNN probe
    @example(raw=_with(pretext={"name": "jigsaw", "params": {}}, train={"batch_size": 1}))  # BatchNorm head: ValueError
    @example(raw=_with(pretext={"name": "simclr", "params": {"proj_dim": 10**9}}))  # RuntimeError: 256 GB
    @example(raw=_with(pretext={"name": "jigsaw", "params": {"num_permutations": 10**6}}))  # ValueError
    @example(raw=_with(backbone={"name": "convnet-s", "kwargs": {"depth": 0}}))  # IndexError
    def check(raw):
        note(f"config: {raw}")
        try:
            cheap_run(raw, digits_workspace, registry)
        except PretextflowError as exc:
            assert str(exc).strip(), "a refusal must say why"
            assert "Traceback" not in str(exc)
            outcomes[f"refused: {type(exc).__name__}"] += 1
            return
        outcomes["ran"] += 1

    check()
    print(dict(outcomes))
    # both sides of the property were exercised: some configs ran one real step, many were refused
    assert outcomes["ran"] >= 3, outcomes
    assert sum(v for k, v in outcomes.items() if k.startswith("refused")) >= 10, outcomes
