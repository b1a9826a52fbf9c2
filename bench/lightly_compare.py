"""SimCLR and BYOL: pretextflow's pretraining loop vs lightly's implementation of the same method on
the same backbone, side by side in one run on this machine: steady-state training images/s and
linear-probe / kNN top-1 of the frozen backbones after the same number of epochs.

lightly is a baseline here, never a dependency: it lives in its own venv, which sees the project's
venv through a .pth file (bench/lightly_env.sh). Run with that venv's python:

    PY=$(bash bench/lightly_env.sh | tail -n1)      # /tmp/pretextflow-lightly-venv/bin/python
    $PY bench/lightly_compare.py                    # full run (default --epochs), writes bench/LIGHTLY.md
    $PY bench/lightly_compare.py --quick            # a ~2-minute check of the code path only

What is the same on both sides (so only the SSL implementation differs): the canonical Fashion-MNIST
dataset (ingested as bench/methods.py does), the backbone (convnet-s with configs/fashion_mnist.yaml's
kwargs, built by our registry with the same seed, so both start from identical weights, and the same
per-channel normalisation inside it), head sizes, temperature / momentum range, augmentation
strengths, batch 256, AdamW with the same lr, weight decay (none on norms and biases), warm-up +
cosine schedule, epochs, seed, torch threads and deterministic algorithms; then the same probes
(core.features.extract_features, core.probe.linear_probe / knn_probe on all 60k train / 10k test
labels; the probe's weight decay is chosen on a split of the training labels, never the test set).
Every remaining difference is listed in the output file.

Ours: core.train.pretrain as the pipeline runs it (batched tensor augmentation in the training
process). lightly: its heads, losses, momentum utilities and transforms (SimCLRTransform /
BYOLTransform per PIL image in a torch DataLoader; num_workers 0 or 2, whichever a short calibration
finds faster on this machine), the training step written the way lightly's own examples and
benchmarks write it.

Images/s is steady state: training images over the time from the end of step --warmup-steps to the
end of the last step (so model building, worker start-up and the first steps are excluded). Methods
alternate which implementation runs first (SimCLR: ours then lightly; BYOL: lightly then ours) so
drift in the machine's load does not favour one side.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fashion_mnist.yaml"
LIGHTLY_VERSION = "1.6.0"
METHODS = ("simclr", "byol")
# ~20 minutes for the whole run on the quiet 2-core machine, estimated from RESULTS.md's quiet-machine
# speeds of ours (SimCLR 1,435 / BYOL 1,297 images/s: ~45 s per epoch) and lightly's measured transform cost
# (~0.7 ms of CPU per image for its two views, on top of the same model step: ~65-85 s per epoch), so ~4 min
# per epoch of all four trainings, plus ~3 min of dataset ingest, loader calibration and five full probes.
DEFAULT_EPOCHS = 4
QUICK = {
    "train_images": 1024,
    "epochs": 1,
    "probe_train": 2000,
    "probe_test": 500,
    "calibration_steps": 2,
    "calibration_rounds": (0, 2),
    "warmup_steps": 1,
    "linear_max_iter": 20,
}

log = logging.getLogger("bench.lightly")


def require_imports():
    """lightly and pretextflow, or a loud exit that says how to get them."""
    try:
        import lightly
    except ImportError as exc:
        sys.exit(
            f"error: lightly is not importable from {sys.executable} ({exc}).\n"
            f"This benchmark runs in its own venv, never the project's: create it with\n"
            f"    bash bench/lightly_env.sh\n"
            f"and run this script with the python it prints (default /tmp/pretextflow-lightly-venv/bin/python)."
        )
    try:
        import pretextflow.core.training.loop  # noqa: F401
    except ImportError as exc:
        sys.exit(
            f"error: pretextflow is not importable from {sys.executable} ({exc}). The lightly venv reaches "
            f"the project's venv through a .pth file: re-run `bash bench/lightly_env.sh`."
        )
    if lightly.__version__ != LIGHTLY_VERSION:
        log.warning("lightly %s found; this benchmark was written for %s", lightly.__version__, LIGHTLY_VERSION)
    return lightly


# -- data ---------------------------------------------------------------------------------------
def load_fashion_mnist(tmp: Path):
    """The canonical dataset, ingested into a scratch workspace exactly as bench/methods.py does."""
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.data.versioning import init_workspace
    from pretextflow.plugins.datasets.known import DEBIAN_FASHION_MNIST

    ws = init_workspace(tmp / "ws")
    ingest(ws, os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST), "idx", "fashion-mnist", push=False)
    return load_dataset(str(ws.data_dir), "fashion-mnist")


def make_cfg(method: str, args):
    from pretextflow.core.config import load_config

    over = [
        f"pretext.name={method}",
        "pretext.params={}",
        "data.source=null",
        "train.device=cpu",
        f"train.epochs={args.epochs}",
    ]  # pretext.params={}: each plugin's defaults, as bench/methods.py
    if args.train_images:
        over.append(f"train.max_train_samples={args.train_images}")
    if args.threads:
        over.append(f"train.threads={args.threads}")
    if args.quick:
        over.append(f"probe.linear_max_iter={QUICK['linear_max_iter']}")
    return load_config(CONFIG, over)


def steady_rate(stamps: list[float], batch: int, warmup: int) -> tuple[float, int]:
    """Images/s between the end of step ``warmup`` and the end of the last step."""
    w = min(warmup, max(0, len(stamps) - 2))
    return (len(stamps) - 1 - w) * batch / (stamps[-1] - stamps[w]), w


# -- ours ---------------------------------------------------------------------------------------
def train_ours(cfg, ds, registry) -> dict:
    """core.train.pretrain, untouched, into an in-memory artifact store. The task's ``on_step_end``
    is wrapped only to timestamp the end of every step (the same point as lightly's stamp: after the
    optimizer step) and the task is kept to probe its backbone."""
    from pretextflow.core.store import ArtifactStore
    from pretextflow.core.training import loop as train_mod

    kept, stamps = {}, []
    original = train_mod.build_task

    def build_task(*a, **kw):
        task = original(*a, **kw)
        hook = task.on_step_end

        def on_step_end(step, total):
            hook(step, total)
            stamps.append(time.perf_counter())

        task.on_step_end = on_step_end
        kept["task"] = task
        return task

    uri = f"memory://pretextflow-lightly-bench/{cfg.pretext.name}-{uuid.uuid4().hex[:8]}"
    store = ArtifactStore(uri)
    train_mod.build_task = build_task
    try:
        t = time.perf_counter()
        out = train_mod.pretrain(cfg, ds, store, f"ours-{cfg.pretext.name}", registry)
        wall = time.perf_counter() - t
        history = store.read_json("pretrain", f"ours-{cfg.pretext.name}", "history.json")
    finally:
        train_mod.build_task = original
        try:
            store.fs.rm(store.root, recursive=True)
        except FileNotFoundError:
            pass
    return {
        "backbone": kept["task"].backbone,
        "stamps": stamps,
        "loop_s": out.seconds,
        "wall_s": wall,
        "loop_images_per_s": out.images_per_second,
        "final_loss": out.final_loss,
        "epoch_seconds": history["epoch_seconds"],
        "threads": history.get("threads"),
    }


# -- lightly ------------------------------------------------------------------------------------
def linear_dims(module) -> list[tuple[int, int]]:
    from torch import nn

    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def lightly_setup(task) -> dict:
    """lightly's settings read off our built task (its resolved params, head sizes and view spec),
    so the two sides cannot drift apart when a default changes."""
    v = task.view
    if tuple(v.crop_ratio) != (3 / 4, 4 / 3) or v.size is not None:
        raise SystemExit(f"our view spec changed ({v}); update lightly_setup to match it")
    proj = linear_dims(task.projector)
    setup = {
        "method": task.name,
        "projector": proj,  # [(in, hidden), (hidden, out)]
        "transform": dict(
            cj_prob=v.jitter_p,
            cj_strength=1.0,
            cj_bright=v.brightness,
            cj_contrast=v.contrast,
            # saturation, hue and random grayscale do nothing to a 1-channel image (ours ignores them
            # too): 0 here gives the same views and spares lightly's workers the no-op PIL work
            cj_sat=0.0,
            cj_hue=0.0,
            random_gray_scale=0.0,
            min_scale=v.crop_scale[0],
            hf_prob=v.flip_p,
            vf_prob=0.0,
            rr_prob=0.0,
            gaussian_blur=v.blur_p,  # 0: no blur at 28 px, as ours
            normalize=None,  # normalisation is the backbone's (dataset mean/std), on both sides
        ),
    }
    if task.name == "simclr":
        setup["temperature"] = task.params.temperature
    else:
        setup["predictor"] = linear_dims(task.predictor)
        setup["momentum"] = (task.params.base_momentum, task.params.final_momentum)
        setup["solarization_prob"] = v.solarize_p
    return setup


def build_lightly_transform(setup: dict, size: int):
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform

    kw = dict(input_size=size, **setup["transform"])
    if setup["method"] == "simclr":
        return SimCLRTransform(**kw)
    # lightly's BYOL recipe is asymmetric (blur 1.0 / 0.1, solarize 0 / 0.2); both views get ours here
    return BYOLTransform(
        view_1_transform=BYOLView1Transform(**kw, solarization_prob=setup["solarization_prob"]),
        view_2_transform=BYOLView2Transform(**kw, solarization_prob=setup["solarization_prob"]),
    )


class PILViews:
    """A map-style torch Dataset over the uint8 images: one PIL image per item, lightly's transform
    applied to it (a list of views), as torchvision's FashionMNIST dataset + lightly do."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i, 0]))


def build_lightly_model(setup: dict, backbone):
    import torch
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn

    (f, hidden), (_, out) = setup["projector"]

    class SimCLR(nn.Module):
        """As lightly's benchmarks/imagenet/resnet50/simclr.py: both views in one backbone pass."""

        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(f, hidden, out, num_layers=2, batch_norm=True)
            self.criterion = NTXentLoss(temperature=setup["temperature"])

        def trainable(self):
            return [self.backbone, self.projection_head]

        def loss(self, views, step, total):
            z0, z1 = self.projection_head(self.backbone(torch.cat(views))).chunk(2)
            return self.criterion(z0, z1)

    class BYOL(nn.Module):
        """As lightly's examples and benchmarks/imagenet/resnet50/byol.py: momentum update first
        (cosine_schedule per step), then teacher and student per view."""

        def __init__(self):
            super().__init__()
            (_, p_hidden), (_, p_out) = setup["predictor"]
            self.backbone = backbone
            self.projection_head = BYOLProjectionHead(f, hidden, out)
            self.prediction_head = BYOLPredictionHead(out, p_hidden, p_out)
            self.teacher_backbone = copy.deepcopy(self.backbone)
            self.teacher_projection_head = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.teacher_backbone)
            deactivate_requires_grad(self.teacher_projection_head)
            self.criterion = NegativeCosineSimilarity()

        def trainable(self):
            return [self.backbone, self.projection_head, self.prediction_head]

        def loss(self, views, step, total):
            m = cosine_schedule(step, total, *setup["momentum"])
            update_momentum(self.backbone, self.teacher_backbone, m=m)
            update_momentum(self.projection_head, self.teacher_projection_head, m=m)
            x0, x1 = views
            with torch.no_grad():
                t0 = self.teacher_projection_head(self.teacher_backbone(x0))
                t1 = self.teacher_projection_head(self.teacher_backbone(x1))
            p0 = self.prediction_head(self.projection_head(self.backbone(x0)))
            p1 = self.prediction_head(self.projection_head(self.backbone(x1)))
            # symmetric; = ours (mean of 2 - 2cos over both directions) - 2: the same gradients
            return self.criterion(p0, t1) + self.criterion(p1, t0)

    return SimCLR() if setup["method"] == "simclr" else BYOL()


def train_lightly(cfg, ds, registry, setup: dict, num_workers: int, max_steps: int | None = None) -> dict:
    """lightly's pieces in a plain PyTorch loop with our optimizer, schedule, seed and threads."""
    import numpy as np
    import torch
    from lightly.models.utils import get_weight_decay_parameters
    from torch.utils.data import DataLoader

    from pretextflow.core.toolkit.schedules import lr_at
    from pretextflow.core.training.model import build_backbone, configure_runtime

    tc = cfg.train
    configure_runtime(cfg.seed, torch.device("cpu"), tc.threads)  # seeds torch + numpy, deterministic algorithms
    random.seed(cfg.seed)
    backbone = build_backbone(cfg, ds.meta, registry, seed=cfg.seed)  # the same initial weights as ours
    model = build_lightly_model(setup, backbone)
    params, no_decay = get_weight_decay_parameters(model.trainable())  # no decay on norms and biases, as ours
    opt = torch.optim.AdamW(
        [{"params": params, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr
    )

    images = ds.train_images if tc.max_train_samples is None else ds.train_images[: tc.max_train_samples]
    images = np.array(images)  # in memory, as ours
    loader = DataLoader(
        PILViews(images, build_lightly_transform(setup, ds.image_size)),
        batch_size=tc.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=False,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    steps_per_epoch = len(loader)
    total = tc.epochs * steps_per_epoch
    warmup = int(round(tc.warmup_epochs * steps_per_epoch))
    model.train()
    stamps, epoch_loss, epoch_seconds, step = [], [], [], 0
    t_start = time.perf_counter()
    try:
        for epoch in range(tc.epochs):
            t_epoch, losses = time.perf_counter(), []
            for views in loader:
                lr = lr_at(step, total, warmup, tc.lr)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss = model.loss(views, step, total)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"lightly {setup['method']}: non-finite loss at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                stamps.append(time.perf_counter())
                losses.append(float(loss.detach()))
                step += 1
                if max_steps and step >= max_steps:
                    break
            epoch_loss.append(float(np.mean(losses)))
            epoch_seconds.append(time.perf_counter() - t_epoch)
            if max_steps and step >= max_steps:
                break
            log.info(
                "lightly %s: epoch %d/%d mean loss %.4f (%.1fs)",
                setup["method"],
                epoch + 1,
                tc.epochs,
                epoch_loss[-1],
                epoch_seconds[-1],
            )
        loop_s = time.perf_counter() - t_start
    finally:
        del loader  # shuts persistent workers down
    return {
        "backbone": backbone,
        "stamps": stamps,
        "loop_s": loop_s,
        "loop_images_per_s": step * tc.batch_size / loop_s,
        "final_loss": epoch_loss[-1],
        "epoch_seconds": epoch_seconds,
        "num_workers": num_workers,
        "threads": torch.get_num_threads(),
    }


def calibrate_workers(cfg, ds, registry, setup: dict, steps: int, rounds=(0, 2, 2, 0)) -> dict[int, float]:
    """Steady images/s of lightly's real training step with each num_workers, measured in the order
    ``rounds`` (so a drift in load hits both) and averaged per setting. Fresh model each time; the
    real run starts from the seed again."""
    skip = max(1, min(3, steps // 3))
    rates: dict[int, list[float]] = {}
    for nw in rounds:
        r = train_lightly(cfg, ds, registry, setup, nw, max_steps=steps + skip)
        rates.setdefault(nw, []).append(steady_rate(r["stamps"], cfg.train.batch_size, skip)[0])
        log.info("lightly %s calibration: num_workers=%d %.0f images/s", setup["method"], nw, rates[nw][-1])
    return {nw: sum(v) / len(v) for nw, v in rates.items()}


# -- probing ------------------------------------------------------------------------------------
def probe(backbone, ds, cfg, n_train: int | None, n_test: int | None) -> dict:
    import numpy as np

    from pretextflow.core.evaluation.features import extract_features
    from pretextflow.core.evaluation.probe import knn_probe, linear_probe

    xtr, ytr = ds.train_images[:n_train], np.array(ds.train_labels[:n_train])
    xte, yte = ds.test_images[:n_test], np.array(ds.test_labels[:n_test])
    t = time.perf_counter()
    ftr = extract_features(backbone, xtr, cfg.probe.batch_size)
    fte = extract_features(backbone, xte, cfg.probe.batch_size)
    lin = linear_probe(ftr, ytr, fte, yte, ds.num_classes, cfg.probe, cfg.seed)
    knn = knn_probe(ftr, ytr, fte, yte, ds.num_classes, cfg.probe)
    k = f"k{cfg.probe.knn_k[0]}"
    return {
        "linear_top1": lin["top1"],
        "linear_wd": lin["weight_decay"],
        "knn_top1": knn[k]["top1"],
        "knn_k": cfg.probe.knn_k[0],
        "probe_s": time.perf_counter() - t,
        "n_train": len(ytr),
        "n_test": len(yte),
    }


# -- the run ------------------------------------------------------------------------------------
def versions(lightly) -> dict:
    from importlib.metadata import version

    import PIL
    import torch
    import torchvision

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except OSError:
        commit = "?"
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightly": lightly.__version__,
        "pretextflow": f"{version('pretextflow')} @ {commit}",
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help="pretraining epochs, the same for both implementations (default: %(default)s, ~20 min in all)",
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, help="torch threads for both (default: torch's default, all cores)")
    ap.add_argument("--train-images", type=int, help="pretrain on the first N training images (default: all 60k)")
    ap.add_argument("--warmup-steps", type=int, default=10, help="steps excluded from the steady-state images/s")
    ap.add_argument(
        "--calibration-steps",
        type=int,
        default=20,
        help="measured steps per num_workers trial in lightly's loader calibration",
    )
    ap.add_argument("--workers", type=int, help="skip the calibration: lightly's num_workers")
    ap.add_argument("--out", help="markdown report (default bench/LIGHTLY.md; with --quick a file in /tmp)")
    ap.add_argument("--quick", action="store_true", help=f"validate the code path only: {QUICK}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    lightly = require_imports()
    probe_train = probe_test = None
    rounds = (0, 2, 2, 0)
    if args.quick:
        rounds = QUICK["calibration_rounds"]
        args.epochs, args.train_images = QUICK["epochs"], args.train_images or QUICK["train_images"]
        args.calibration_steps, args.warmup_steps = QUICK["calibration_steps"], QUICK["warmup_steps"]
        probe_train, probe_test = QUICK["probe_train"], QUICK["probe_test"]
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.gettempdir()) / "LIGHTLY.quick.md" if args.quick else REPO / "bench" / "LIGHTLY.md")
    )
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")

    import torch

    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.training.model import build_backbone, build_task

    t_run = time.perf_counter()
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-lightly-"))
    try:
        ds = load_fashion_mnist(tmp)
        registry = get_registry()
        results, setups = [], {}
        for i, method in enumerate(methods):
            cfg = make_cfg(method, args)
            setup = setups[method] = lightly_setup(build_task(cfg, build_backbone(cfg, ds.meta, registry), registry))
            row = {
                "method": method,
                "epochs": cfg.train.epochs,
                "batch": cfg.train.batch_size,
                "train_images": min(cfg.train.max_train_samples or len(ds.train_images), len(ds.train_images)),
            }
            order = ["ours", "lightly"] if i % 2 == 0 else ["lightly", "ours"]
            row["order"] = order
            for impl in order:
                if impl == "ours":
                    log.info("== %s: ours (core.train.pretrain)", method)
                    r = train_ours(cfg, ds, registry)
                else:
                    if args.workers is None:
                        calib = calibrate_workers(cfg, ds, registry, setup, args.calibration_steps, rounds)
                        nw = max(calib, key=calib.get)
                    else:
                        calib, nw = {}, args.workers
                    row["calibration"] = calib
                    log.info("== %s: lightly, num_workers=%d", method, nw)
                    r = train_lightly(cfg, ds, registry, setup, nw)
                r["steady_images_per_s"], r["warmup_used"] = steady_rate(
                    r["stamps"], cfg.train.batch_size, args.warmup_steps
                )
                r["steps"] = len(r.pop("stamps"))
                r.update(probe(r.pop("backbone"), ds, cfg, probe_train, probe_test))
                log.info(
                    "%s %s: %.0f images/s steady, linear %.4f, kNN %.4f",
                    method,
                    impl,
                    r["steady_images_per_s"],
                    r["linear_top1"],
                    r["knn_top1"],
                )
                row[impl] = r
            results.append(row)
        cfg = make_cfg(methods[0], args)
        rand = probe(
            build_backbone(cfg, ds.meta, registry, seed=cfg.seed).eval().requires_grad_(False),
            ds,
            cfg,
            probe_train,
            probe_test,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = {
        "versions": versions(lightly),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "total_s": time.perf_counter() - t_run,
        "random_init": rand,
        "setups": setups,
        "cfg": cfg,
        "rounds": rounds,
    }
    write_report(out, results, info, args)


# -- the report ---------------------------------------------------------------------------------
def fmt_dims(dims) -> str:
    return " -> ".join([str(dims[0][0])] + [str(o) for _, o in dims])


def write_report(path: Path, results: list[dict], info: dict, args) -> None:
    cfg = info["cfg"]
    v = info["versions"]
    cmd = "python " + " ".join(
        [os.path.relpath(sys.argv[0], REPO) if sys.argv[0].endswith(".py") else sys.argv[0], *sys.argv[1:]]
    )
    r0 = results[0]
    steps = r0["ours"]["steps"]
    lines = [
        "# pretextflow vs lightly: SimCLR and BYOL, same backbone, same budget"
        + (" (QUICK CHECK: not a result)" if args.quick else ""),
        "",
        f"Command: `{cmd}` (with the python of `bench/lightly_env.sh`). Whole run: {info['total_s'] / 60:.1f} min.",
        "",
        f"Budget: {r0['epochs']} epoch(s) over {r0['train_images']:,} training images = {steps} steps of batch "
        f"{r0['batch']} per method and implementation (labels unused). Probes: frozen backbone, "
        + (
            "all 60,000 train / 10,000 test labels"
            if r0["ours"]["n_train"] >= 60000
            else f"first {r0['ours']['n_train']:,} train / {r0['ours']['n_test']:,} test labels (quick subset)"
        )
        + f"; linear probe = `core.probe.linear_probe` (weight decay chosen on "
        f"{cfg.probe.val_fraction:.0%} of the training labels), kNN k={cfg.probe.knn_k[0]}, T={cfg.probe.knn_temperature}.",
        "",
        f"Versions: torch {v['torch']}, torchvision {v['torchvision']}, lightly {v['lightly']}, pretextflow "
        f"{v['pretextflow']}, Pillow {v['pillow']}, Python {v['python']}. Machine: {info['cpus']} CPUs, no GPU; "
        f"torch threads {info['threads']} for both (lightly's DataLoader workers, when used, run 1 thread each); "
        f"load average {info['load_start'][0]:.2f} at the start, {info['load_end'][0]:.2f} at the end.",
        "",
        "| method | ours img/s | lightly img/s | speed ratio | ours linear top-1 | lightly linear top-1 | delta |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, l_ = r["ours"], r["lightly"]
        lines.append(
            f"| {r['method']} | {o['steady_images_per_s']:.0f} | {l_['steady_images_per_s']:.0f} | "
            f"{o['steady_images_per_s'] / l_['steady_images_per_s']:.2f}x | {o['linear_top1']:.4f} | "
            f"{l_['linear_top1']:.4f} | {(o['linear_top1'] - l_['linear_top1']) * 100:+.2f} pt |"
        )
    lines += [
        "",
        "img/s: steady state, training images per second from the end of step "
        f"{r0['ours']['warmup_used']} to the end of the last step (model building, worker start-up and the first "
        "steps excluded; everything else, data loading and augmentation included). Speed ratio = ours / lightly. "
        "delta = ours - lightly, in points of linear top-1. One seed; the seed-to-seed spread was not measured.",
        "",
        "| method | implementation | ran | steps | whole-loop img/s | loop s | lightly num_workers | final epoch loss | "
        "kNN top-1 | linear probe wd |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for impl in ("ours", "lightly"):
            x = r[impl]
            nw = str(x.get("num_workers", "-"))
            if impl == "lightly" and r.get("calibration"):
                nw += (
                    " (calibrated: "
                    + ", ".join(f"{k}: {s:.0f} img/s" for k, s in sorted(r["calibration"].items()))
                    + ")"
                )
            elif impl == "lightly":
                nw += " (given by --workers)"
            lines.append(
                f"| {r['method']} | {impl} | {r['order'].index(impl) + 1} of 2 | {x['steps']} | "
                f"{x['loop_images_per_s']:.0f} | {x['loop_s']:.0f} | {nw} | {x['final_loss']:.4f} | "
                f"{x['knn_top1']:.4f} | {x['linear_wd']:g} |"
            )
    ri = info["random_init"]
    lines += [
        f"| reference | random-init convnet-s (both sides' starting weights) | | | | | | | {ri['knn_top1']:.4f} | "
        f"linear {ri['linear_top1']:.4f} |",
        "",
        f"lightly's num_workers: its real training step run with num_workers in the order "
        f"{', '.join(map(str, info['rounds']))} for {args.calibration_steps} measured steps each (after "
        "start-up steps), averaged per setting, the faster used (`persistent_workers`, `pin_memory=False`). "
        "A busy machine favours the multi-process setting (more processes get more of the cores' time): compare "
        "the load averages above with the number of cores.",
        "",
        "Targets (issue): ours >= 1.5x lightly's images/s at equal or better linear top-1.",
        "",
    ]
    for r in results:
        ratio = r["ours"]["steady_images_per_s"] / r["lightly"]["steady_images_per_s"]
        delta = (r["ours"]["linear_top1"] - r["lightly"]["linear_top1"]) * 100
        lines.append(
            f"- {r['method']}: speed {ratio:.2f}x ({'meets' if ratio >= 1.5 else 'misses'} 1.5x); linear "
            f"top-1 {delta:+.2f} pt ({'equal or better' if delta >= 0 else 'worse'})."
        )
    lines += ["", "## Setups", ""]
    lines += setup_lines(info["setups"], cfg)
    lines += ["", "## Every difference between the two setups", ""]
    lines += DIFFERENCES
    if args.quick:
        lines += [
            "",
            f"**Quick check**: tiny budget to exercise the code path ({QUICK}); the numbers above mean nothing.",
        ]
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"[written to {path}]", file=sys.stderr)


def setup_lines(setups: dict, cfg) -> list[str]:
    tc = cfg.train
    b = cfg.backbone
    out = [
        f"Shared: backbone `{b.name}` kwargs {dict(b.kwargs)} (small-image stem), built by our registry with seed "
        f"{cfg.seed} on both sides (identical initial weights), inputs normalised inside it with the dataset's "
        f"mean/std; batch {tc.batch_size}; AdamW lr {tc.lr:g}, weight decay {tc.weight_decay:g} (none on norms and "
        f"biases), linear warm-up {tc.warmup_epochs:g} epoch then cosine to 0 per step (`core.train.lr_at` on both "
        f"sides); seed {cfg.seed}; `torch.use_deterministic_algorithms(True)` on both (lightly's code runs under it).",
    ]
    for m, s in setups.items():
        t = s["transform"]
        common = (
            f"crop scale ({t['min_scale']:g}, 1), ratio (3/4, 4/3), horizontal flip {t['hf_prob']:g}, jitter p "
            f"{t['cj_prob']:g} brightness {t['cj_bright']:g} contrast {t['cj_contrast']:g}, no blur"
        )
        if m == "simclr":
            out.append(
                f"- simclr: ours `simclr` plugin defaults (projector {fmt_dims(s['projector'])}, NT-Xent T "
                f"{s['temperature']:g}); lightly `SimCLRProjectionHead({fmt_dims(s['projector'])})`, "
                f"`NTXentLoss(temperature={s['temperature']:g})`, `SimCLRTransform` per PIL image: {common}."
            )
        else:
            out.append(
                f"- byol: ours `byol` plugin defaults (projector {fmt_dims(s['projector'])}, predictor "
                f"{fmt_dims(s['predictor'])}, momentum {s['momentum'][0]:g} -> {s['momentum'][1]:g} cosine "
                f"per step); lightly `BYOLProjectionHead`/`BYOLPredictionHead` of the same sizes, "
                f"`NegativeCosineSimilarity`, `update_momentum` + `cosine_schedule({s['momentum'][0]:g}, "
                f"{s['momentum'][1]:g})` per step, `BYOLTransform` with both views: {common}, solarize "
                f"{s['solarization_prob']:g}."
            )
    return out


DIFFERENCES = [
    "- **Augmentation implementation.** Ours: `core/augment.py`, batched tensor ops on the whole uint8 batch in "
    "the training process (crop + flip as one bilinear `grid_sample` per view, reflection padding, crop box clamped "
    "inside the image; brightness then contrast in a fixed order, contrast about the per-image mean, float maths). "
    "lightly: torchvision.transforms.v2 per PIL image in a DataLoader (`RandomResizedCrop` with PIL bilinear + "
    "antialias, rejection-sampled boxes with a centre-crop fallback; `ColorJitter` in a random order, PIL 8-bit "
    "maths, contrast about the image's grey mean). Same parameters (crop scale, ratio, flip p, jitter p and "
    "strengths); the pixel results differ in those details.",
    "- **Saturation, hue, random grayscale.** No-ops on 1-channel images on both sides (ours skips them, PIL "
    "leaves an 'L' image unchanged); set to 0 in lightly's transform so its workers do not spend time on them.",
    "- **Blur and solarisation.** Off on both sides (ours at 28 px). lightly's own recipes differ: SimCLRTransform "
    "blurs with p 0.5, BYOLTransform is asymmetric (blur 1.0 / 0.1, solarise 0 / 0.2); here both BYOL views use ours.",
    "- **Normalisation.** lightly's default ImageNet `Normalize` is disabled (`normalize=None`): both sides feed "
    "[0, 1] images to the same backbone wrapper, which normalises with the dataset's mean/std.",
    "- **Where augmentation runs.** Ours: in the training process, on the torch threads. lightly: in the DataLoader "
    "(num_workers 0: in the training process between steps; 2: two worker processes, overlapping the model step on "
    "the same 2 cores). The faster of the two, by a calibration in the same run, is used and reported above.",
    "- **Forward passes.** SimCLR: one backbone pass over both views on both sides (lightly's benchmark code does "
    "the same). BYOL: ours one pass of both views through the online network and one through the target (BatchNorm "
    "statistics over 512 images); lightly, as its examples and benchmarks, one pass per view for student and for "
    "teacher (4 passes, BatchNorm over 256).",
    "- **Heads.** SimCLR: ours' first projector Linear has a bias before its BatchNorm, lightly's does not (a "
    "redundant parameter; same function class). BYOL: the same layer shapes and bias layout on both sides. The "
    "heads' random initialisations differ (different RNG draws); the backbones start identical.",
    "- **Losses.** SimCLR: the same NT-Xent (2N-2 negatives per view, temperature as ours), computed differently "
    "(ours masks a 2N x 2N similarity matrix, lightly concatenates four N x N blocks). BYOL: ours mean(2 - 2cos) "
    "averaged over both directions, lightly `NegativeCosineSimilarity` summed over both = ours - 2: the same "
    "gradients; its logged loss is 2 lower.",
    "- **Momentum.** Ours: `cosine_increase(base, final, step + 1, total)` applied after the optimizer step, EMA over "
    "parameters and float buffers (BatchNorm running statistics). lightly: `cosine_schedule(step, total, base, "
    "final)` (reaches `final` at the last step) applied before the forward, `update_momentum` over parameters only. "
    "The target runs in train mode on both sides (batch statistics), so its running statistics do not enter training.",
    "- **Randomness.** Both seeded with the same seed, but different streams: ours draws the epoch permutation and "
    "the augmentation parameters from two dedicated generators; lightly's DataLoader shuffles with a seeded "
    "generator and the transforms draw from torch's global RNG (seeded per worker by the DataLoader). The image "
    "order and the views therefore differ.",
    "- **Per-epoch overheads.** Ours writes a resumable checkpoint to the (in-memory) artifact store after every "
    "epoch, as the pipeline does by default; lightly re-starts its DataLoader iterator each epoch (workers kept "
    "alive with `persistent_workers` when num_workers > 0). Both are inside the measured time.",
    "- **Step timestamp.** Ours: the task's `on_step_end` hook (after the optimizer step and the EMA update) is "
    "wrapped to record the time; lightly: right after `optimizer.step()`. Nothing else in our loop is changed.",
    "- **Environment.** lightly runs in its own venv (`bench/lightly_env.sh`) that sees the project's packages, so "
    "torch, torchvision, numpy and Pillow are the same builds; pytorch_lightning is installed there (lightly "
    "requires it) but not imported by this benchmark. Both implementations run in the same process, one after the "
    "other.",
]


if __name__ == "__main__":
    main()
