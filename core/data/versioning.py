"""DVC and git plumbing: initialise a workspace, track ``data/`` with ``data.dvc``, push to the
remote, read the data version. DVC is driven through its CLI (its documented interface; the
``Repo`` class is internal), serialised by a workspace lock because parallel DVC commands in one
workspace fail on DVC's own lock."""
from __future__ import annotations
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
import yaml
from filelock import FileLock, Timeout
from pretextflow.core.errors import VersioningError
from pretextflow.core.security.redaction import SECRET_REMOTE_OPTIONS, has_url_credentials, redact
from pretextflow.core.workspace import DEFAULT_REMOTE_DIR, Workspace


_ENV = {"DVC_NO_ANALYTICS": "1", "GIT_TERMINAL_PROMPT": "0"}


def _redact_args(args: list[str]) -> list[str]:
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a.lower() in SECRET_REMOTE_OPTIONS:
            out[i + 1] = "***"
    return [redact(a) for a in out]


def _run(args: list[str], cwd: Path, what: str) -> str:
    env = {**os.environ, **_ENV, "PRETEXTFLOW_DVC_PARENT": str(os.getpid())}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
                  if "Having any troubles" not in line]  # DVC's support banner, not the error
        raise VersioningError(redact(f"{what} failed in {cwd}: {' '.join(detail[-6:])}"))
    return proc.stdout


# DVC runs in a child process, which must not outlive us: a `dvc add` still running after this
# process was killed could rewrite data.dvc after the next run rolled the interrupted ingest back
# (core.ingest). On Linux the child asks the kernel to SIGKILL it when its parent dies
# (prctl PR_SET_PDEATHSIG), then runs `python -m dvc`; elsewhere it just runs DVC.
_DVC_MAIN = """\
import os, runpy, sys
if sys.platform.startswith("linux"):
    try:
        import ctypes, signal
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != int(os.environ.get("PRETEXTFLOW_DVC_PARENT", os.getppid())):
        sys.exit(70)  # the parent died before the request was made
sys.argv[0] = "dvc"
runpy.run_module("dvc", run_name="__main__", alter_sys=True)
"""


def dvc(ws: Workspace, *args: str) -> str:
    return _run([sys.executable, "-c", _DVC_MAIN, *args], ws.root, "dvc " + " ".join(_redact_args(list(args))))


def git(ws: Workspace, *args: str) -> str:
    return _run(["git", *args], ws.root, "git " + " ".join(args))


@contextmanager
def workspace_lock(ws: Workspace, purpose: str, timeout: float = 600) -> Iterator[None]:
    """Serialise DVC operations and data/ writes across processes; says who holds it on timeout."""
    owner = ws.lock_path.with_name(ws.lock_path.name + ".owner")
    lock = FileLock(str(ws.lock_path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        holder = owner.read_text().strip() if owner.exists() else "unknown"
        raise VersioningError(f"the workspace {ws.root} is locked by {holder}; waited {timeout:.0f}s. "
                              f"Wait for that run to finish, or remove {ws.lock_path} if it died.") from None
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                                     "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def init_workspace(root: str | Path, remote: str | None = None) -> Workspace:
    """Make ``root`` a workspace: git repo, DVC initialised, a default remote, ignores."""
    ws = Workspace.at(root)
    ws.root.mkdir(parents=True, exist_ok=True)
    if not (ws.root / ".git").exists():
        git(ws, "init", "-q")
    if not (ws.root / ".dvc").is_dir():
        dvc(ws, "init", "-q")
        dvc(ws, "config", "core.analytics", "false")
    if remote or not _has_default_remote(ws):
        # a relative path is resolved from the workspace and stored relative to .dvc/config, so a
        # clone of the workspace elsewhere still finds its remote
        dvc(ws, "remote", "add", "--force", "--default", "storage", remote or DEFAULT_REMOTE_DIR)
    ignore = ws.root / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    for entry in ("/artifacts", f"/{DEFAULT_REMOTE_DIR}", "/.pretextflow.lock*", "/.pretextflow-tmp", "/.pretextflow-cache"):
        if entry not in lines:
            lines.append(entry)
    ignore.write_text("\n".join(lines) + "\n")
    return ws


def configure_s3_remote(ws: Workspace, url: str, endpoint_url: str | None = None, name: str = "storage",
                        default: bool = True) -> None:
    """Make ``url`` (``s3://bucket/path``) a DVC remote of ``ws`` (the default one unless told
    otherwise), on AWS or on any S3-compatible server at ``endpoint_url`` (MinIO, Ceph, moto...).

    Only the URL and the endpoint go into ``.dvc/config``; re-adding the remote drops any keys an
    earlier config held. Credentials are never written: DVC (boto) reads them from the environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, or ``AWS_PROFILE`` and
    ``~/.aws/credentials``), or from ``dvc remote modify --local`` (the untracked ``.dvc/config.local``)."""
    if not url.startswith("s3://"):
        raise VersioningError(f"not an S3 remote URL: {redact(url)!r} (expected s3://bucket/path)")
    for what, value in (("remote URL", url), ("endpoint URL", endpoint_url or "")):
        if has_url_credentials(value):
            raise VersioningError(f"the {what} {redact(value)!r} holds credentials; remove them and set "
                                  f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment instead")
    dvc(ws, "remote", "add", "--force", *(["--default"] if default else []), name, url)
    if endpoint_url:
        dvc(ws, "remote", "modify", name, "endpointurl", endpoint_url)


def _has_default_remote(ws: Workspace) -> bool:
    try:
        return bool(dvc(ws, "remote", "default").strip())
    except VersioningError:
        return False


def track_and_push(ws: Workspace, push: bool = True, timing: dict[str, float] | None = None) -> str:
    """``dvc add data`` then ``dvc push``; returns the new data version (caller holds the lock).
    ``timing`` (when given) gets the seconds each took: ``dvc_add_s``, ``dvc_push_s``."""
    timing = {} if timing is None else timing
    t0 = time.perf_counter()
    # --no-relink: data/ already holds exactly the bytes DVC caches, so re-creating every file from
    # the cache (DVC's default, a full copy with cache.type copy: 5 of 9 s at 200k images) buys nothing
    dvc(ws, "add", "-q", "--no-relink", "data")
    timing["dvc_add_s"] = round(time.perf_counter() - t0, 3)
    if push:
        try:
            t0 = time.perf_counter()
            dvc(ws, "push")  # not -q: a failed push must say why (e.g. NoSuchBucket)
            timing["dvc_push_s"] = round(time.perf_counter() - t0, 3)
        except VersioningError as exc:
            if "no remote specified" not in str(exc):
                raise
            raise VersioningError(f"dvc push failed: the workspace {ws.root} has no default DVC remote, so the data "
                                  f"cannot be stored anywhere but here. Add one with `dvc remote add -d storage "
                                  f"PATH_OR_URL` (or `pretextflow init --remote URL`), or ingest with --no-push.") from None
    return data_version(ws)


def read_data_dvc(ws: Workspace) -> dict:
    if not ws.data_dvc.exists():
        raise VersioningError(f"{ws.data_dvc} does not exist: no dataset has been ingested in this workspace. "
                              f"Run `pretextflow ingest SOURCE --format FORMAT --name NAME`.")
    return yaml.safe_load(ws.data_dvc.read_text())


def data_version(ws: Workspace) -> str:
    """The DVC md5 of ``data/`` (``<md5>.dir``): the exact data version a run used."""
    outs = read_data_dvc(ws).get("outs") or [{}]
    md5 = outs[0].get("md5")
    if not md5:
        raise VersioningError(f"{ws.data_dvc} has no md5; re-run `dvc add data`.")
    return md5


def git_commit(path: Path) -> dict:
    """The git commit and dirty flag of the checkout holding ``path``, or nulls outside git."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True,
                             text=True, check=True).stdout.strip()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=top,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (subprocess.CalledProcessError, FileNotFoundError, NotADirectoryError):
        return {"commit": None, "dirty": None}


def default_remote_url(ws: Workspace) -> str | None:
    """The workspace's default DVC remote as an absolute URL (a local remote resolved against
    ``.dvc/``, where DVC resolves it), credentials redacted; None when there is no remote."""
    from pretextflow.core.data.versioning import dvc

    try:
        name = dvc(ws, "remote", "default").strip()
        # `dvc config`, not `dvc remote list`: the latter wraps long lines to the terminal's width
        url = dvc(ws, "config", f"remote.{name}.url").strip()
    except VersioningError:
        return None
    if not url:
        return None
    if "://" not in url and not url.startswith("/"):
        url = str((ws.root / ".dvc" / url).resolve())
    return redact(url)
