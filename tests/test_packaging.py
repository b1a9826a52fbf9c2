"""The wheel installs core/, plugins/ and flows/ under `pretextflow` and nothing generic."""

import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True,
    )
    return next(out.glob("pretextflow-*.whl"))


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"pretextflow", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for required in (
        "pretextflow/core/registry/hookspecs.py",
        "pretextflow/core/registry/registry.py",
        "pretextflow/cli.py",
        "pretextflow/plugins/pretext/simclr.py",
        "pretextflow/plugins/datasets/idx.py",
        "pretextflow/plugins/backbones/timm_models.py",
        "pretextflow/flows/pipeline.py",
    ):
        assert required in names
    assert not any(n.startswith(("core/", "plugins/", "flows/", "tests/")) for n in names)
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pretextflow = pretextflow.cli:main" in zipfile.ZipFile(wheel).read(ep).decode()


def test_wheel_installs_and_imports_from_outside_the_repo(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    assert not (target / "core").exists() and not (target / "plugins").exists()
    code = (
        "import pretextflow.core.registry.registry as p, json; r = p.build_registry(load_entry_points=False); "
        "print(json.dumps([p.__file__, sorted(r.pretext)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    where, tasks = json.loads(proc.stdout)
    assert where.startswith(str(target)) and {"inpainting", "rotation", "simclr", "mae", "dino"} <= set(tasks)


def test_the_installed_package_maps_the_repo_folders():
    """`make test` installs with `pip install -e .`: the import package must map the repo's folders."""
    import pretextflow.core
    import pretextflow.flows
    import pretextflow.plugins

    # the installed distribution (not the build's pretextflow.egg-info that sits in the repo root)
    installs = [
        json.loads(d.read_text("direct_url.json"))
        for d in metadata.distributions(name="pretextflow")
        if d.read_text("direct_url.json")
    ]
    if not any(i.get("dir_info", {}).get("editable") for i in installs):
        pytest.skip("pretextflow is not installed in editable mode here")
    assert Path(pretextflow.core.__file__).parent == REPO / "core"
    assert Path(pretextflow.plugins.__file__).parent == REPO / "plugins"
    assert Path(pretextflow.flows.__file__).parent == REPO / "flows"
