"""bench/gpu_check.sh --cpu: the GPU check's own script, run here on the CPU as the GPU machine runs
it (the package in its installed shape in a temporary folder, no Prefect or DVC used)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import REPO


def test_gpu_check_runs_on_the_cpu_and_checks_its_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["sh", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and report["passed"]
    main = report["results"]["main"]
    assert main["device"] == "cpu" and main["images_per_second"] > 0
    assert {c["check"] for c in report["checks"]} >= {"linear_top1", "knn_top1", "random_init_linear_top1"}
    assert set(main["seconds"]) >= {"pretrain", "freeze", "probe"}


def test_gpu_check_refuses_the_gpu_mode_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run(
        ["sh", str(REPO / "bench" / "gpu_check.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
