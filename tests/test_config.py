import subprocess
import sys

import pytest

from pretextflow.core.config import load_config
from pretextflow.core.errors import ConfigError

from .conftest import REPO

DIGITS = REPO / "configs" / "digits_smoke.yaml"


def test_shipped_configs_validate():
    for path in (REPO / "configs").glob("*.yaml"):
        cfg = load_config(path)
        assert cfg.seed == 0 and cfg.data.name


def test_set_overrides_any_field_with_yaml_types():
    cfg = load_config(
        DIGITS,
        ["train.epochs=2", "probe.knn_k=[5, 3]", "pretext.params.temperature=0.2", "backbone.small_image_stem=false"],
    )
    assert cfg.train.epochs == 2 and cfg.probe.knn_k == [5, 3]
    assert cfg.pretext.params["temperature"] == 0.2 and cfg.backbone.small_image_stem is False


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.lr=-1", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs=many", "train.epochs"),
        ("probe.val_fraction=1.5", "probe.val_fraction"),
        ("train.optimiser=sgd", "train.optimiser"),
        ("colour=blue", "colour"),
        ("probe.knn_k=[0]", "probe.knn_k"),
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(DIGITS, [override])
    assert field in str(err.value)


def test_unknown_key_says_unknown():
    with pytest.raises(ConfigError, match=r"train\.optimiser: unknown key"):
        load_config(DIGITS, ["train.optimiser=sgd"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(DIGITS, ["train.epochs"])


def test_pretext_params_are_validated_by_the_plugin(digits_config):
    from pretextflow.core.registry.preflight import resolved_pretext_params
    from pretextflow.core.registry.registry import get_registry

    with pytest.raises(ConfigError, match=r"pretext\.params\.temperature"):
        resolved_pretext_params(digits_config("pretext.params.temperature=-1"), get_registry())
    with pytest.raises(ConfigError, match=r"pretext\.params\.tempreature: unknown key"):
        resolved_pretext_params(digits_config("pretext.params.tempreature=1"), get_registry())
    params = resolved_pretext_params(digits_config(), get_registry())
    assert params["proj_dim"] == 128  # defaults filled in


def test_cli_config_error_exits_2_with_a_message_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pretextflow", "run", str(DIGITS), "--set", "train.lr=-1", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "greater than 0" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
