"""A list for a single-valued parameter is a sweep: one labelled cell per value."""

from __future__ import annotations

import pytest

from musicbench.config import parse_config
from musicbench.errors import ConfigError
from musicbench.planner import apply_only, resolve

BASE = """
[run]
samples = 4
device = "cpu"
fad_encoder = ""
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
{model}
[[defenses]]
name = "none"
{defenses}
[[attacks]]
name = "pgd"
eps = [0.001, 0.004]
steps = [2, 3]
[[attacks]]
name = "fgsm"
"""


def _resolved(toy_plugins, model: str = "", defenses: str = ""):
    return resolve(parse_config(BASE.format(model=model, defenses=defenses)), toy_plugins)


def test_a_sweep_expands_into_labelled_entries(toy_plugins):
    resolved = _resolved(toy_plugins, defenses='[[defenses]]\nname = "toy-noise"\n'
                                               'sigma = [0.01, 0.02]')
    attacks = [(r.spec.label, r.params.eps, r.params.steps) for r in resolved["attack"]
               if r.name == "pgd"]
    assert attacks == [("pgd, eps 0.001, steps 2", 0.001, 2), ("pgd, eps 0.001, steps 3", 0.001, 3),
                       ("pgd, eps 0.004, steps 2", 0.004, 2), ("pgd, eps 0.004, steps 3", 0.004, 3)]
    assert all(r.spec.swept_from == "pgd" for r in resolved["attack"] if r.name == "pgd")
    assert [r.spec.label for r in resolved["defense"]] == [
        "none", "toy-noise, sigma 0.01", "toy-noise, sigma 0.02"]
    # --only by the label the sweep was written with selects every value
    only = apply_only(resolved, ["attack=pgd"])
    assert len(only["attack"]) == 4


def test_a_model_naming_the_swept_label_gets_every_value(toy_plugins, tmp_path):
    from conftest import run_toy_config

    text = BASE.format(model='attacks = ["pgd"]', defenses="").replace(
        "steps = [2, 3]", "steps = 2")
    outcome, _ = run_toy_config(tmp_path, text)
    assert sorted(r.spec.attack.label for r in outcome.records) == [
        "pgd, eps 0.001", "pgd, eps 0.004"]
    assert all(r.status == "ok" for r in outcome.records)


def test_list_valued_parameters_are_not_sweeps_and_empty_sweeps_fail(toy_plugins):
    resolved = resolve(parse_config(BASE.format(model="", defenses=(
        '[[defenses]]\nname = "resample"\nrandom_rate = [6000, 12000]'))), toy_plugins)
    resample = [r for r in resolved["defense"] if r.name == "resample"]
    assert len(resample) == 1 and tuple(resample[0].params.random_rate) == (6000, 12000)
    with pytest.raises(ConfigError, match="at least one value"):
        resolve(parse_config(BASE.format(model="", defenses="").replace(
            "eps = [0.001, 0.004]", "eps = []")), toy_plugins)


def test_a_sweep_label_that_collides_is_a_config_error(toy_plugins):
    text = (BASE.format(model="", defenses="")
            + '[[attacks]]\nname = "fgsm"\nlabel = "pgd, eps 0.001, steps 2"\n')
    with pytest.raises(ConfigError, match="names two entries"):
        resolve(parse_config(text), toy_plugins)
