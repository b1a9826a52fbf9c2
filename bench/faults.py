"""Kill-and-resume cycles: SIGKILL the pretrain stage at random points, rerun it, and check that
every cycle ends with weights identical (sha256 of task.safetensors) to an uninterrupted run.

Each run is the pretrain stage in a process of its own (`run_pretrain`, what the CLI's flow runs,
without Prefect's start-up in each of the many restarts), on a local-folder artifact store. One
uninterrupted reference run, then per cycle 1 to --max-kills kills: start the stage, draw a step
among those still to do and a delay of 0 to 1.5 steps' time, and SIGKILL the process that long after
its log reports that step; then one last run to completion. A kill lands anywhere: inside a step,
during a checkpoint write, between checkpoints. The seed fixes the draws; the exact instant (and so
the checkpoint left behind) depends on the machine's speed, and is reported.

    python bench/faults.py                          # digits, MoCo (queue + EMA), 5 cycles, ~40 s each
    python bench/faults.py --cycles 1 --method dino --epochs 10 --out /tmp/FAULTS.md

Exit code 0 only if every cycle had a kill land and ended identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The pretrain stage alone, logging each step: argv = config, workspace, overrides...
RUN_STAGE = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
    "from pretextflow.core.config import load_config; "
    "from pretextflow.core.stages import StageContext, run_pretrain; "
    "run_pretrain(StageContext.create(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2]))"
)
STEP_LOG = re.compile(rb"step (\d+)/\d+ loss")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder`` (what the next run resumes from), None if none."""
    from pretextflow.core.training import checkpoint

    try:
        return checkpoint.decode((folder / "checkpoint.safetensors").read_bytes())[1]["step"]
    except FileNotFoundError:
        return None


def logged_step(log: Path) -> int:
    """The last step the run's log reports done (0 before its first)."""
    found = STEP_LOG.findall(log.read_bytes())
    return int(found[-1]) if found else 0


class Stage:
    """Starts the pretrain stage on one store; each start logs to its own file."""

    def __init__(self, config: str, workspace: str, overrides: list[str], store: Path, logs: Path):
        self.cmd = [sys.executable, "-c", RUN_STAGE, config, workspace, *overrides, f"store.uri={store}"]
        self.name, self.logs, self.starts = store.name, logs, 0

    def start(self) -> tuple[subprocess.Popen, Path]:
        self.starts += 1
        log = self.logs / f"{self.name}-{self.starts}.log"
        with open(log, "wb") as f:
            return subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT), log

    def finish(self) -> float:
        t = time.perf_counter()
        proc, log = self.start()
        if proc.wait() != 0:
            raise SystemExit(f"the pretrain stage failed (exit {proc.returncode}); see {log}")
        return time.perf_counter() - t


def kill_at(proc: subprocess.Popen, log: Path, step: int, delay: float, timeout: float = 600) -> bool:
    """SIGKILL ``delay`` seconds after the log reports ``step`` done; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while logged_step(log) < step:
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise SystemExit(f"step {step} not reached in {timeout:.0f} s: is the machine overloaded? ({log})")
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--method", default="moco", help="pretext task (its published default params)")
    ap.add_argument("--config", default=str(REPO / "configs" / "digits_smoke.yaml"))
    ap.add_argument(
        "--workspace",
        help="a workspace holding the config's dataset; default: a new temporary "
        "one, into which the config's data.source is ingested",
    )
    ap.add_argument("--seed", type=int, default=0, help="draws the kills per cycle and the delays")
    ap.add_argument("--max-kills", type=int, default=3, help="kills per cycle: 1 to this")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--checkpoint-every-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="train.threads of every run (the same for all)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    ap.add_argument("--out", default=str(REPO / "bench" / "FAULTS.md"))
    args = ap.parse_args()

    from pretextflow.core.config import load_config
    from pretextflow.core.stages import StageContext, run_ingest

    tmp = Path(tempfile.mkdtemp(prefix="pretextflow-faults-"))
    overrides = [
        f"pretext.name={args.method}",
        "pretext.params={}",
        f"train.epochs={args.epochs}",
        f"train.checkpoint_every_steps={args.checkpoint_every_steps}",
        f"train.threads={args.threads}",
        "train.log_every=1",
        *args.overrides,
    ]  # log_every: kill_at follows the steps in the log
    cfg = load_config(args.config, overrides)
    if args.workspace:
        workspace = str(Path(args.workspace).resolve())
    else:
        from pretextflow.core.data.versioning import init_workspace

        workspace = str(init_workspace(tmp / "ws").root)
        run_ingest(StageContext.create(cfg, workspace), push=False)
    ctx = StageContext.create(cfg, workspace)
    key = ctx.pretrain_key(ctx.dataset())
    (tmp / "logs").mkdir()

    def stage(name: str) -> tuple[Stage, Path]:
        return Stage(args.config, workspace, overrides, tmp / name, tmp / "logs"), tmp / name / "pretrain" / key

    print(
        f"pretrain {key}: {args.method} on {cfg.data.name}, {args.epochs} epochs, a checkpoint every "
        f"{args.checkpoint_every_steps} steps, {args.threads} thread(s); work folder {tmp}",
        flush=True,
    )
    ref, ref_folder = stage("reference")
    ref_seconds = ref.finish()
    ref_sha = sha256(ref_folder / "task.safetensors")
    from pretextflow.core.store import ArtifactStore

    history = ArtifactStore(str(tmp / "reference")).read_json("pretrain", key, "history.json")
    total_steps, train_seconds = len(history["step_loss"]), sum(history["epoch_seconds"])
    print(
        f"uninterrupted run: {ref_seconds:.1f} s ({train_seconds:.1f} s training), {total_steps} steps, "
        f"sha256 {ref_sha}",
        flush=True,
    )

    rng = random.Random(args.seed)
    step_seconds = train_seconds / total_steps
    rows, kills_landed = [], 0
    for cycle in range(1, args.cycles + 1):
        runner, folder = stage(f"cycle-{cycle}")
        kills = []
        for _ in range(rng.randint(1, args.max_kills)):
            start = checkpoint_step(folder) or 0  # where this run resumes
            if start >= total_steps - 1:
                break
            target, delay = rng.randint(start + 1, total_steps - 1), rng.uniform(0.0, 1.5) * step_seconds
            t0 = time.perf_counter()
            before = set(folder.glob(".tmp-*"))
            proc, log = runner.start()
            if not kill_at(proc, log, target, delay):
                kills.append(f"(step {target}: the run finished first)")
                break
            left = checkpoint_step(folder)
            mid_write = bool(set(folder.glob(".tmp-*")) - before)  # a kill during a write leaves its temporary file
            kills.append(
                f"{time.perf_counter() - t0:.1f} s, after step {logged_step(log)} -> checkpoint {left}"
                + (" (killed mid-write)" if mid_write else "")
            )
        landed = sum("->" in k for k in kills)
        kills_landed += landed
        resumed_from = checkpoint_step(folder)
        runner.finish()
        digest = sha256(folder / "task.safetensors")
        same = digest == ref_sha and not (folder / "checkpoint.safetensors").exists()
        ok = same and landed > 0
        rows.append(
            (
                cycle,
                "; ".join(kills),
                "none" if resumed_from is None else str(resumed_from),
                "yes" if same else "NO",
                digest,
                ok,
            )
        )
        print(f"| {cycle} | {rows[-1][1]} | {rows[-1][2]} | {rows[-1][3]} | {digest[:16]} |", flush=True)

    passed = sum(r[5] for r in rows)
    verdict = (
        f"VERDICT: {'PASS' if passed == len(rows) else 'FAIL'} - {passed}/{len(rows)} cycles "
        f"({kills_landed} SIGKILLs in all) ended with weights identical to the uninterrupted run "
        f"(sha256 {ref_sha[:16]}...)"
    )
    if any(not r[5] and r[3] == "yes" for r in rows):
        verdict += "; a cycle where no kill landed counts as failed"
    table = [
        "| cycle | kills: time after the run's start, last step its log reported -> checkpoint left | last "
        "run resumed from step | identical | sha256 of task.safetensors |",
        "|---|---|---|---|---|",
    ]
    table += [f"| {c} | {k} | {s} | {i} | `{d}` |" for c, k, s, i, d, _ in rows]
    print("\n".join(table))
    print(verdict)
    import torch

    report = [
        "# Kill-and-resume cycles",
        "",
        f"`python bench/faults.py {' '.join(sys.argv[1:])}`",
        "",
        f"pretrain stage: {args.method} on `{Path(args.config).name}` ({cfg.data.name}), {args.epochs} epochs = "
        f"{total_steps} steps, `train.checkpoint_every_steps={args.checkpoint_every_steps}`, "
        f"`train.threads={args.threads}`; torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}. Every run is the pretrain stage in its own process on a local-folder "
        f"store; each kill is a SIGKILL at a random delay (0 to 1.5 steps) after a random step among those the run "
        f"still had to do.",
        "",
        f"Uninterrupted run: {ref_seconds:.1f} s including process start-up ({train_seconds:.1f} s training); "
        f"sha256 of its task.safetensors: `{ref_sha}`.",
        "",
        *table,
        "",
        f"**{verdict}**",
        "",
    ]
    Path(args.out).write_text("\n".join(report))
    print(f"written: {args.out}")
    if passed == len(rows):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept for inspection (stores and every run's log): {tmp}")
    sys.exit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()
