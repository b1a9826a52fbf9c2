"""Bad input, as a user meets it: one table of commands that must each be refused with a message
naming the problem and the fix, exit code 2, no traceback, and nothing lost (the workspace's
data/ and data.dvc byte for byte as before).

Commands that are refused before any flow starts (config and plugin checks, a manifest) run as real
subprocesses (`python -m pretextflow ...`). The ingest and stage commands run in-process through the
real Typer app: every such command starts a Prefect flow, and in a fresh process each would pay for
starting Prefect's temporary server (10-20 s); in one process it starts once."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO
from .test_data import idx_bytes, write_idx_source

pytestmark = pytest.mark.slow
DIGITS = str(REPO / "configs" / "digits_smoke.yaml")


# -- inputs ---------------------------------------------------------------------------------------
def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no pixels: what a decompression bomb or a
    huge image looks like to a reader before it decodes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_folder(root: Path, classes=("a", "b"), count=4, size=8, mode="L", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size, size) if mode == "L" else (size, size, 3)
            (root / c / f"{i}.png").write_bytes(png(rng.integers(0, 256, shape, dtype=np.uint8)))
    return root


def idx_source(root: Path, **arrays_override) -> Path:
    """An IDX source; ``arrays_override`` replaces whole arrays (e.g. train_labels)."""
    write_idx_source(str(root))
    names = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    for key, arr in arrays_override.items():
        (root / f"{names[key]}.gz").write_bytes(gzip.compress(idx_bytes(arr), mtime=0))
    return root


def zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as given (../, /abs)
    return path


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Every bad source of the table, built once."""
    root = tmp_path_factory.mktemp("bad-sources")
    ok = png(np.full((8, 8), 7, np.uint8))

    bad = idx_source(root / "idx-truncated")
    payload = gzip.decompress((bad / "train-images-idx3-ubyte.gz").read_bytes())
    (bad / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload[:-5]))
    (idx_source(root / "idx-gzip") / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (idx_source(root / "idx-header") / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08"))
    (idx_source(root / "idx-magic") / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    )
    idx_source(root / "idx-count", train_labels=np.zeros(7))
    idx_source(root / "idx-single-class", train_labels=np.zeros(20), test_labels=np.zeros(10))
    idx_source(root / "idx-empty", train_images=np.zeros((0, 6, 6)), train_labels=np.zeros(0))
    (root / "idx-none").mkdir()
    idx_source(root / "idx-ok")  # labels 0..2
    # 64 MiB of pixels in a 64 KiB gzip: over a 1 MB limit (the default is 2048 MB; the mechanism is the same)
    (idx_source(root / "idx-bomb") / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 1 << 20, 8, 8) + bytes(64 << 20), compresslevel=9)
    )
    big = idx_source(root / "idx-big-raw")
    (big / "train-images-idx3-ubyte.gz").unlink()
    with open(big / "train-images-idx3-ubyte", "wb") as f:
        f.truncate(3 << 20)  # an uncompressed file over the limit: refused before it is read whole

    (image_folder(root / "img-corrupt") / "a" / "bad.png").write_bytes(ok[: len(ok) // 2])
    (image_folder(root / "img-zero") / "a" / "zero.png").write_bytes(b"")
    (image_folder(root / "img-text") / "b" / "notes.png").write_bytes(b"these are my notes, not an image\n")
    (image_folder(root / "img-huge") / "a" / "huge.png").write_bytes(png_header(5000, 5000))
    (image_folder(root / "img-bomb") / "a" / "bomb.png").write_bytes(png_header(30000, 30000))
    with open(image_folder(root / "img-big-file") / "b" / "big.png", "wb") as f:
        f.truncate(300 * 2**20)  # a sparse 300 MiB file: refused by its size, before it is read
    (image_folder(root / "img-sizes") / "b" / "big.png").write_bytes(png(np.zeros((16, 16), np.uint8)))
    image_folder(root / "img-channels", classes=("a",))
    image_folder(root / "img-channels", classes=("b",), mode="RGB")
    image_folder(root / "img-single-class", classes=("cats",), count=8)
    (root / "img-empty" / "a").mkdir(parents=True)
    (root / "img-empty" / "a" / "readme.txt").write_text("no images here")
    (image_folder(root / "img-loose") / "loose.png").write_bytes(ok)
    (root / "outside").mkdir()
    (root / "outside" / "secret.png").write_bytes(ok)
    os.symlink(root / "outside" / "secret.png", image_folder(root / "img-symlink") / "a" / "link.png")

    members = {"pets/a/0.png": ok, "pets/b/0.png": ok}
    zip_with(root / "slip.zip", {**members, "../evil.png": ok})
    zip_with(root / "absolute.zip", {**members, "/tmp/pretextflow-evil.png": ok})
    with tarfile.open(root / "symlink.tar.gz", "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pets/a/passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    (root / "garbage.zip").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    image_folder(root / "img-good", count=3, seed=5)
    many = image_folder(root / "img-corrupt-among-10000", count=5000, seed=6)  # 10,000 images, one broken
    (many / "b" / "4321.png").write_bytes(ok[: len(ok) // 2])
    (root / "missing.csv").write_text("path,label\nimg-good/a/0.png,a\nimg-good/b/1.png,b\nnot/there.png,a\n")

    manifest = root / "future-run"
    manifest.mkdir()
    (manifest / "manifest.json").write_text(json.dumps({"schema_version": 99, "run_id": "from-the-future"}))
    return root


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time: Prefect's console handler is created once per
    process and would otherwise keep the stream of the first CliRunner invocation (closed after it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


def prefect_logs_to_current_stderr() -> None:
    import logging

    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.stream = handler.console.file = _CurrentStderr()


@pytest.fixture(scope="module", autouse=True)
def _prefect_console():
    prefect_logs_to_current_stderr()


# -- the workspace -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ws(digits_workspace, tmp_path_factory) -> Path:
    """This module's own copy of a workspace with digits ingested and pushed (the session's is shared)."""
    root = tmp_path_factory.mktemp("bad-input") / "ws"
    shutil.copytree(digits_workspace.root, root, symlinks=True)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """What must survive a failed command: data/ and data.dvc, byte for byte."""
    files = sorted(p for p in (root / "data").rglob("*") if p.is_file()) + [root / "data.dvc"]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# -- the table -----------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    args: list[str]  # {src}, {ws}, {digits} are filled in
    problem: str  # the message names the problem...
    fix: str  # ...and the fix
    in_process: bool = False  # runs a Prefect flow: through the app in this process (see the module doc)
    copy_ws: bool = False  # the case changes the workspace's set-up: give it its own copy
    prepare: list[list[str]] = field(default_factory=list)  # dvc commands run first in that copy
    truncate: str | None = None  # a file of that copy (relative to it) cut short first


def ingest(source: str, fmt: str, *options: str, name: str = "digits") -> list[str]:
    return [
        "ingest",
        source,
        "--format",
        fmt,
        "--name",
        name,
        "--workspace",
        "{ws}",
        *[x for o in options for x in ("-o", o)],
    ]


def run(*overrides: str, command: str = "run") -> list[str]:
    return [command, "{digits}", "-w", "{ws}", *[x for o in overrides for x in ("--set", o)]]


CASES = [
    # IDX files
    Case("idx-truncated", ingest("{src}/idx-truncated", "idx"), "truncated or corrupt", "Re-download", True),
    Case("idx-corrupt-gzip", ingest("{src}/idx-gzip", "idx"), "corrupt or truncated gzip", "Re-download", True),
    Case("idx-truncated-header", ingest("{src}/idx-header", "idx"), "truncated IDX header", "Re-download", True),
    Case("idx-bad-magic", ingest("{src}/idx-magic", "idx"), "not an IDX file", "Check the file name", True),
    Case(
        "idx-count-mismatch",
        ingest("{src}/idx-count", "idx"),
        "20 images but 7 labels",
        "Re-download the images and labels of the same dataset",
        True,
    ),
    Case(
        "idx-labels-out-of-range",
        ingest("{src}/idx-ok", "idx", "class_names=[a, b]"),
        "labels out of range: 2",
        "name every class",
        True,
    ),
    Case(
        "idx-single-class",
        ingest("{src}/idx-single-class", "idx"),
        "at least two classes",
        "Add images of another class",
        True,
    ),
    Case(
        "idx-empty-dataset",
        ingest("{src}/idx-empty", "idx"),
        "training split is empty",
        "Check that the source holds training images",
        True,
    ),
    Case(
        "idx-gzip-bomb",
        ingest("{src}/idx-bomb", "idx", "max_file_mb=1"),
        "decompresses to more than 1048576 bytes",
        "raise the limit (--option max_file_mb=2)",
        True,
    ),
    Case(
        "idx-file-too-large",
        ingest("{src}/idx-big-raw", "idx", "max_file_mb=1"),
        "larger than 1048576 bytes",
        "raise the limit",
        True,
    ),
    Case(
        "idx-missing-files",
        ingest("{src}/idx-none", "idx"),
        "no train-images-idx3-ubyte.gz",
        "An idx source is a folder holding",
        True,
    ),
    Case(
        "unreachable-source-uri",
        ingest("http://127.0.0.1:9/fashion-mnist", "idx"),
        "cannot reach the source",
        "Check the URL and your network",
        True,
    ),
    # image folders
    Case(
        "img-corrupt",
        ingest("{src}/img-corrupt", "imagefolder"),
        "bad.png: not a readable image",
        "Remove or replace it",
        True,
    ),
    Case(
        "img-zero-byte",
        ingest("{src}/img-zero", "imagefolder"),
        "zero.png: empty file (0 bytes)",
        "Remove it or replace it",
        True,
    ),
    Case(
        "img-not-an-image",
        ingest("{src}/img-text", "imagefolder"),
        "notes.png: not a readable image",
        "Remove or replace it",
        True,
    ),
    Case(
        "img-huge",
        ingest("{src}/img-huge", "imagefolder"),
        "huge.png: 5000x5000 pixels is more than the limit",
        "Downscale it first",
        True,
    ),
    Case(
        "img-decompression-bomb",
        ingest("{src}/img-bomb", "imagefolder"),
        "bomb.png: refused as a decompression bomb",
        "Downscale it first",
        True,
    ),
    Case(
        "img-file-too-large",
        ingest("{src}/img-big-file", "imagefolder"),
        "big.png: 314572800 bytes is more than",
        "Downscale it first",
        True,
    ),
    Case(
        "img-mixed-sizes",
        ingest("{src}/img-sizes", "imagefolder"),
        "differs from the first image's",
        "--option image_size=N",
        True,
    ),
    Case(
        "img-mixed-channels",
        ingest("{src}/img-channels", "imagefolder"),
        "mixes channel counts",
        "--option channels=3",
        True,
    ),
    Case(
        "img-single-class",
        ingest("{src}/img-single-class", "imagefolder"),
        "every labelled training image is class 'cats'",
        "Add images of another class",
        True,
    ),
    Case(
        "img-empty-dataset",
        ingest("{src}/img-empty", "imagefolder"),
        "no image files",
        "Point the source at the folder",
        True,
    ),
    Case(
        "img-loose-and-labelled",
        ingest("{src}/img-loose", "imagefolder"),
        "mixes images in class folders",
        "Put every image in a class folder",
        True,
    ),
    Case(
        "img-symlink-outside",
        ingest("{src}/img-symlink", "imagefolder"),
        "is a symlink to",
        "Copy the file into the source folder",
        True,
    ),
    Case(
        "zip-slip",
        ingest("{src}/slip.zip", "imagefolder"),
        "member '../evil.png' has a '..' component",
        "Re-create the archive",
        True,
    ),
    Case(
        "zip-absolute-path",
        ingest("{src}/absolute.zip", "imagefolder"),
        "has an absolute path",
        "Re-create the archive",
        True,
    ),
    Case(
        "tar-symlink-escape",
        ingest("{src}/symlink.tar.gz", "imagefolder"),
        "is a link to '/etc/passwd'",
        "Re-create the archive",
        True,
    ),
    Case(
        "corrupt-archive",
        ingest("{src}/garbage.zip", "imagefolder"),
        "not a readable zip or tar archive",
        "Re-download or re-create it",
        True,
    ),
    # names and options
    Case(
        "unknown-format",
        ingest("{src}/img-good", "parquet"),
        "unknown dataset format 'parquet'",
        "install the package that provides it",
    ),
    Case(
        "format-option-invalid",
        ingest("{src}/img-good", "imagefolder", "image_size=-3"),
        "options.image_size",
        "greater than 0",
    ),
    Case(
        "format-option-unknown",
        ingest("{src}/img-good", "imagefolder", "colour=red"),
        "options.colour: unknown key",
        "Check the spelling",
    ),
    Case(
        "format-option-not-key-value",
        ingest("{src}/img-good", "imagefolder", "image_size"),
        "'image_size'",
        "expected key=value",
    ),
    Case(
        "dataset-name-invalid",
        ingest("{src}/img-good", "imagefolder", name="../escape"),
        "data.name",
        "use 1-64 lowercase letters",
    ),
    Case(
        "dataset-name-from-source-invalid",
        ["ingest", "{src}/" + "x" * 70, "--format", "imagefolder", "-w", "{ws}"],
        "dataset name 'xxxx",
        "use 1-64 lowercase letters",
    ),
    Case(
        "missing-dvc-remote",
        ingest("{src}/img-good", "imagefolder"),
        "dvc push failed",
        "dvc remote add",
        True,
        copy_ws=True,
        prepare=[["remote", "remove", "storage"]],
    ),
    # the config: before anything runs (real subprocesses)
    Case("cfg-negative-lr", run("train.lr=-1"), "train.lr", "greater than 0"),
    Case("cfg-batch-zero", run("train.batch_size=0"), "train.batch_size", "greater than or equal to 2"),
    Case(
        "cfg-fraction-above-one",
        run("probe.label_fractions=[0.1, 1.5]"),
        "probe.label_fractions",
        "every fraction must be in (0, 1]",
    ),
    Case("cfg-val-fraction-above-one", run("probe.val_fraction=1.5"), "probe.val_fraction", "less than 1"),
    Case("cfg-unknown-key", run("train.optimiser=sgd"), "train.optimiser: unknown key", "Check the spelling"),
    Case("cfg-wrong-type", run("train.epochs=many"), "train.epochs", "valid integer"),
    Case("cfg-infinite-lr", run("train.lr=.inf"), "train.lr", "finite number"),
    Case(
        "cfg-missing-file",
        ["run", "{src}/no-such-config.yaml", "-w", "{ws}"],
        "cannot read the config",
        "Check the path",
    ),
    Case(
        "unknown-pretext", run("pretext.name=rotatoin"), "unknown pretext task 'rotatoin'", "Run `pretextflow plugins`"
    ),
    Case(
        "unknown-backbone",
        run("backbone.name=resnet50"),
        "unknown backbone 'resnet50'",
        "install the package that provides it",
    ),
    Case(
        "pretext-params-invalid", run("pretext.params.temperature=-1"), "pretext.params.temperature", "greater than 0"
    ),
    Case(
        "pretext-backbone-mismatch",
        run("pretext.name=mae", "pretext.params={}", command="pretrain"),
        "needs a backbone that exposes patch tokens",
        "Choose a ViT backbone",
        True,
    ),
    Case(
        "timm-weights-kwarg",
        run("backbone.name=timm/resnet18", "backbone.kwargs={checkpoint_path: /etc/passwd}", command="pretrain"),
        "would load weights",
        "Remove them",
        True,
    ),
    Case(
        "img-corrupt-among-10000",
        ingest("{src}/img-corrupt-among-10000", "imagefolder", name="many"),
        "b/4321.png: not a readable image",
        "Remove or replace it",
        True,
    ),
    Case(
        "csv-missing-file",
        ingest("{src}/missing.csv", "csv", name="table"),
        "row 3: not/there.png does not exist",
        "Fix the path in the table",
        True,
    ),
    Case(
        "shard-truncated",
        run(command="pretrain"),
        "train-00000 (images) is not a plain numeric array or is truncated",
        "dvc checkout",
        True,
        copy_ws=True,
        truncate="data/digits/shards/train-00000.images.npy",
    ),
    Case(
        "manifest-newer-schema", ["rerun", "{src}/future-run"], "written by a newer pretextflow", "Upgrade pretextflow"
    ),
]


def _fill(args: list[str], **values: str) -> list[str]:
    out = []
    for a in args:  # not str.format: YAML values hold braces
        for k, v in values.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_clearly_and_nothing_is_lost(case, src, ws, tmp_path, capfd):
    from pretextflow.core.data.versioning import dvc
    from pretextflow.core.workspace import Workspace

    root = ws
    if case.copy_ws:
        root = tmp_path / "ws"
        shutil.copytree(ws, root, symlinks=True)
        for command in case.prepare:
            dvc(Workspace.at(root), *command)
        if case.truncate:
            damaged = root / case.truncate
            damaged.unlink()  # the workspace copy may share the DVC cache's file: replace, never write into it
            damaged.write_bytes((ws / case.truncate).read_bytes()[:-64])
    before = snapshot(root)
    args = _fill(case.args, src=str(src), ws=str(root), digits=DIGITS)

    if case.in_process:
        from typer.testing import CliRunner

        from pretextflow.cli import app

        result = CliRunner().invoke(app, args)
        captured = capfd.readouterr()
        # an exception that escaped the CLI is a bug, whatever its message
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        code, out, err = result.exit_code, result.stdout + captured.out, result.stderr + captured.err
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "pretextflow", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"},
            timeout=120,
        )
        code, out, err = proc.returncode, proc.stdout, proc.stderr

    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err, err
    message = next((line for line in err.splitlines() if line.startswith("error: ")), "")
    error_text = err[err.index("error: ") :] if "error: " in err else ""
    assert message, f"no 'error: ' line on stderr:\n{err}"
    assert case.problem in error_text, f"the message does not name the problem ({case.problem!r}):\n{error_text}"
    assert case.fix in error_text, f"the message does not name the fix ({case.fix!r}):\n{error_text}"
    assert snapshot(root) == before, "data/ or data.dvc changed after a refused command"
    assert not (src.parent / "evil.png").exists() and not Path("/tmp/pretextflow-evil.png").exists()


def test_the_table_has_the_cases_the_issue_lists():
    """At least 25 cases, among them every kind the issue names."""
    ids = {c.id for c in CASES}
    assert len(CASES) >= 25 and len(ids) == len(CASES)
    for needed in (
        "idx-truncated",
        "idx-corrupt-gzip",
        "img-corrupt",
        "img-zero-byte",
        "img-not-an-image",
        "img-huge",
        "img-mixed-sizes",
        "img-mixed-channels",
        "idx-count-mismatch",
        "idx-labels-out-of-range",
        "img-single-class",
        "idx-empty-dataset",
        "unknown-format",
        "unknown-pretext",
        "unknown-backbone",
        "pretext-backbone-mismatch",
        "cfg-negative-lr",
        "cfg-batch-zero",
        "cfg-fraction-above-one",
        "cfg-unknown-key",
        "cfg-wrong-type",
        "manifest-newer-schema",
        "missing-dvc-remote",
        "unreachable-source-uri",
    ):
        assert needed in ids, needed
