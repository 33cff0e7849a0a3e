"""`musicbench validate` checks explicitly (``python -O`` cannot turn it off), catches a
``cam_layer`` that Grad-CAM cannot read, and reports parameters a plugin rejects as one line."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import cli, make_site

from musicbench import hookimpl
from musicbench.errors import ConfigError
from musicbench.params import build_params
from musicbench.plugins import PluginSystem
from musicbench.testing import TinyClassifier
from musicbench.validate import validate_plugin

ROOT = Path(__file__).parent.parent

# A plugin package as a new author writes one: each model breaks one promise.
BROKEN_PLUGIN = '''
from dataclasses import dataclass

from musicbench import hookimpl
from musicbench.testing import TinyClassifier


class ForgotEval(TinyClassifier):
    """Leaves its network in train mode. It has no batch norm or dropout, so only the
    validator's train-mode check can see it."""

    def __init__(self, params=None):
        super().__init__()

    def load(self, ctx=None):
        super().load(ctx)
        self.net.train()


@dataclass(frozen=True)
class PickyParams:
    seed: int = 0
    mode: str = "fast"

    def __post_init__(self):
        assert self.seed >= 0, f"seed must be >= 0, got {self.seed}"
        {"fast": 1, "slow": 2}[self.mode]  # KeyError for an unknown mode


class Picky(TinyClassifier):
    Params = PickyParams

    def __init__(self, params=None):
        super().__init__()
        self.params = params or PickyParams()


@hookimpl
def register_models(register):
    register("forgot-eval", ForgotEval)
    register("picky", Picky)
'''


@pytest.fixture
def broken_site(tmp_path) -> Path:
    return make_site(tmp_path / "site", "broken-plugins", {"broken": "broken_plugins"},
                     {"broken_plugins.py": BROKEN_PLUGIN})


def test_validate_has_no_assert_statements():
    """``python -O`` strips them; every check must be an explicit ``require``/``raise``."""
    tree = ast.parse((ROOT / "bench" / "validate.py").read_text(encoding="utf-8"))
    lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert not lines, f"bench/validate.py has assert statements on lines {lines}"


def test_validate_fails_a_broken_plugin_under_python_O(broken_site):
    result = cli("validate", "forgot-eval", sites=(broken_site,), python_flags=("-O",))
    assert result.returncode == 1, result.stderr
    assert "module() is in train mode; call .eval() in load()" in result.stderr


# -- cam_layer ---------------------------------------------------------------------------------


class _Tiny(TinyClassifier):
    def __init__(self, params: object = None):
        super().__init__()


class _CamModels:
    class Typo(_Tiny):
        cam_layer = "convs"  # the network's block is "conv"

    class NoTime(_Tiny):
        cam_layer = "head"  # the linear head: [B, K], no time axis

    class Unused(_Tiny):
        cam_layer = "spare"  # a submodule the forward never runs

        def load(self, ctx=None) -> None:
            super().load(ctx)
            self.net.spare = torch.nn.Conv1d(1, 1, 1)

    @hookimpl
    def register_models(self, register):
        register("cam-typo", self.Typo)
        register("cam-no-time", self.NoTime)
        register("cam-unused", self.Unused)


def _cam_check(name: str):
    system = PluginSystem()
    system.add_plugin(_CamModels(), "cam-models", provider="tests")
    report = validate_plugin(name, kind="model", device="cpu", plugins=system)
    cam = [c for c in report.checks if c.name.startswith("cam_layer")]
    assert len(cam) == 1, [c.name for c in report.checks]
    return report, cam[0]


def test_a_cam_layer_that_is_not_a_submodule_fails_with_a_did_you_mean():
    report, check = _cam_check("cam-typo")
    assert not report.ok and not check.ok
    assert "cam_layer 'convs' is not a submodule of module()" in check.detail
    assert "Did you mean 'conv'?" in check.detail
    assert "conv, conv.0, conv.1, head" in check.detail  # what there is to choose from


def test_a_cam_layer_without_a_time_axis_fails():
    _, check = _cam_check("cam-no-time")
    assert not check.ok and "Grad-CAM reads [N, C, T'] or [N, C, F', T']" in check.detail


def test_a_cam_layer_the_forward_never_runs_fails():
    _, check = _cam_check("cam-unused")
    assert not check.ok and "did not run in a forward pass" in check.detail


# -- parameters a plugin's own checks reject ---------------------------------------------------


@dataclass(frozen=True)
class _Strict:
    seed: int = 0
    mode: str = "fast"

    def __post_init__(self):
        if self.seed < 0:
            raise AssertionError(f"seed must be >= 0, got {self.seed}")
        if self.seed == 1:
            raise AssertionError
        {"fast": 1}[self.mode]


def test_any_rejection_by_a_params_post_init_is_a_config_error_naming_the_table():
    with pytest.raises(ConfigError,
                       match=r"^\[models\.strict\] key 'seed': seed must be >= 0, got -1$"):
        build_params(_Strict, {"seed": -1}, table="models.strict")
    with pytest.raises(ConfigError, match=r"^\[models\.strict\]: _Strict\.__post_init__ "
                                          r"rejected the values: KeyError: 'slow'$"):
        build_params(_Strict, {"mode": "slow"}, table="models.strict")
    with pytest.raises(ConfigError, match=r"rejected the values: AssertionError$"):
        build_params(_Strict, {"seed": 1}, table="models.strict")


def test_validate_reports_a_rejected_parameter_in_one_line_and_exits_2(broken_site):
    for param, message in (("seed=-1", "seed must be >= 0, got -1"),
                           ("mode='turbo'", "rejected the values: KeyError: 'turbo'")):
        result = cli("validate", "picky", "-p", param, sites=(broken_site,))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith("error: [models.picky]"), lines
        assert message in lines[0]


def test_run_reports_a_rejected_parameter_in_one_line_and_exits_2(broken_site, tmp_path):
    config = tmp_path / "picky.toml"
    config.write_text('[run]\nname = "picky"\nsamples = 4\ndevice = "cpu"\nfad_encoder = ""\n'
                      '[[datasets]]\nname = "toy-tones"\n'
                      '[[models]]\nname = "picky"\nmode = "turbo"\n'
                      '[[defenses]]\nname = "none"\n[[attacks]]\nname = "fgsm"\n')
    toy_site = make_site(tmp_path / "toy-site", "toy-plugins", {"toy": "toyplugins"}, {})
    result = cli("run", str(config), "--out", str(tmp_path / "out"),
                 sites=(broken_site, toy_site))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, lines
    assert lines[0] == ("error: [models.picky]: PickyParams.__post_init__ rejected the values: "
                        "KeyError: 'turbo'")


# -- defenses: the run's measurement, on real clips ------------------------------------------
# (toy-tones stands in for m21-styles, the default, which each test's private cache would
# have to render first)


def test_validate_measures_a_defense_on_real_clips_and_prints_the_surrogates_fidelity(
        toy_plugins):
    """The same measurement as a run (probe and two test clips) and the BPDA surrogate's
    fidelity (a warning when far, never a failure)."""
    report = validate_plugin("mp3", kind="defense", device="cpu", plugins=toy_plugins,
                             clips="toy-tones")
    names = [c.name for c in report.checks]
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]
    assert "flags measured on the probe and 2 test clips of toy-tones" in names
    (fidelity,) = [n for n in names if n.startswith("BPDA surrogate fidelity")]
    assert "‖f(x) − g(x)‖ / ‖f(x) − x‖ = " in fidelity and "of the defense's output" in fidelity


def test_validate_fails_a_staircase_that_declares_itself_differentiable(toy_plugins):
    from test_masking_evasion import SteepStaircase

    class _Staircases:
        @hookimpl
        def register_defenses(self, register):
            register("staircase", SteepStaircase)

    toy_plugins.add_plugin(_Staircases(), "staircases", provider="tests")
    report = validate_plugin("staircase", kind="defense", device="cpu", plugins=toy_plugins,
                             clips="toy-tones")
    failed = [c for c in report.checks if not c.ok]
    assert len(failed) == 1 and "zero almost everywhere" in failed[0].detail
