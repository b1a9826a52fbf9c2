"""S3-compatible remotes: DVC's S3 remote and the fsspec artifact store against a local S3 server
(moto's server mode on 127.0.0.1, started here and stopped after), with fake credentials that must
never be written to the workspace, a manifest or a log."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest

_MISSING = [m for m in ("moto", "boto3", "dvc_s3", "s3fs") if importlib.util.find_spec(m) is None]
if _MISSING:
    _why = f"S3 support not installed ({', '.join(_MISSING)} missing): pip install -c constraints.txt -e '.[test,s3]'"
    if os.environ.get("CI"):
        pytest.fail(_why + " (required in CI)", pytrace=False)
    pytest.skip(_why, allow_module_level=True)

from pretextflow.core.data.versioning import (  # noqa: E402 (after the skip above)
    configure_s3_remote,
    data_version,
    dvc,
    init_workspace,
    track_and_push,
    workspace_lock,
)
from pretextflow.core.errors import VersioningError  # noqa: E402
from pretextflow.core.security.redaction import redact  # noqa: E402
from pretextflow.core.store import ArtifactStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUCKET = "pretextflow-test"


class S3:
    def __init__(self, endpoint: str, key: str, secret: str):
        self.endpoint, self.key, self.secret = endpoint, key, secret


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 (free port) with one bucket; fake credentials in the
    environment (inherited by the DVC subprocesses) for this module only."""
    from moto.server import ThreadedMotoServer

    key = "AKIAPRETEXTFLOWTEST"
    secret = f"pretextflow-fake-secret-{uuid.uuid4().hex}"
    nowhere = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for var in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(nowhere))  # no ~/.aws profile leaks in
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))
        mp.setenv("NO_PROXY", no_proxy)
        mp.setenv("no_proxy", no_proxy)

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
            yield S3(endpoint, key, secret)
        finally:
            server.stop()
            import fsspec

            fsspec.AbstractFileSystem.clear_instance_cache()  # no s3fs instance outlives the server


def _file_md5s(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def s3_workspace(s3, tmp_path_factory):
    """A workspace whose default DVC remote is s3://BUCKET/dvc, with digits ingested and pushed."""
    from pretextflow.core.data.ingest import ingest

    ws = init_workspace(tmp_path_factory.mktemp("s3ws") / "ws")
    configure_s3_remote(ws, f"s3://{BUCKET}/dvc", endpoint_url=s3.endpoint)
    ingest(ws, "sklearn:digits", "sklearn-digits", "digits")  # dvc add + dvc push to S3
    return ws


def test_dvc_s3_remote_round_trip(s3, s3_workspace):
    import s3fs

    ws = s3_workspace
    assert dvc(ws, "remote", "default").strip() == "storage"
    version = data_version(ws)
    assert version.endswith(".dir")
    files = _file_md5s(ws.data_dir)
    assert files and all(name.startswith("digits/") for name in files)

    # the objects are in the bucket (content-addressed, DVC 3 layout: files/md5/ab/cdef...)
    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True)
    remote = {p.split(f"{BUCKET}/dvc/files/md5/", 1)[1].replace("/", "") for p in fs.find(f"{BUCKET}/dvc")}
    assert version.removesuffix(".dir") + ".dir" in remote
    assert set(files.values()) <= remote

    # lose everything local, then restore from S3
    shutil.rmtree(ws.data_dir)
    shutil.rmtree(ws.root / ".dvc" / "cache")
    assert not (ws.root / ".dvc-remote").exists()  # nothing could come from the local default remote
    with workspace_lock(ws, "test pull"):
        dvc(ws, "pull", "-q")
    assert _file_md5s(ws.data_dir) == files
    assert data_version(ws) == version
    with workspace_lock(ws, "test re-add"):
        assert track_and_push(ws) == version  # re-adding the restored data gives the same version


@pytest.mark.parametrize("options", ["endpoint_url", "client_kwargs"])
def test_artifact_store_on_s3(s3, options):
    storage_options = (
        {"endpoint_url": s3.endpoint} if options == "endpoint_url" else {"client_kwargs": {"endpoint_url": s3.endpoint}}
    )
    uri = f"s3://{BUCKET}/store-{options}"
    store = ArtifactStore(uri, {**storage_options, "skip_instance_cache": True})
    assert store.listdir("pretrain") == []
    assert not store.is_complete("pretrain", "k1")

    assert (
        store.write_bytes(b"\x00weights", "pretrain", "k1", "model.safetensors")
        == f"{uri}/pretrain/k1/model.safetensors"
    )
    store.write_json({"loss": [1.0, 0.5]}, "pretrain", "k1", "history.json")
    store.mark_complete("pretrain", "k1", {"seconds": 1})
    store.write_json({}, "pretrain", "k2", "history.json")  # incomplete: no marker

    again = ArtifactStore(uri, {**storage_options, "skip_instance_cache": True})  # a fresh client sees it all
    assert again.read_bytes("pretrain", "k1", "model.safetensors") == b"\x00weights"
    assert again.read_json("pretrain", "k1", "history.json") == {"loss": [1.0, 0.5]}
    assert again.is_complete("pretrain", "k1") and not again.is_complete("pretrain", "k2")
    assert again.listdir("pretrain") == ["k1", "k2"]
    assert again.listdir("pretrain", "k1") == ["_COMPLETE", "history.json", "model.safetensors"]  # no temp files


def test_credentials_never_written(s3, s3_workspace, caplog):
    ws = s3_workspace
    config = (ws.root / ".dvc" / "config").read_text()
    assert f"s3://{BUCKET}/dvc" in config and s3.endpoint in config  # the endpoint is in the config...
    for secret in (s3.secret, s3.key):  # ...the credentials are not
        for path in (ws.root / ".dvc" / "config", ws.data_dvc, ws.root / ".gitignore"):
            assert secret not in path.read_text(), path
        assert not (ws.root / ".dvc" / "config.local").exists()

    # a manifest built with credentials in store.storage_options masks them
    from pretextflow.core.config import load_config
    from pretextflow.core.data.dataset import load_dataset
    from pretextflow.core.registry.registry import get_registry
    from pretextflow.core.runs.manifest import build_manifest

    opts = {"key": s3.key, "secret": s3.secret, "client_kwargs": {"endpoint_url": s3.endpoint}}
    cfg = load_config(REPO / "configs" / "digits_smoke.yaml")
    cfg = cfg.model_copy(
        update={"store": cfg.store.model_copy(update={"uri": f"s3://{BUCKET}/store-manifest", "storage_options": opts})}
    )
    caplog.set_level(logging.DEBUG, logger="pretextflow")
    manifest = build_manifest(
        run_id="r1",
        cfg=cfg,
        registry=get_registry(),
        dataset=load_dataset(str(ws.data_dir), "digits"),
        data_version=data_version(ws),
        data_dvc={},
        keys={"pretrain": "k"},
        store=ArtifactStore(cfg.store.uri, cfg.store.storage_options),
        metrics={},
        history={},
        stage_times={},
    )
    dumped = json.dumps(manifest, default=str)
    assert s3.secret not in dumped and s3.key not in dumped
    # credentials masked; the endpoint is not a credential and stays (a rerun needs it)
    assert manifest["config"]["store"]["storage_options"] == {
        "key": "***",
        "secret": "***",
        "client_kwargs": {"endpoint_url": s3.endpoint},
    }
    assert s3.secret not in caplog.text


def test_dvc_errors_do_not_echo_secrets(s3, s3_workspace):
    ws = s3_workspace
    # a failing command whose arguments hold the secret
    with pytest.raises(VersioningError) as err:
        dvc(ws, "remote", "modify", "no-such-remote", "secret_access_key", s3.secret)
    assert s3.secret not in str(err.value) and "secret_access_key ***" in str(err.value)
    # credentials inside a URL are refused, and not echoed
    with pytest.raises(VersioningError) as err:
        configure_s3_remote(ws, f"s3://{s3.key}:{s3.secret}@{BUCKET}/dvc")
    assert s3.secret not in str(err.value) and s3.key not in str(err.value)
    assert s3.secret not in (ws.root / ".dvc" / "config").read_text()
    # what DVC may print: URLs with credentials, config lines, the environment's secret
    text = (
        f"ERROR: s3://{s3.key}:{s3.secret}@{BUCKET}/dvc unreachable; secret_access_key = {s3.secret}; "
        f"https://user:pw@host/x; token {s3.secret}"
    )
    cleaned = redact(text)
    assert s3.secret not in cleaned and s3.key not in cleaned and "pw@" not in cleaned
    assert "s3://***@pretextflow-test/dvc" in cleaned and "https://***@host/x" in cleaned
    # a push that fails (the bucket is gone from the endpoint) names no secret either
    configure_s3_remote(
        ws, "s3://no-such-bucket-pretextflow/dvc", endpoint_url=s3.endpoint, name="broken", default=False
    )
    with pytest.raises(VersioningError) as err:
        dvc(ws, "push", "-q", "-r", "broken")
    assert s3.secret not in str(err.value) and s3.key not in str(err.value)
    dvc(ws, "remote", "remove", "broken")


def test_init_from_the_command_line_with_an_s3_remote(s3, tmp_path):
    from typer.testing import CliRunner

    from pretextflow.cli import app
    from pretextflow.core.data.ingest import ingest
    from pretextflow.core.workspace import Workspace

    result = CliRunner().invoke(
        app, ["init", str(tmp_path / "ws"), "--remote", f"s3://{BUCKET}/cli", "--endpoint-url", s3.endpoint]
    )
    assert result.exit_code == 0, result.output
    config = (tmp_path / "ws" / ".dvc" / "config").read_text()
    assert f"s3://{BUCKET}/cli" in config and s3.endpoint in config and s3.secret not in config
    ingest(Workspace.at(tmp_path / "ws"), "sklearn:digits", "sklearn-digits", "digits")  # pushes to S3
    import boto3

    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3.endpoint).list_objects_v2(Bucket=BUCKET, Prefix="cli/")["Contents"]
    ]
    assert len(keys) >= 5


def test_two_ranks_train_from_a_dataset_on_s3_as_from_local_files(s3, s3_workspace, tmp_path, digits_config):
    """A node without the data: data.uri and store.uri on S3, an empty workspace. The two ranks read
    the images from S3 by row ranges and train the weights the local files give, bit for bit."""
    import fsspec

    from pretextflow.core.stages import StageContext, run_pretrain

    opts = {"client_kwargs": {"endpoint_url": s3.endpoint}}
    s3fs = fsspec.filesystem("s3", **opts, skip_instance_cache=True)
    s3fs.put(str(s3_workspace.data_dir / "digits"), f"{BUCKET}/datasets/", recursive=True)
    train = ("train.epochs=1", "train.batch_size=128", "train.threads=1", "train.devices=2")
    local = StageContext.create(digits_config(*train, f"store.uri={tmp_path / 'local'}"), str(s3_workspace.root))
    remote_cfg = digits_config(
        *train,
        f"data.uri=s3://{BUCKET}/datasets",
        "data.source=null",
        f"store.uri=s3://{BUCKET}/store-ddp",
        "store.storage_options=" + json.dumps(opts),
    )
    remote = StageContext.create(remote_cfg, str(tmp_path / "empty-workspace"))
    assert remote.pretrain_key(remote.dataset()) == local.pretrain_key(local.dataset())
    assert not (tmp_path / "empty-workspace" / "data").exists()
    out_local, out_remote = run_pretrain(local), run_pretrain(remote)
    assert not out_remote["cached"] and out_remote["key"] == out_local["key"]

    def weights(ctx) -> str:
        return hashlib.sha256(ctx.store.read_bytes("pretrain", out_local["key"], "task.safetensors")).hexdigest()

    assert weights(remote) == weights(local)
    with pytest.raises(Exception, match="uri and source are both set"):
        digits_config(f"data.uri=s3://{BUCKET}/datasets")  # digits_smoke.yaml has a data.source
