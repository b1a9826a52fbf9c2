"""Never run code it was not asked to; never show a secret.

- No unsafe loader in the source tree (a scan of its syntax), and a pickle in the data or the store
  is refused, never executed.
- Plugins come only from the built-ins and installed entry points: a config value naming a module
  is an unknown plugin, and nothing is imported.
- Archive sources reject members that would land outside the target folder; a symlink in an image
  folder that leads outside the source is refused and not read.
- Credentials (storage options, a URL's user:password) never appear in a manifest, a report, the
  logs, the command's output or an error message."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO
from .test_bad_input import image_folder, png, prefect_logs_to_current_stderr

SCANNED = ("core", "plugins", "flows", "pretextflow")


# -- unsafe loaders ------------------------------------------------------------------------------
def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Loader calls that can execute code from the data they read."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            bad = [
                n
                for n in names
                if n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve")
            ]
            if bad:
                found.append(f"{filename}:{node.lineno}: imports {bad[0]}")
            continue
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        dotted = ast.unparse(f)
        line = f"{filename}:{node.lineno}: {dotted}(...)"
        if dotted in (
            "eval",
            "exec",
            "__import__",
            "pydoc.locate",
            "pkgutil.resolve_name",
            "yaml.unsafe_load",
            "yaml.full_load",
            "yaml.load_all",
            "np.lib.format.read_array",
        ):
            found.append(line)
        elif dotted == "torch.jit.load" and filename.replace(os.sep, "/") != "core/export/loading.py":
            found.append(line + " (TorchScript runs code: only core/export/loading.py, behind trust_torchscript)")
        elif dotted == "torch.load" and not _const(_kw(node, "weights_only"), True):
            found.append(line + " without weights_only=True")
        elif dotted in ("np.load", "numpy.load") and not _const(_kw(node, "allow_pickle"), False):
            found.append(line + " without allow_pickle=False")
        elif dotted == "yaml.load" and ast.unparse(_kw(node, "Loader") or ast.Constant(None)) not in (
            "yaml.SafeLoader",
            "yaml.CSafeLoader",
            "SafeLoader",
            "CSafeLoader",
        ):
            found.append(line + " without a SafeLoader")
        elif (
            isinstance(f, ast.Attribute)
            and f.attr in ("import_module",)
            and filename.replace(os.sep, "/") not in ("core/registry/registry.py",)
        ):
            found.append(line + " (plugins are imported only by core/registry/registry.py, from a fixed list)")
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = (
        "import pickle\nimport torch, numpy as np, yaml\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p)\nnp.load(p, allow_pickle=True)\nyaml.load(t)\nyaml.load(t, Loader=yaml.Loader)\neval(s)\n"
        "importlib.import_module(name)\n"
    )
    flagged = {int(x.split(":")[1]) for x in unsafe_calls(bad)}
    assert flagged == {1, 3, 4, 5, 6, 7, 8, 9, 10}  # every line but the plain imports of line 2
    good = (
        "import torch, numpy as np, yaml\ntorch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\n"
        "yaml.safe_load(t)\nyaml.load(t, Loader=yaml.SafeLoader)\n"
    )
    assert unsafe_calls(good) == []


def test_no_unsafe_loaders_in_the_source_tree():
    files = [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 40
    problems = [x for p in files for x in unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    assert problems == [], "\n".join(problems)


class _Canary:
    """Unpickling this creates a file: proof that a loader executed code from the data."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_array_in_the_dataset_folder_is_refused_not_executed(digits_workspace, tmp_path):
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(digits_workspace.data_dir / "digits", data / "digits")
    control = tmp_path / "control-executed"
    np.save(tmp_path / "control.npy", np.array([_Canary(str(control))], dtype=object), allow_pickle=True)
    np.load(tmp_path / "control.npy", allow_pickle=True)  # the control: an unsafe load does run the code
    assert control.exists()
    marker = tmp_path / "executed"
    labels = data / "digits" / "shards" / "train-00000.labels.npy"  # a shard's labels, replaced by a pickle
    np.save(labels, np.array([_Canary(str(marker))], dtype=object), allow_pickle=True)

    with pytest.raises(DataError, match=r"shard train-00000 \(labels\) is not a plain numeric array.*Re-ingest"):
        load_dataset(str(data), "digits")
    assert not marker.exists()
    for name in ("train_images", "train_labels", "test_images", "test_labels"):  # a schema-1 dataset likewise
        np.save(data / "digits" / f"{name}.npy", np.zeros((2, 1, 8, 8) if "images" in name else 2, np.uint8))
    np.save(data / "digits" / "train_labels.npy", np.array([_Canary(str(marker))], dtype=object), allow_pickle=True)
    meta = json.loads((data / "digits" / "meta.json").read_text())
    (data / "digits" / "meta.json").write_text(json.dumps({**meta, "schema_version": 1}))
    with pytest.raises(DataError, match=r"train_labels\.npy is not a plain numeric array.*Re-ingest"):
        load_dataset(str(data), "digits")
    assert not marker.exists()


def test_a_pickle_in_place_of_a_checkpoint_is_refused_not_executed(tmp_path):
    import torch

    from pretextflow.core.errors import StageInputError
    from pretextflow.core.training import checkpoint

    control = tmp_path / "control-executed"
    buf = io.BytesIO()
    torch.save({"model": _Canary(str(control))}, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)  # the control: unpickling runs the code
    assert control.exists()
    marker = tmp_path / "executed"
    buf = io.BytesIO()
    torch.save({"model": _Canary(str(marker))}, buf)  # what a tampered store could hold
    with pytest.raises(StageInputError, match="checkpoint in the artifact store is corrupt"):
        checkpoint.decode(buf.getvalue())
    assert not marker.exists()
    good = checkpoint.encode({"model": {"w": torch.ones(2)}}, {"epoch": 1})
    groups, info = checkpoint.decode(good)
    assert torch.equal(groups["model"]["w"], torch.ones(2)) and info == {"epoch": 1}


def test_pickled_features_in_the_store_are_refused(tmp_path):
    from pretextflow.core.errors import StageInputError
    from pretextflow.core.evaluation.features import _from_npy

    marker = tmp_path / "executed"
    buf = io.BytesIO()
    np.save(buf, np.array([_Canary(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(StageInputError, match="not a plain numeric array"):
        _from_npy(buf.getvalue())
    assert not marker.exists()


# -- plugins come from the registry only ---------------------------------------------------------
CANARY = "pretextflow_canary_evil"


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A module on sys.path that leaves a file behind when it is imported."""
    (tmp_path / f"{CANARY}.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_suffix('.imported').write_text('imported')\n"
        "def system(*a):\n    raise SystemExit('executed')\nclass Task:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return tmp_path / f"{CANARY}.imported"


@pytest.mark.parametrize(
    "override, unknown",
    [
        (f"pretext.name={CANARY}:system", "unknown pretext task"),
        (f"pretext.name={CANARY}.Task", "unknown pretext task"),
        ("pretext.name=os:system", "unknown pretext task"),
        (f"backbone.name={CANARY}.Task", "unknown backbone"),
        ("backbone.name=timm/os.system", "timm has no model"),
        (f"data.format={CANARY}", "unknown dataset format"),
    ],
)
def test_a_config_value_naming_a_module_is_an_unknown_plugin_and_imports_nothing(canary, override, unknown):
    from pretextflow.core.config import load_config
    from pretextflow.core.errors import PluginError
    from pretextflow.core.registry.preflight import check_plugins
    from pretextflow.core.registry.registry import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, get_registry
    from pretextflow.core.training.model import build_backbone

    registry = get_registry()
    cfg = load_config(REPO / "configs" / "digits_smoke.yaml", [override, "pretext.params={}"])
    with pytest.raises(PluginError, match=unknown):
        check_plugins(cfg, registry)
        build_backbone(cfg, {"image_shape": [1, 8, 8], "mean": [0.5], "std": [0.2]}, registry)
    assert CANARY not in sys.modules and not canary.exists()
    # what the registry holds came from the built-ins and the installed entry points, nothing else
    from importlib import metadata

    allowed = set(BUILTIN_PLUGINS) | {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {i.plugin for i in registry.info} <= allowed


def test_the_command_line_imports_nothing_a_config_names(canary, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretextflow",
            "run",
            str(REPO / "configs" / "digits_smoke.yaml"),
            "--set",
            f"pretext.name={CANARY}:system",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and f"unknown pretext task '{CANARY}:system'" in proc.stderr, proc.stderr
    assert not canary.exists()


# -- archives and symlinks -----------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _read_imagefolder(source: str, **opts):
    from pretextflow.core.data.decode import read_all
    from pretextflow.core.data.sources import local_source
    from pretextflow.core.registry.registry import get_registry

    fmt = get_registry().dataset_format("imagefolder")
    with local_source(source, {}) as (src, options):
        return read_all(fmt(), src, fmt.Options(**opts), options)


IMG = png(np.full((8, 8), 9, np.uint8))


@pytest.mark.parametrize(
    "members, reason",
    [
        ([(_member("pets/a/0.png"), IMG), (_member("../evil.png"), IMG)], "'..' component"),
        ([(_member("pets/a/0.png"), IMG), (_member("pets/../../evil.png"), IMG)], "'..' component"),
        ([(_member("pets/a/0.png"), IMG), (_member("/tmp/evil.png"), IMG)], "absolute path"),
        (
            [(_member("pets/a/0.png"), IMG), (_member("pets/a/passwd.png", tarfile.SYMTYPE, "/etc/passwd"), None)],
            "outside the archive",
        ),
        (
            [(_member("pets/a/0.png"), IMG), (_member("pets/a/up.png", tarfile.SYMTYPE, "../../../etc/passwd"), None)],
            "outside the archive",
        ),
        (
            [(_member("pets/a/0.png"), IMG), (_member("pets/a/hard.png", tarfile.LNKTYPE, "../outside.png"), None)],
            "outside the archive",
        ),
        ([(_member("pets/a/0.png"), IMG), (_member("pets/a/dev.png", tarfile.CHRTYPE), None)], "special file"),
        ([(_member("pets/a/0.png"), IMG), (_member("pets/a/fifo.png", tarfile.FIFOTYPE), None)], "special file"),
    ],
)
def test_malicious_tar_members_are_refused_before_anything_is_written(tmp_path, members, reason):
    import tempfile

    from pretextflow.core.errors import DataError

    (tmp_path / "in").mkdir()
    archive = _tar(tmp_path / "in" / "pets.tar.gz", members)
    before = set(Path(tempfile.gettempdir()).glob("pretextflow-archive-*"))
    with pytest.raises(DataError, match=reason):
        _read_imagefolder(archive)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "in" / "evil.png").exists()
    assert set(Path(tempfile.gettempdir()).glob("pretextflow-archive-*")) == before  # the extraction folder is gone


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil.png", "'..' component"),
        ("/tmp/evil.png", "absolute path"),
        ("pets\\..\\..\\evil.png", "'..' component"),
    ],
)
def test_malicious_zip_members_are_refused(tmp_path, name, reason):
    from pretextflow.core.errors import DataError

    path = tmp_path / "in" / "pets.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pets/a/0.png", IMG)
        zf.writestr(zipfile.ZipInfo(name), IMG)
    with pytest.raises(DataError, match=reason):
        _read_imagefolder(str(path))
    assert not (tmp_path / "evil.png").exists()


def test_a_zip_symlink_is_refused(tmp_path):
    from pretextflow.core.errors import DataError

    path = tmp_path / "pets.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pets/a/0.png", IMG)
        link = zipfile.ZipInfo("pets/a/link.png")
        link.external_attr = 0o120777 << 16  # S_IFLNK: what `zip --symlinks` writes
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="is a symlink"):
        _read_imagefolder(str(path))


def test_archives_ingest_like_the_folder_they_hold(tmp_path):
    """A safe archive (zip or tar.gz, with a top folder and an in-archive symlink) gives exactly the
    dataset of the folder itself; the temporary extraction is removed afterwards."""
    import tempfile

    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"), count=5, seed=3)
    direct = _read_imagefolder(str(folder))
    with zipfile.ZipFile(tmp_path / "pets.zip", "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, f"pets/{p.relative_to(folder)}")
    shutil.make_archive(str(tmp_path / "pets"), "gztar", tmp_path, "pets")
    before = set(Path(tempfile.gettempdir()).glob("pretextflow-archive-*"))
    for archive in ("pets.zip", "pets.tar.gz"):
        got = _read_imagefolder(str(tmp_path / archive))
        for key in ("train_images", "train_labels", "test_images", "test_labels"):
            np.testing.assert_array_equal(getattr(got, key), getattr(direct, key))
        assert got.class_names == direct.class_names and got.source_files == direct.source_files
    assert set(Path(tempfile.gettempdir()).glob("pretextflow-archive-*")) == before

    # a symlink inside the archive that stays inside is fine
    inside = _tar(
        tmp_path / "inside.tar.gz",
        [
            (_member("pets/cat/0.png"), IMG),
            (_member("pets/dog/0.png"), IMG),
            (_member("pets/dog/1.png", tarfile.SYMTYPE, "0.png"), None),
        ],
    )
    got = _read_imagefolder(inside, test_fraction=0.0)  # all in train: a split of one class is refused
    assert len(got.train_images) == 3 and len(got.test_images) == 0


def test_an_idx_archive_is_read_from_its_folder(tmp_path):
    from pretextflow.core.data.sources import local_source
    from pretextflow.core.registry.registry import get_registry

    from .test_data import write_idx_source

    (tmp_path / "mnist").mkdir()
    arrays = write_idx_source(str(tmp_path / "mnist"))
    shutil.make_archive(str(tmp_path / "mnist"), "zip", tmp_path, "mnist")
    from pretextflow.core.data.decode import read_all

    fmt = get_registry().dataset_format("idx")
    with local_source(str(tmp_path / "mnist.zip"), {}) as (src, options):
        got = read_all(fmt(), src, fmt.Options(), options)
    np.testing.assert_array_equal(got.train_images[:, 0], arrays["train_images"])


def test_a_remote_archive_is_streamed_to_disk_not_memory(tmp_path, monkeypatch):
    """A non-local archive (memory:// here, s3:// or https:// in use) is copied in 1 MiB chunks to an
    unnamed temporary file and extracted from there: never one read of the whole archive."""
    import fsspec

    from pretextflow.core.data import sources
    from pretextflow.core.errors import DataError

    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"), count=5, seed=3)
    shutil.make_archive(str(tmp_path / "pets"), "gztar", tmp_path, "pets")
    uri = f"memory://archives-{uuid.uuid4().hex[:8]}/pets.tar.gz"
    fsspec.filesystem("memory").pipe_file(uri.split("://", 1)[1], (tmp_path / "pets.tar.gz").read_bytes())
    reads = []
    monkeypatch.setattr(sources, "read_source_bytes", lambda *a, **k: reads.append(a) or b"")
    got = _read_imagefolder(uri)
    assert reads == []  # the whole-file reader was never used for the archive
    direct = _read_imagefolder(str(folder))
    np.testing.assert_array_equal(got.train_images, direct.train_images)
    with pytest.raises(DataError, match="no such archive"):
        _read_imagefolder(uri.replace("pets.tar.gz", "absent.tar.gz"))


def test_gzip_is_decompressed_with_a_bound(tmp_path):
    """A 200 KB gzip that expands to 200 MB is refused at the limit, quickly and without the memory;
    good, concatenated, truncated and trailing-garbage streams behave as gzip's own."""
    import gzip
    import time

    from pretextflow.core.data.sources import gunzip_bounded
    from pretextflow.core.errors import DataError

    data = os.urandom(100_000)
    assert gunzip_bounded(gzip.compress(data), "x", 10**6) == data
    assert gunzip_bounded(gzip.compress(data) + gzip.compress(b"abc"), "x", 10**6) == data + b"abc"
    assert gunzip_bounded(gzip.compress(data), "x", len(data)) == data  # exactly at the limit
    bomb = gzip.compress(b"\0" * (200 << 20), compresslevel=9)
    assert len(bomb) < 300_000
    t = time.perf_counter()
    with pytest.raises(DataError, match="decompresses to more than 10485760 bytes"):
        gunzip_bounded(bomb, "bomb.gz", 10 << 20)
    assert time.perf_counter() - t < 5
    for broken in (gzip.compress(data)[:-10], b"\x1f\x8b\x08 garbage", gzip.compress(data) + b"junk"):
        with pytest.raises(DataError, match="corrupt or truncated gzip"):
            gunzip_bounded(broken, "broken.gz", 10**6)


def test_a_symlink_out_of_an_image_folder_is_refused_and_not_read(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    from pretextflow.core.errors import DataError

    folder = image_folder(tmp_path / "pets")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.png").write_bytes(IMG)
    read: list[str] = []
    original = LocalFileSystem.cat_file
    monkeypatch.setattr(
        LocalFileSystem, "cat_file", lambda self, path, *a, **k: read.append(path) or original(self, path, *a, **k)
    )

    os.symlink(tmp_path / "private" / "secret.png", folder / "a" / "link.png")
    with pytest.raises(DataError, match=r"link\.png is a symlink to .*secret\.png, outside the source"):
        _read_imagefolder(str(folder))
    assert not any("secret" in p or "link" in p for p in read)

    (folder / "a" / "link.png").unlink()
    os.symlink(tmp_path / "private", folder / "c")  # a whole class folder leading outside
    with pytest.raises(DataError, match="outside the source"):
        _read_imagefolder(str(folder))
    (folder / "c").unlink()

    os.symlink(folder / "b" / "0.png", folder / "a" / "alias.png")  # inside the source: fine
    got = _read_imagefolder(str(folder))
    assert len(got.train_images) + len(got.test_images) == 9


# -- secrets -------------------------------------------------------------------------------------
def test_redact_masks_registered_storage_options_and_url_credentials():
    from pretextflow.core.security.redaction import redact, register_secrets

    token = f"tok-{uuid.uuid4().hex}"
    register_secrets({"anon": False, "client_kwargs": {"aws_session_token": token, "region_name": "eu-west-1"}})
    text = f"failed with {token} at https://alice:pw-{token[:6]}@host/x (region eu-west-1)"
    assert redact(text) == "failed with *** at https://***@host/x (region eu-west-1)"

    # an error carries no credential: not in its message, its repr, a traceback or a pickled copy
    import traceback

    from pretextflow.core.errors import StageInputError

    try:
        raise StageInputError(text)
    except StageInputError as exc:
        shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), str(pickle.loads(pickle.dumps(exc)))]
    for s in shown:
        assert token not in s and f"pw-{token[:6]}" not in s and "https://***@host/x" in s


@pytest.fixture
def secrets():
    return {k: f"{k}-{uuid.uuid4().hex}" for k in ("urlpass", "key", "secret", "token", "sourcepass", "stagepass")}


def test_secrets_never_reach_manifest_report_logs_or_errors(digits_workspace, secrets, tmp_path, capfd, caplog):
    import fsspec
    from typer.testing import CliRunner

    from pretextflow.cli import app

    prefect_logs_to_current_stderr()  # in-process CLI runs: Prefect's console follows the current stderr
    ws = tmp_path / "ws"
    shutil.copytree(digits_workspace.root, ws, symlinks=True)
    caplog.set_level("DEBUG")
    store = f"memory://alice:{secrets['urlpass']}@bucket-{uuid.uuid4().hex[:8]}/store"
    options = "{{key: {}, secret: {}, token: {}}}".format(secrets["key"], secrets["secret"], secrets["token"])
    common = ["--set", f"store.uri={store}", "--set", f"store.storage_options={options}", "-w", str(ws)]
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(REPO / "configs" / "digits_smoke.yaml"),
            *common,
            "--set",
            f"data.source=sklearn://bob:{secrets['sourcepass']}@digits",
            "--set",
            "train.epochs=1",
            "--set",
            "train.max_train_samples=256",
            "--set",
            "train.batch_size=64",
            "--set",
            "probe.label_fractions=[1.0]",
            "--set",
            "probe.baselines=[pixels]",
            "--set",
            "probe.linear_max_iter=20",
        ],
    )
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)

    fs = fsspec.filesystem("memory")
    run_dir = next(p for p in fs.find(store.split("://", 1)[1]) if p.endswith("manifest.json")).rsplit("/", 1)[0]
    files = {name: fs.cat_file(f"{run_dir}/{name}").decode() for name in ("manifest.json", "report.md", "report.html")}
    manifest = json.loads(files["manifest.json"])
    assert manifest["config"]["store"]["storage_options"] == {"key": "***", "secret": "***", "token": "***"}
    assert manifest["artifacts"]["pretrain"]["uri"].startswith("memory://***@bucket-")

    # a stage that fails with the store in its message (no frozen model in a fresh store)
    failing = CliRunner().invoke(
        app,
        [
            "probe",
            str(REPO / "configs" / "digits_smoke.yaml"),
            *common[:2],
            "--set",
            f"store.uri=memory://carol:{secrets['stagepass']}@empty/store",
            *common[2:],
        ],
    )
    assert failing.exit_code == 2 and "probe needs the frozen backbone" in failing.stderr, failing.stderr

    captured = capfd.readouterr()
    texts = {
        **files,
        "run stdout": result.stdout,
        "run stderr": result.stderr,
        "probe stderr": failing.stderr,
        "console": captured.out + captured.err,
        "log records": caplog.text,
    }
    assert "***" in failing.stderr
    # Prefect's database (flow-run parameters, logs, artifacts) under PREFECT_HOME: references only
    prefect_files = [p for p in Path(os.environ["PREFECT_HOME"]).rglob("*") if p.is_file()]
    assert any(p.name.startswith("prefect.db") for p in prefect_files), prefect_files
    texts["Prefect's database"] = b"".join(p.read_bytes() for p in prefect_files).decode("latin-1")
    for where, text in texts.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} appears in {where}"
    assert "${env:PRETEXTFLOW_SECRET_" in texts["Prefect's database"]  # the flow parameters hold references


def test_an_unreachable_source_with_credentials_is_reported_without_them(secrets, workspace):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretextflow",
            "ingest",
            f"http://dave:{secrets['sourcepass']}@127.0.0.1:9/fmnist",
            "--format",
            "idx",
            "--name",
            "x",
            "-w",
            str(workspace.root),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2 and "cannot reach the source" in proc.stderr, proc.stderr
    assert secrets["sourcepass"] not in proc.stdout + proc.stderr and "http://***@127.0.0.1:9" in proc.stderr


# -- credentials travel by reference (${env:NAME}) -----------------------------------------------
def test_config_credentials_resolve_from_the_environment_and_serialise_as_references(monkeypatch, secrets):
    from pretextflow.core.config import load_config
    from pretextflow.core.errors import ConfigError

    monkeypatch.setenv("PF_TEST_USERINFO", f"alice:{secrets['urlpass']}")
    monkeypatch.setenv("PF_TEST_KEY", secrets["key"])
    cfg = load_config(
        REPO / "configs" / "digits_smoke.yaml",
        [
            "store.uri=s3://${env:PF_TEST_USERINFO}@bucket/store",
            "store.storage_options={{key: '${{env:PF_TEST_KEY}}', secret: {}, client_kwargs: {{aws_session_token: {}}}, "
            "anon: false}}".format(secrets["secret"], secrets["token"]),
            f"data.source=https://bob:{secrets['sourcepass']}@host/fmnist",
        ],
    )
    # the model holds the values: the stages use them
    assert cfg.store.uri == f"s3://alice:{secrets['urlpass']}@bucket/store"
    assert cfg.store.storage_options["key"] == secrets["key"]
    assert cfg.store.storage_options["client_kwargs"]["aws_session_token"] == secrets["token"]
    # a serialised config (Prefect flow parameters, rank payloads, sweep points) holds references only
    dumped = cfg.model_dump(mode="json")
    text = json.dumps(dumped)
    for name, secret in secrets.items():
        assert secret not in text, name
    assert dumped["store"]["uri"] == "s3://${env:PF_TEST_USERINFO}@bucket/store"  # as the user wrote it
    assert dumped["store"]["storage_options"]["key"] == "${env:PF_TEST_KEY}"
    assert dumped["store"]["storage_options"]["anon"] is False
    generated = dumped["store"]["storage_options"]["secret"]
    assert generated.startswith("${env:PRETEXTFLOW_SECRET_")
    assert os.environ[generated[6:-1]] == secrets["secret"]  # children inherit it
    # ...and validates back to the same values, and to the same serialisation
    again = load_config(raw=dumped)
    assert again.store == cfg.store and again.data.source == cfg.data.source
    assert again.model_dump(mode="json") == dumped

    monkeypatch.delenv("PF_TEST_KEY")
    with pytest.raises(ConfigError) as err:
        load_config(raw=dumped)
    assert "store.storage_options" in str(err.value) and "PF_TEST_KEY, which is not set" in str(err.value)
    assert "Export PF_TEST_KEY" in str(err.value)


def test_an_unset_credential_reference_is_a_clear_cli_error(workspace):
    env = {k: v for k, v in os.environ.items() if k != "PF_TEST_UNSET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretextflow",
            "run",
            str(REPO / "configs" / "digits_smoke.yaml"),
            "--set",
            "store.uri=memory://${env:PF_TEST_UNSET}@bucket/store",
            "-w",
            str(workspace.root),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "store.uri" in proc.stderr and "PF_TEST_UNSET, which is not set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_manifest_keeps_user_references_and_rerun_resolves_them(workspace, monkeypatch, secrets, tmp_path):
    from typer.testing import CliRunner

    from pretextflow.cli import app

    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PF_TEST_USERINFO", f"alice:{secrets['urlpass']}")
    monkeypatch.setenv("PF_TEST_TOKEN", secrets["token"])
    ws = workspace.root
    store = "memory://${env:PF_TEST_USERINFO}@" + bucket + "/store"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(REPO / "configs" / "digits_smoke.yaml"),
            "-w",
            str(ws),
            "--set",
            f"store.uri={store}",
            "--set",
            "data.source=sklearn:digits",
            "--set",
            "data.format=sklearn-digits",
            "--set",
            "store.storage_options={token: '${env:PF_TEST_TOKEN}'}",
            "--set",
            "train.epochs=1",
            "--set",
            "train.max_train_samples=256",
            "--set",
            "train.batch_size=64",
            "--set",
            "probe.label_fractions=[1.0]",
            "--set",
            "probe.baselines=[]",
            "--set",
            "probe.linear_max_iter=20",
        ],
    )
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    import fsspec

    fs = fsspec.filesystem("memory")
    manifest_path = next(
        p for p in fs.find(f"/alice:{secrets['urlpass']}@{bucket}/store") if p.endswith("manifest.json")
    )
    manifest = json.loads(fs.cat_file(manifest_path))
    assert manifest["config"]["store"]["uri"] == store, manifest
    assert manifest["dvc_remote"], manifest
    assert manifest["config"]["store"]["storage_options"] == {"token": "${env:PF_TEST_TOKEN}"}
    assert manifest["artifacts"]["pretrain"]["uri"].startswith(store + "/pretrain/")
    assert secrets["urlpass"] not in json.dumps(manifest) and secrets["token"] not in json.dumps(manifest)

    # the recorded run folder, references and all, is what `rerun` takes; it finds the same store
    run_folder = store + "/runs/" + manifest["run_id"]
    rerun = CliRunner().invoke(app, ["rerun", run_folder, "-w", str(tmp_path / "rerun")])
    assert rerun.exit_code == 0, (rerun.stdout, rerun.stderr, rerun.exception)
    assert "DIFFERENT" not in rerun.stdout and secrets["urlpass"] not in rerun.stdout + rerun.stderr


def test_rerun_of_a_store_with_literal_credentials_takes_them_from_the_run_folder_named():
    from pretextflow.core.errors import StageInputError
    from pretextflow.core.runs.rerun import store_root

    manifest = {"artifacts": {"pretrain": {"uri": "s3://***@bucket/store/pretrain/abc"}}}
    assert store_root(manifest, "s3://alice:pw-123456@bucket/store/runs/r1") == "s3://alice:pw-123456@bucket/store"
    assert (
        store_root(manifest, "s3://alice:pw-123456@bucket/store/runs/r1/manifest.json")
        == "s3://alice:pw-123456@bucket/store"
    )
    for ref in ("runs/r1", "s3://alice:pw-123456@other/store/runs/r1"):  # no credentials / another store
        with pytest.raises(StageInputError, match="needs credentials, which the manifest does not record"):
            store_root(manifest, ref)
    plain = {"artifacts": {"pretrain": {"uri": "s3://bucket/store/pretrain/abc"}}}
    assert store_root(plain, None) == "s3://bucket/store"


def test_a_malformed_credential_override_is_not_echoed(secrets):
    from pretextflow.core.config import load_config
    from pretextflow.core.errors import ConfigError

    for override in (
        "store.storage_options={{key: ${{env:K}}, secret: {}".format(secrets["secret"]),
        "store.uri=[s3://alice:{}@bucket".format(secrets["urlpass"]),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(REPO / "configs" / "digits_smoke.yaml", [override])
        assert "is not valid YAML" in str(err.value) and override.split("=", 1)[0] + "=..." in str(err.value)
        assert secrets["secret"] not in str(err.value) and secrets["urlpass"] not in str(err.value)
