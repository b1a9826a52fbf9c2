"""`pretextflow plugins` is served from a cache keyed by what can change the listing, so it
starts without importing torch; any change to that key rebuilds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = (
    "import json, sys; from pretextflow.core.registry.listing import listing; rows, skipped, cached = listing(); "
    "print(json.dumps({'cached': cached, 'torch': 'torch' in sys.modules, 'names': [r['name'] for r in rows]}))"
)


def _probe(env):
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_listing_is_cached_without_importing_torch_and_rebuilt_when_the_key_changes(tmp_path):
    env = {**os.environ, "PRETEXTFLOW_CACHE_DIR": str(tmp_path / "cache")}
    first, second = _probe(env), _probe(env)
    assert (first["cached"], first["torch"]) == (False, True)  # built: every plugin imported
    assert (second["cached"], second["torch"]) == (True, False)  # served: nothing heavy imported
    assert second["names"] == first["names"] and {"simclr", "convnet-s", "idx"} <= set(first["names"])
    # the allow list is part of the key: a different environment is a different listing
    blocked = _probe({**env, "PRETEXTFLOW_BLOCK_PLUGINS": "denoising"})
    assert blocked["cached"] is False
    # a new package with an entry point changes the key too
    site = tmp_path / "site"
    (site / "pf_new").mkdir(parents=True)
    (site / "pf_new" / "__init__.py").write_text(
        "from pretextflow.api import hookimpl\n@hookimpl\ndef pretextflow_backbones():\n    return []\n"
    )
    dist = site / "pf_new-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pf-new\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pretextflow]\nnew = pf_new\n")
    with_new = _probe({**env, "PYTHONPATH": str(site)})
    assert with_new["cached"] is False
    assert _probe({**env, "PYTHONPATH": str(site)})["cached"] is True


def test_cli_plugins_refresh_and_a_corrupt_cache(tmp_path):
    env = {**os.environ, "PRETEXTFLOW_CACHE_DIR": str(tmp_path / "cache")}

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "pretextflow", "plugins", *a], capture_output=True, text=True, env=env
        )

    assert run("--json").returncode == 0
    [cache] = list((tmp_path / "cache").glob("plugins-*.json"))
    cache.write_text("{not json")  # a damaged cache is rebuilt, not an error
    proc = run("--json")
    assert proc.returncode == 0 and "simclr" in proc.stdout
    assert json.loads(cache.read_text())["rows"]
    assert run("--refresh").returncode == 0
