"""Run one ingest and stop at a chosen point, for tests/test_faults_storage.py to SIGKILL it there.

    python tests/ingest_kill_driver.py WORKSPACE SOURCE NAME POINT DELAY MARKER [FORMAT SHARD_MB]

POINT is where to stop: ``staging`` (half the files staged), ``swap`` (between the two renames),
``dvc-add`` / ``dvc-push`` (while that DVC child process runs, DELAY seconds after it started),
``after-add`` (data.dvc rewritten, nothing pushed), ``after-push`` (pushed, not yet committed).
On reaching it the driver writes MARKER (JSON: its pid and its DVC children's pids) and sleeps
until it is killed; the ingest code itself runs unchanged up to that point."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

from pretextflow.core.data import ingest as ingest_mod
from pretextflow.core.data import versioning
from pretextflow.core.workspace import Workspace


def main(ws_root: str, source: str, name: str, point: str, delay: float, marker: str) -> None:
    def stop_here(children: list[int] | None = None) -> None:
        alive = [p for p in (children or []) if psutil.pid_exists(p)]
        Path(marker + ".part").write_text(json.dumps({"pid": os.getpid(), "children": alive, "point": point}))
        os.replace(marker + ".part", marker)
        while True:
            time.sleep(3600)

    if point == "staging":
        from pretextflow.core.data import build as build_mod

        real_write_plan = build_mod.write_plan

        def write_plan(*args, **kwargs):  # the first shard staged, the rest (and meta.json) not
            real_write_plan(*args, **kwargs)
            stop_here()

        build_mod.write_plan = write_plan
    elif point == "swap":
        real_rename = Path.rename

        def rename(self, target):
            out = real_rename(self, target)
            if Path(target).name.endswith("-old"):  # the previous version was moved aside
                stop_here()
            return out

        Path.rename = rename
    elif point in ("dvc-add", "dvc-push"):
        real_run, command = versioning._run, point.split("-")[1]

        def run(args, cwd, what):
            if command not in args:
                return real_run(args, cwd, what)
            threading.Thread(target=real_run, args=(args, cwd, what), daemon=True).start()
            me = psutil.Process()
            while not me.children():
                time.sleep(0.005)
            time.sleep(delay)
            stop_here([c.pid for c in me.children(recursive=True)])

        versioning._run = run
    elif point == "after-add":
        real_dvc = versioning.dvc

        def dvc(ws, *args):
            out = real_dvc(ws, *args)
            if args and args[0] == "add":
                stop_here()
            return out

        versioning.dvc = dvc
    elif point == "after-push":

        def commit(self):
            stop_here()

        ingest_mod._Transaction.commit = commit
    else:
        raise SystemExit(f"unknown point {point!r}")
    fmt, shard_mb = (sys.argv[7], float(sys.argv[8])) if len(sys.argv) > 8 else ("idx", 256.0)
    settings = ingest_mod.IngestSettings(shard_mb=shard_mb, workers=1)
    ingest_mod.ingest(Workspace.at(ws_root), source, fmt, name, settings=settings)
    raise SystemExit(f"the ingest finished without reaching {point!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
