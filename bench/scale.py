"""Scale benchmark: ingest of 10k-200k colour JPEGs, an incremental append, an ``s3://`` source,
the raw-vs-encoded storage choice and training throughput from shards; writes SCALE.md (tables
rendered by bench/scale_report.py, every number measured in the run) and SCALE.json beside it
(the raw results; a run of some parts keeps the others' previous results).

    python bench/scale.py                                              # everything, 10k/50k/200k
    python bench/scale.py --only ingest,append --sizes 10000,50000,200000
    python bench/scale.py --sizes 2000,4000,8000                       # quick end-to-end check

Parts (``--only``, comma-separated; default all, run in this order):
  ingest    a fresh workspace per size, ``ingest(..., push=True)`` in a child process whose RSS (and
            its process tree's: decode workers, DVC) is polled every 0.1 s
  append    +5 % new images (make_jpegs --start N) to the largest size, re-ingested into the same
            workspace: time, images read, shards written/kept, DVC remote growth
  s3        the first 10k images as objects on a local moto S3 server: ImageFolderFormat scan + read
            with read_concurrency 1 vs 32
  encoding  bytes per image raw vs JPEG; PIL decode rate (one core) vs gathers from a memory map
  train     pretrain images/s from one shard vs several (Fashion-MNIST, then the smallest 96 px size)

The JPEGs are generated once under ``--cache`` (default /tmp/pretextflow-scale) by
bench/make_jpegs.py and reused; smaller sizes are hard-link subsets of the largest. Workspaces
are made under the cache folder and removed after each part (``--keep-workspaces`` keeps them).
Fashion-MNIST: $FASHION_MNIST_DIR, /usr/share/datasets/fashion-mnist, ~/.cache/pretextflow/
fashion-mnist, else scripts/fashion_mnist_dir.sh finds (or fetches) it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import make_jpegs  # noqa: E402
import scale_report  # noqa: E402

PARTS = ("ingest", "append", "s3", "encoding", "train")
SIZE = 96
CLASSES = 10
CHILD = BENCH / "scale_child.py"
CONFIG = REPO / "configs" / "fashion_mnist.yaml"


@dataclass
class Env:
    """One run: its arguments, the cache folder, every result so far and state shared by parts."""

    args: argparse.Namespace
    cache: Path
    results: dict
    state: dict = field(default_factory=dict)  # e.g. the largest ingest's workspace, for append

    @property
    def sizes(self) -> list[int]:
        return self.args.sizes

    @property
    def largest(self) -> int:
        return max(self.args.sizes)


# -- shell helpers -------------------------------------------------------------------------------
def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def du_bytes(path: Path) -> int:
    """``du -sb``: apparent bytes under ``path`` (hard links counted once), 0 if it is absent."""
    if not path.exists():
        return 0
    return int(sh("du", "-sb", str(path)).split()[0])


def machine(cache: Path) -> dict:
    """What the run ran on: ``nproc``, ``free -g``, the CPU model, versions, free disk."""
    from importlib.metadata import version

    cpu = next((ln.split(":", 1)[1].strip() for ln in sh("lscpu").splitlines() if ln.startswith("Model name")), "?")
    return {
        "nproc": sh("nproc").strip(),
        "free_g": sh("free", "-g").rstrip(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("numpy", "pillow", "torch", "dvc", "fsspec", "s3fs", "moto")},
        "disk_free_gb": round(shutil.disk_usage(cache).free / 1e9, 1),
        "load_avg": os.getloadavg(),
    }


def rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- the JPEG collections ------------------------------------------------------------------------
def _complete(folder: Path) -> dict | None:
    marker = folder / ".complete.json"
    return json.loads(marker.read_text()) if marker.is_file() else None


def collection(env: Env, n: int) -> tuple[Path, dict]:
    """A complete generated collection of at least ``n`` images (the smallest cached one, else a
    new one of ``n``), and its generation record."""
    found = []
    for folder in env.cache.glob(f"jpegs-{SIZE}px-*"):
        info = _complete(folder)
        if info and info["n"] >= n and info["classes"] == CLASSES:
            found.append((info["n"], folder, info))
    if found:
        _, folder, info = min(found)
        return folder, info
    folder = env.cache / f"jpegs-{SIZE}px-{n}"
    rm(folder)
    print(f"generating {n:,} JPEGs ({SIZE} px) into {folder} ...", flush=True)
    gen = make_jpegs.generate(folder, n, SIZE, CLASSES, workers=env.args.workers, progress=True)
    cmd = f"python bench/make_jpegs.py {folder} --n {n} --size {SIZE} --classes {CLASSES}"
    info = {"n": n, "classes": CLASSES, "size": SIZE, "command": cmd, **gen}
    (folder / ".complete.json").write_text(json.dumps(info, indent=1))
    return folder, info


def link_tree(src: Path, dst: Path, below: int | None = None) -> int:
    """Hard-link the images of ``src`` (those with index < ``below``, if given) into ``dst``."""
    count = 0
    for sub in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / sub.name).mkdir(parents=True, exist_ok=True)
        with os.scandir(sub) as it:
            for e in it:
                if e.name.endswith(".jpg") and (below is None or int(e.name[3:10]) < below):
                    os.link(e.path, dst / sub.name / e.name)
                    count += 1
    return count


def subset(env: Env, n: int) -> Path:
    """The first ``n`` images of the cached collection (the collection itself when it has exactly
    ``n``, else a cached hard-link subset)."""
    coll, info = collection(env, env.largest)
    if info["n"] == n:
        return coll
    folder = env.cache / "subsets" / f"{n}-of-{coll.name}"
    if not _complete(folder):
        rm(folder)
        link_tree(coll, folder, below=n)
        (folder / ".complete.json").write_text(json.dumps({"n": n, "of": str(coll)}))
    return folder


def jpeg_bytes(folder: Path) -> tuple[int, int]:
    """(files, total bytes) of the JPEGs below ``folder``."""
    files = total = 0
    for sub in folder.iterdir():
        if sub.is_dir():
            with os.scandir(sub) as it:
                for e in it:
                    if e.name.endswith(".jpg"):
                        files, total = files + 1, total + e.stat().st_size
    return files, total


# -- child processes -----------------------------------------------------------------------------
def _anon_rss(pid: int) -> int:
    """RssAnon of ``pid`` (heap, not file-backed pages such as memory maps), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def watch(cmd: list[str], log: Path, every: float = 0.1) -> dict:
    """Run ``cmd``, polling its RSS and its process tree's (summed) every ``every`` seconds."""
    import psutil

    peak = {"main": 0, "tree": 0, "main_anon": 0}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                main, kids = p.memory_info().rss, p.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            tree = main
            for k in kids:
                try:
                    tree += k.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak["main"], peak["tree"] = max(peak["main"], main), max(peak["tree"], tree)
            peak["main_anon"] = max(peak["main_anon"], _anon_rss(proc.pid))
            time.sleep(every)
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text().splitlines()[-25:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (rc {rc}); log {log}:\n" + "\n".join(tail))
    return {f"peak_rss_{k}": v for k, v in peak.items()}


def child(env: Env, command: str, args: dict, tag: str) -> dict:
    """Run ``scale_child.py command`` with ``args``; its result, plus the peak RSS seen."""
    logs = env.cache / "logs"
    logs.mkdir(exist_ok=True)
    args = {**args, "out": str(logs / f"{tag}.json")}
    peaks = watch([sys.executable, str(CHILD), command, json.dumps(args)], logs / f"{tag}.log")
    return {**json.loads(Path(args["out"]).read_text()), **peaks}


def run_ingest(
    env: Env, ws: Path, src: Path | str, name: str, shard_mb: float, fmt: str = "imagefolder", push: bool = True
) -> dict:
    """One ingest in a child process (``ws`` is made a workspace if it is not one)."""
    args = {
        "ws": str(ws),
        "src": str(src),
        "format": fmt,
        "name": name,
        "shard_mb": shard_mb,
        "workers": env.args.workers,
        "push": push,
    }
    r = child(env, "ingest", args, f"ingest-{name}-{uuid.uuid4().hex[:6]}")
    r["command"] = (
        f"pretextflow ingest {src} -f {fmt} -n {name} --shard-mb {shard_mb:g}"
        + (f" --workers {env.args.workers}" if env.args.workers else "")
        + ("" if push else " --no-push")
    )
    return r


# -- a. ingest -----------------------------------------------------------------------------------
def _ingest_row(n: int, r: dict) -> dict:
    t = r["result"]["timing"]
    wall = r["wall_s"]
    other = t["scan_s"] + t["decode_s"] + t.get("write_s", 0.0)
    return {
        "n": n,
        "wall_s": wall,
        "images_per_s": n / wall,
        "peak_rss_main": r["peak_rss_main"],
        "peak_rss_main_anon": r["peak_rss_main_anon"],
        "peak_rss_tree": r["peak_rss_tree"],
        "scan_s": t["scan_s"],
        "decode_s": t["decode_s"],
        "decode_cpu_s": t["decode_cpu_s"],
        "write_s": t.get("write_s", 0.0),
        "dvc_s": wall - other,  # dvc add + push + the rest (kept for runs recorded before the split below)
        "dvc_add_s": t.get("dvc_add_s"),
        "dvc_push_s": t.get("dvc_push_s", 0.0),
        "finish_s": t.get("finish_s"),
        # process start and imports, shard planning, the staged swap
        "rest_s": wall - other - t.get("dvc_add_s", 0.0) - t.get("dvc_push_s", 0.0) - t.get("finish_s", 0.0),
        "images_read": t["images_read"],
        "shards": r["result"]["changes"]["shards_written"] + r["result"]["changes"]["shards_kept"],
        "counts": r["result"]["counts"],
        "command": r["command"],
    }


def part_ingest(env: Env) -> dict:
    coll, info = collection(env, env.largest)
    rows = []
    for n in sorted(env.sizes):
        src = subset(env, n)
        ws = env.cache / f"ws-ingest-{n}"
        rm(ws)
        print(f"ingest {n:,} images ...", flush=True)
        r = run_ingest(env, ws, src, "jpegs", env.args.shard_mb)
        rows.append(_ingest_row(n, r))
        rows[-1]["workspace_bytes"] = {p: du_bytes(ws / p) for p in ("data", ".dvc/cache", ".dvc-remote")}
        print(f"  {rows[-1]['wall_s']:.1f} s, {rows[-1]['images_per_s']:,.0f} images/s", flush=True)
        if n == env.largest and "append" in env.args.only:
            env.state["base"] = {"ws": ws, "src": src, "row": rows[-1]}
        elif not env.args.keep_workspaces:
            rm(ws)
    return {
        "rows": rows,
        "generator": info,
        "collection": str(coll),
        "shard_mb": env.args.shard_mb,
        "workers": env.args.workers,
        "raw_bytes_per_image": 3 * SIZE * SIZE,
    }


# -- b. append -----------------------------------------------------------------------------------
def _append_base(env: Env) -> dict:
    """The full ingest the append builds on: this run's largest ingest, or a new one."""
    if "base" in env.state:
        return env.state["base"]
    n = env.largest
    src, ws = subset(env, n), env.cache / f"ws-ingest-{n}"
    rm(ws)
    print(f"append: full ingest of {n:,} images first ...", flush=True)
    return {"ws": ws, "src": src, "row": _ingest_row(n, run_ingest(env, ws, src, "jpegs", env.args.shard_mb))}


def part_append(env: Env) -> dict:
    base = _append_base(env)
    n, ws = env.largest, base["ws"]
    k = max(1, round(0.05 * n))
    combined = env.cache / f"append-{n}+{k}"
    rm(combined)
    link_tree(base["src"], combined)
    print(f"append: {k:,} new images (make_jpegs --start {n}) ...", flush=True)
    gen = make_jpegs.generate(combined, k, SIZE, CLASSES, start=n, workers=env.args.workers)
    before = {p: du_bytes(ws / p) for p in (".dvc-remote", ".dvc/cache", "data")}
    r = run_ingest(env, ws, combined, "jpegs", env.args.shard_mb)
    after = {p: du_bytes(ws / p) for p in (".dvc-remote", ".dvc/cache", "data")}
    if not env.args.keep_workspaces:
        rm(ws)
        rm(combined)
    return {
        "n": n,
        "new": k,
        "full": base["row"],
        "append": _ingest_row(n + k, r),
        "changes": r["result"]["changes"],
        "new_jpeg_bytes": gen["bytes"],
        "new_raw_bytes": k * 3 * SIZE * SIZE,
        "before": before,
        "after": after,
        "make_command": f"python bench/make_jpegs.py {combined} --n {k} --start {n} --size {SIZE} --classes {CLASSES}",
        "command": r["command"],
    }


# -- c. s3 ---------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"), stderr=subprocess.STDOUT
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited (rc {proc.returncode}); see {log}") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {url} within 60 s; see {log}")


def _upload(url: str, bucket: str, prefix: str, files: list[tuple[str, Path]]) -> float:
    """Create ``bucket`` and put every (key, file) under ``prefix``, 32 at a time; seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    s3.create_bucket(Bucket=bucket)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda kf: s3.put_object(Bucket=bucket, Key=f"{prefix}/{kf[0]}", Body=kf[1].read_bytes()), files))
    return time.perf_counter() - t0


def _scan_and_read(source: str, storage_options: dict, concurrency: int, server=None, limit: int | None = None) -> dict:
    """ImageFolderFormat.scan, then read of every entry (the first ``limit``) chunk by chunk (as
    ingest reads them); also the CPU seconds of this process and of ``server`` (a psutil.Process)."""
    import hashlib

    import s3fs

    from pretextflow.core.data.parallel import CHUNK
    from pretextflow.plugins.datasets.imagefolder import ImageFolderFormat

    s3fs.S3FileSystem.clear_instance_cache()  # no listing or connection carried over between runs
    fmt = ImageFolderFormat()
    opts = fmt.Options(read_concurrency=concurrency)
    cpu0, srv0 = time.process_time(), _cpu(server)
    t0 = time.perf_counter()
    catalog = fmt.scan(source, opts, storage_options)
    t1 = time.perf_counter()
    read_opts = fmt.Options.model_validate({**opts.model_dump(), **catalog.read_options})
    entries = sorted(catalog.entries, key=lambda e: e.key)[:limit]
    shas, pixels = [], hashlib.sha256()
    for i in range(0, len(entries), CHUNK):
        chunk = entries[i : i + CHUNK]
        for item in fmt.read(source, chunk, read_opts, storage_options):
            shas.append(item.sha256)
            pixels.update(item.image.tobytes())
    t2 = time.perf_counter()
    return {
        "client_cpu_s": time.process_time() - cpu0,
        "server_cpu_s": _cpu(server) - srv0,
        "concurrency": concurrency,
        "files": len(entries),
        "scan_s": t1 - t0,
        "read_s": t2 - t1,
        "total_s": t2 - t0,
        "keys": [e.key for e in entries],
        "sha256": shas,
        "pixels_sha256": pixels.hexdigest(),
    }


def _cpu(proc) -> float:
    """User + system CPU seconds of a psutil.Process (0 for None)."""
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    return t.user + t.system


def part_s3(env: Env) -> dict:
    import hashlib

    import psutil

    n = min(env.args.s3_objects, env.largest)
    src = subset(env, n)
    files = sorted((f"{p.parent.name}/{p.name}", p) for p in src.glob("*/*.jpg"))
    proc, url = _start_moto(env.cache / "moto.log")
    try:
        upload_s = _upload(url, "scale", "jpegs", files)
        so = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": url}}
        source = "s3://scale/jpegs"
        server = psutil.Process(proc.pid)
        _scan_and_read(source, so, 32, server, limit=256)  # warm-up: moto's and s3fs's first requests
        runs = {c: _scan_and_read(source, so, c, server) for c in (1, 32)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    local = [hashlib.sha256(p.read_bytes()).hexdigest() for _, p in files]
    same = runs[1]["sha256"] == runs[32]["sha256"] == local and runs[1]["pixels_sha256"] == runs[32]["pixels_sha256"]
    for r in runs.values():
        r.pop("keys"), r.pop("sha256")
    return {
        "objects": n,
        "upload_s": upload_s,
        "runs": list(runs.values()),
        "identical_sha256": same,
        "speedup": runs[1]["total_s"] / runs[32]["total_s"],
        "storage_options": {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": "URL"}},
    }


# -- d. encoding ---------------------------------------------------------------------------------
def _decode_rate(blobs: list[bytes], passes: int = 3) -> tuple[float, list]:
    """PIL decodes per second on this one core (median of ``passes``), as the ingest decodes:
    open, convert to RGB, to a (C, H, W) uint8 array."""
    import io
    import statistics

    import numpy as np
    from PIL import Image

    rates, images = [], []
    for p in range(passes):
        t0 = time.perf_counter()
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                arr = np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
            if p == 0:
                images.append(arr)
        rates.append(len(blobs) / (time.perf_counter() - t0))
    return statistics.median(rates), images


def _gather_rate(take, n: int, batch: int, seconds: float = 2.0) -> float:
    """Images/s of ``take(random indices)`` in batches of ``batch``, for about ``seconds``."""
    import numpy as np

    rng = np.random.default_rng(0)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        take(rng.integers(0, n, batch))
        done += batch
    return done / (time.perf_counter() - t0)


def part_encoding(env: Env) -> dict:
    import numpy as np

    from pretextflow.core.data.shards import ShardedArray

    coll = subset(env, env.largest)
    files, total = jpeg_bytes(coll)
    sample = sorted(coll.glob("*/*.jpg"))[: min(env.args.encoding_images, files)]
    blobs = [p.read_bytes() for p in sample]
    rate, images = _decode_rate(blobs)
    path = env.cache / "encoding-shard.npy"
    np.save(path, np.stack(images), allow_pickle=False)
    shard = np.load(path, mmap_mode="r")
    np.asarray(shard).sum()  # every page read once: the gathers below come from the page cache
    parts = np.array_split(np.arange(len(shard)), 8)
    sharded = ShardedArray([shard[p[0] : p[-1] + 1] for p in parts])
    batch = 256
    out = {
        "images": files,
        "jpeg_mean_bytes": total / files,
        "raw_bytes": 3 * SIZE * SIZE,
        "decode_images": len(blobs),
        "decode_per_core": rate,
        "mmap_gather": _gather_rate(lambda idx: shard[idx], len(shard), batch),
        "mmap_gather_sorted": _gather_rate(lambda idx: shard[np.sort(idx)], len(shard), batch),
        "sharded_take": _gather_rate(sharded.take, len(shard), batch),
        "sharded_parts": len(parts),
        "batch": batch,
    }
    path.unlink()
    return out


# -- e. train ------------------------------------------------------------------------------------
def fashion_mnist_dir() -> str:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    for cand in (
        os.environ.get("FASHION_MNIST_DIR"),
        "/usr/share/datasets/fashion-mnist",
        cache_home / "pretextflow" / "fashion-mnist",
    ):
        if cand and (Path(cand) / "train-images-idx3-ubyte.gz").is_file():
            return str(cand)
    env = {**os.environ, "PRETEXTFLOW": str(Path(sys.executable).with_name("pretextflow"))}
    out = subprocess.run(
        ["sh", str(REPO / "scripts" / "fashion_mnist_dir.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _train_runs(env: Env, variants: dict, overrides: list[str], warmup: int, steps: int, repeats: int) -> dict:
    """Each variant (name -> workspace) ``repeats`` times, the order alternating per repeat."""
    names = list(variants)
    runs = {v: [] for v in names}
    for rep in range(repeats):
        for v in names if rep % 2 == 0 else names[::-1]:
            args = {
                "config": str(CONFIG),
                "ws": str(variants[v]),
                "warmup": warmup,
                "steps": steps,
                "overrides": [*overrides, f"store.uri=memory://scale-{uuid.uuid4().hex[:8]}"],
            }
            r = child(env, "train", args, f"train-{v}-{rep}")
            runs[v].append(r)
            print(f"  {v} #{rep + 1}: {r['images_per_s']:,.0f} images/s, gather {r['gather_share']:.1%}", flush=True)
    return runs


def _train_case(env: Env, label: str, src: str, fmt: str, name: str, shard_mbs: dict, steps: int) -> dict:
    """Ingest ``src`` once per shard size (no push), then time pretraining from each."""
    variants, ingests = {}, {}
    for v, mb in shard_mbs.items():
        ws = env.cache / f"ws-train-{label}-{v}"
        rm(ws)
        ingests[v] = run_ingest(env, ws, src, name, mb, fmt=fmt, push=False)["command"]
        variants[v] = ws
    meta = json.loads((variants[next(iter(variants))] / "data" / name / "meta.json").read_text())
    per_epoch = meta["counts"]["train"] // 256
    warmup = 2 if per_epoch < 20 else 3
    steps = max(1, min(steps, per_epoch - warmup))
    overrides = [
        "data.source=null",
        f"data.name={name}",
        f"data.format={fmt}",
        "train.epochs=1",
        "train.log_every=100000",
    ]
    runs = _train_runs(env, variants, overrides, warmup, steps, env.args.train_repeats)
    if not env.args.keep_workspaces:
        for ws in variants.values():
            rm(ws)
    return {
        "label": label,
        "shard_mb": shard_mbs,
        "ingest_commands": ingests,
        "warmup": warmup,
        "steps": steps,
        "overrides": overrides,
        "runs": runs,
    }


def part_train(env: Env) -> dict:
    fm = _train_case(
        env,
        "fashion-mnist",
        fashion_mnist_dir(),
        "idx",
        "fashion-mnist",
        {"one shard": env.args.shard_mb, "several shards": 8.0},
        env.args.train_steps,
    )
    n = min(env.sizes)
    several = round(max(0.5, 0.8 * n * 3 * SIZE * SIZE / 6 / 2**20), 1)  # about six training shards
    jp = _train_case(
        env,
        f"jpegs-{n}",
        str(subset(env, n)),
        "imagefolder",
        f"jpegs-{n}",
        {"one shard": env.args.shard_mb, "several shards": several},
        env.args.train_steps_96,
    )
    return {"cases": [fm, jp], "config": str(CONFIG.relative_to(REPO))}


# -- main ----------------------------------------------------------------------------------------
FUNCS = {"ingest": part_ingest, "append": part_append, "s3": part_s3, "encoding": part_encoding, "train": part_train}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {','.join(PARTS)}")
    ap.add_argument("--sizes", default="10000,50000,200000", help="ingest sizes (images)")
    ap.add_argument("--out", default=str(BENCH / "SCALE.md"))
    ap.add_argument("--cache", default="/tmp/pretextflow-scale", help="generated JPEGs and workspaces")
    ap.add_argument("--shard-mb", type=float, default=256.0, help="ingest shard size (the default one)")
    ap.add_argument("--workers", type=int, default=None, help="decode/generate processes (default: every core)")
    ap.add_argument("--s3-objects", type=int, default=10_000)
    ap.add_argument("--encoding-images", type=int, default=5_000, help="JPEGs decoded for the encoding part")
    ap.add_argument("--train-steps", type=int, default=60, help="timed steps per Fashion-MNIST run")
    ap.add_argument("--train-steps-96", type=int, default=10, help="timed steps per 96 px run")
    ap.add_argument("--train-repeats", type=int, default=3, help="runs per variant (order alternates)")
    ap.add_argument("--keep-workspaces", action="store_true")
    a = ap.parse_args(argv)
    a.only = [p for p in PARTS if p in {s.strip() for s in a.only.split(",")}]
    unknown = {s.strip() for s in ap.parse_args(argv).only.split(",")} - set(PARTS)
    if unknown or not a.only:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    a.sizes = sorted({int(s) for s in a.sizes.split(",")})
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    json_path = out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.is_file() else {"parts": {}}
    env = Env(args, cache, results)
    command = "python bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t_run = time.perf_counter()
    for part in args.only:
        print(f"== {part}", flush=True)
        t0 = time.perf_counter()
        res = FUNCS[part](env)
        res.update(
            seconds=time.perf_counter() - t0,
            run_command=command,
            sizes=args.sizes,
            at=time.strftime("%Y-%m-%d %H:%M"),
            machine=machine(cache),
        )
        results["parts"][part] = res
        json_path.write_text(json.dumps(results, indent=1, default=str))
        out.write_text(scale_report.render(results))
        print(f"   {part}: {res['seconds']:.0f} s; {out} updated", flush=True)
    print(f"done in {time.perf_counter() - t_run:.0f} s: {out}")
    if "base" in env.state and not args.keep_workspaces:
        rm(env.state["base"]["ws"])


if __name__ == "__main__":
    main()
