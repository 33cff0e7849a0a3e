"""Config errors stop a run before any work, with exit code 2 and a message naming the key."""

from __future__ import annotations

import pytest
from conftest import cli
from test_plugins import TOY_CONFIG

from musicbench.config import parse_config
from musicbench.errors import ConfigError
from musicbench.params import build_params
from musicbench_plugins.attacks.pgd import PGDParams


def test_unknown_plugin_name_exits_2_with_suggestion_and_no_work(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(TOY_CONFIG.replace('name = "fgsm"', 'name = "fgsmm"'))
    out = tmp_path / "out"
    result = cli("run", str(config), "--out", str(out), sites=(toy_site,))
    assert result.returncode == 2, result.stderr
    assert "unknown attack 'fgsmm'" in result.stderr and "Did you mean 'fgsm'" in result.stderr
    assert not out.exists()  # no store, no leaderboard: nothing was done


def test_wrong_parameter_type_exits_2_naming_table_and_key(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(TOY_CONFIG.replace("eps = 0.01", 'eps = "small"'))
    result = cli("run", str(config), "--out", str(tmp_path / "out"), sites=(toy_site,))
    assert result.returncode == 2
    assert "[attacks.fgsm] key 'eps'" in result.stderr
    assert "expected float" in result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_parameter_exits_2_with_accepted_keys(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(TOY_CONFIG.replace("eps = 0.01", "epsilon = 0.01"))
    result = cli("run", str(config), "--out", str(tmp_path / "out"), sites=(toy_site,))
    assert result.returncode == 2
    assert "key 'epsilon'" in result.stderr and "Did you mean 'eps'" in result.stderr


def test_only_filters_and_rejects_names_not_in_config(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(TOY_CONFIG)
    result = cli("run", str(config), "--only", "attack=pgd", "--out", str(tmp_path / "o"),
                 sites=(toy_site,))
    assert result.returncode == 2 and "no such attack in this config" in result.stderr


@pytest.mark.parametrize("value,ok", [(1, True), (0.5, True), (True, False), ("1", False)])
def test_float_params_accept_ints_but_not_bools_or_strings(value, ok):
    if ok:
        assert build_params(PGDParams, {"eps": value}, table="attacks.pgd").eps == float(value)
    else:
        with pytest.raises(ConfigError, match="key 'eps'"):
            build_params(PGDParams, {"eps": value}, table="attacks.pgd")


def test_range_checks_in_params_are_config_errors():
    with pytest.raises(ConfigError, match="eps must be > 0"):
        build_params(PGDParams, {"eps": -1.0}, table="attacks.pgd")


def test_config_structure_errors():
    with pytest.raises(ConfigError, match=r"\[atacks\]"):
        parse_config(TOY_CONFIG + "\n[[atacks]]\nname='x'\n")
    with pytest.raises(ConfigError, match="at least one"):
        parse_config(TOY_CONFIG.replace('[[defenses]]\nname = "none"', ""))
    with pytest.raises(ConfigError, match=r"\[run\] key 'sample'"):
        parse_config(TOY_CONFIG.replace("samples = 8", "sample = 8"))


def test_embedded_default_config_is_valid():
    config = parse_config(__import__("musicbench.config").config.default_config_text())
    assert [s.name for s in config.components["attack"]] == ["fgsm", "pgd"]


def test_list_and_validate_commands(toy_site):
    listed = cli("list", "attacks", sites=(toy_site,))
    assert listed.returncode == 0 and "pgd" in listed.stdout and "style-cnn" not in listed.stdout
    assert cli("list", "widgets").returncode == 2
    ok = cli("validate", "pgd")
    assert ok.returncode == 0, ok.stderr
    assert "passed" in ok.stderr
    bad = cli("validate", "out-of-range", sites=(toy_site,))
    assert bad.returncode == 1 and "outside [-1, 1]" in bad.stderr
    train_mode = cli("validate", "train-mode-model", sites=(toy_site,))
    assert train_mode.returncode == 1 and "train mode" in train_mode.stderr
    assert cli("validate", "toy-model", sites=(toy_site,)).returncode == 0
    missing = cli("validate", "pgdd")
    assert missing.returncode == 2 and "Did you mean 'pgd'" in missing.stderr


def test_leaderboard_command_errors(tmp_path):
    result = cli("leaderboard", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no results" in result.stderr


PER_MODEL_CONFIG = """
[run]
fad_encoder = ""
name = "per-model"
samples = 6
quick_samples = 4
batch_size = 3
device = "cpu"

[[datasets]]
name = "toy-tones"

[[models]]
name = "toy-model"

[[models]]
name = "toy-model"
label = "toy-model-seed1"
seed = 1
samples = 3
attacks = ["fgsm, small"]

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"

[[attacks]]
name = "fgsm"
label = "fgsm, small"
eps = 0.001
"""


def test_model_samples_and_attacks_shape_the_grid(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(PER_MODEL_CONFIG)
    out = tmp_path / "out"
    result = cli("run", str(config), "--out", str(out), sites=(toy_site,))
    assert result.returncode == 0, result.stderr
    board = cli("leaderboard", str(out), "--format", "json")
    rows = {(r["model"], r["attack"]): r for r in __import__("json").loads(board.stdout)}
    # the default model runs every attack on 6 clips, the second only its one attack on 3
    assert set(rows) == {("toy-model", "fgsm"), ("toy-model", "fgsm, small"),
                         ("toy-model-seed1", "fgsm, small")}
    assert rows[("toy-model", "fgsm")]["n"] == 6
    assert rows[("toy-model-seed1", "fgsm, small")]["n"] == 3
    md = (out / "leaderboard.md").read_text()
    assert "3–6 (by model, see n) clips" in md


def test_model_run_keys_are_checked():
    base = parse_config(PER_MODEL_CONFIG)
    seed1 = base.components["model"][1]
    assert (seed1.samples, seed1.attacks, seed1.params) == (3, ("fgsm, small",), {"seed": 1})
    with pytest.raises(ConfigError, match=r"\[models.toy-model-seed1\] key 'attacks'.*"
                                          r"Did you mean 'fgsm, small'"):
        parse_config(PER_MODEL_CONFIG.replace('["fgsm, small"]', '["fgsm small"]'))
    with pytest.raises(ConfigError, match=r"key 'samples'"):
        parse_config(PER_MODEL_CONFIG.replace("samples = 3", "samples = -1"))
    with pytest.raises(ConfigError, match=r"key 'attacks'"):
        parse_config(PER_MODEL_CONFIG.replace('["fgsm, small"]', "[]"))


@pytest.mark.parametrize("own,quick,expected", [
    (None, False, 6), (None, True, 4), (3, False, 3), (3, True, 3), (10, True, 4), (0, True, 4),
    (0, False, 0),
])
def test_model_samples_under_quick(own, quick, expected):
    from dataclasses import replace

    from musicbench.config import model_samples

    config = parse_config(PER_MODEL_CONFIG)
    spec = replace(config.components["model"][0], samples=own)
    assert model_samples(spec, config.run, quick=quick) == expected


def test_ray_settings_without_the_ray_executor_are_named_not_dropped_silently():
    from musicbench.config import parse_config
    from musicbench.session import ignored_ray_settings

    base = '[[datasets]]\nname = "m21-styles"\n[[models]]\nname = "style-cnn"\n' \
           '[[defenses]]\nname = "none"\n[[attacks]]\nname = "fgsm"\n'
    local = parse_config('[run]\nray_address = "10.0.0.1:6379"\nray_workers = 2\n' + base)
    assert ignored_ray_settings(local.run) == ["ray_address", "ray_workers"]
    assert ignored_ray_settings(parse_config(base).run) == []
