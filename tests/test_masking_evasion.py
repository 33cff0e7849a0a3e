"""Gradient masking that evaded the first detectors is caught (Athalye, Carlini & Wagner,
"Obfuscated Gradients Give a False Sense of Security", ICML 2018; Tramèr et al., "On Adaptive
Attacks to Adversarial Example Defenses", NeurIPS 2020), and the honest built-ins still pass.

Two dishonest defenses of a few lines, each declared deterministic and differentiable:

- :class:`SteepStaircase`: rounding with steep linear ramps between the steps. The gradient is
  exactly zero on the plateaus (98 % of the samples), so a white-box attack is blind, while
  BPDA through the identity breaks it. The first check probed 8 output samples at random; all
  landed on plateaus, were skipped, and the defense "held".
- :class:`SoftShatter`: ``x + a·sin(2πx/P)`` with P between the finite-difference step (1e-4)
  and the attack's radius (0.002). At 1e-4 its gradient describes it (ratio 0.89); at the
  radius the oscillation averages out and the gradient's sign is wrong on most samples.
"""

from __future__ import annotations

import math

import pytest
import torch

from musicbench.defense_checks import (
    GRADIENT_FD_RATIO,
    GRADIENT_FD_STEPS,
    ZERO_GRADIENT_FRACTION,
    DefenseBehaviour,
    measure,
)
from musicbench.interfaces import Preprocessor
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import Scorer, Victim, begin_batch

SR = 16_000


class SteepStaircase(Preprocessor):
    """Steps of ``step`` with a linear ramp over ``ramp`` of each step between plateaus:
    gradient ``1 / ramp`` on the ramps, exactly 0 elsewhere. Declared differentiable."""

    name = "steep-staircase"
    step = 1 / 64
    ramp = 0.02

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = torch.floor(audio / self.step)
        within = ((audio / self.step - k - 0.5) / self.ramp + 0.5).clamp(0, 1)
        return (self.step * (k + within)).clamp(-1, 1)


class SoftShatter(Preprocessor):
    """``x + a·sin(2πx/period)`` with slope amplitude ``depth`` (``a = depth·period/2π``):
    smooth, but its gradient swings between 1 - depth and 1 + depth within each period.
    Declared differentiable."""

    name = "soft-shatter"
    period = 1e-3
    depth = 3.0

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        a = self.depth * self.period / (2 * math.pi)
        return (audio + a * torch.sin(2 * math.pi * audio / self.period)).clamp(-1, 1)


def _bound(defense: Preprocessor) -> Preprocessor:
    defense.bind(SR)
    return defense


def _clips() -> torch.Tensor:
    """Two music-like clips of 0.5 s (the run measures on real clips besides the probe)."""
    return tone_batch(2, SR // 2, seed=3)


def test_a_steep_staircase_has_a_gradient_zero_almost_everywhere_and_gets_bpda():
    behaviour = measure(_bound(SteepStaircase()), SR, audio=_clips())
    assert behaviour.zero_gradient_fraction > ZERO_GRADIENT_FRACTION
    assert behaviour.zero_almost_everywhere and not behaviour.differentiable
    assert behaviour.attack_with_bpda
    (mismatch,) = behaviour.mismatches()
    assert "zero almost everywhere" in mismatch and "BPDA" in mismatch


def test_a_soft_shattering_between_the_fd_step_and_epsilon_is_caught_at_epsilon():
    behaviour = measure(_bound(SoftShatter()), SR, audio=_clips())
    ratios = behaviour.gradient_fd_ratios
    low, high = GRADIENT_FD_RATIO
    assert low <= ratios[f"{GRADIENT_FD_STEPS[0]:g}"] <= high  # the old single-step check passed
    assert not low <= ratios[f"{GRADIENT_FD_STEPS[-1]:g}"] <= high  # at the attack's radius
    assert behaviour.shattered and not behaviour.differentiable and behaviour.attack_with_bpda
    (mismatch,) = behaviour.mismatches()
    assert "shattered" in mismatch and "0.002" in mismatch


@pytest.mark.parametrize("defense", [SteepStaircase, SoftShatter])
def test_bpda_through_the_identity_breaks_what_plain_gradients_could_not(defense):
    """What the measurement changes: with the flag the harness attacks through the
    surrogate, and the toy's robustness disappears."""
    from musicbench_plugins.attacks.pgd import PGD, PGDParams

    model = TinyClassifier()
    model.load()
    x = tone_batch(8, model.input_samples, seed=5)
    d = _bound(defense())
    with torch.no_grad():
        y = Scorer(model, defense=d).predict(x)
    attack = PGD(PGDParams(eps=0.01, steps=10))
    robust = {}
    for bpda in (False, True):
        victim = Victim(model, defense=d, bpda=bpda)
        begin_batch(victim, x.shape[0])
        adv = attack(victim, x, y, generator=torch.Generator().manual_seed(0)).adv
        with torch.no_grad():
            robust[bpda] = int((Scorer(model, defense=d).predict(adv) == y).sum())
    assert robust[True] < robust[False], robust


def test_honest_defenses_stay_differentiable(builtin_behaviours):
    for label, behaviour in builtin_behaviours.items():
        assert not behaviour.mismatches(), (label, behaviour.mismatches())
        if behaviour.declared_differentiable:
            assert behaviour.differentiable and not behaviour.shattered, (label, behaviour)
            assert behaviour.zero_gradient_fraction < 0.1, (label, behaviour)
            assert behaviour.gradient_sign_flips == 0, (label, behaviour)
            assert set(behaviour.gradient_fd_ratios) == {f"{h:g}" for h in GRADIENT_FD_STEPS}


def test_bpda_surrogates_are_measured_and_flagged_only_when_far(builtin_behaviours):
    """quantize's identity surrogate is within 3 % of what the model sees (Athalye et al.'s
    g(x) = x where f(x) ≈ x); the hard gate's soft surrogate accounts for most of its change."""
    quantize = builtin_behaviours["quantize"]
    assert quantize.surrogate_fidelity == pytest.approx(1.0)
    assert quantize.surrogate_error < 0.03 and not quantize.warnings()
    hard = builtin_behaviours["denoise-spectral-hard"]
    assert hard.surrogate_fidelity < 0.5 and not hard.warnings()
    for label, behaviour in builtin_behaviours.items():
        assert (behaviour.surrogate_fidelity is None) == (not behaviour.attack_with_bpda), label


def test_a_far_surrogate_carries_a_flag_naming_the_fidelity():
    behaviour = DefenseBehaviour("codec", False, False, False, True, False,
                                 surrogate_fidelity=1.0, surrogate_error=0.09)
    (flag,) = behaviour.warnings()
    assert "1.00 > 0.5" in flag and "9.0%" in flag
    assert behaviour.flags() == behaviour.mismatches() + [flag]


@pytest.fixture(scope="module")
def builtin_behaviours() -> dict[str, DefenseBehaviour]:
    """Every built-in preprocessor's measured behaviour at 16 kHz, on the probe and two
    tone clips (denoise-unet needs trained weights and is measured in
    benchmarks/masking_checks.py)."""
    from test_defenses import VARIANTS, make

    from musicbench.plugins import PluginSystem

    plugins = PluginSystem()
    out = {}
    for name, params in VARIANTS:
        label = name + "".join(f"-{v}" for v in params.values())
        out[label] = measure(make(plugins, name, params), SR, audio=_clips())
    return out


def test_a_preprocessor_that_shrinks_its_gradient_fails_the_finite_difference_check():
    """The identity in value, its gradient divided by 10: a shrink the vanishing-gradient flag
    lets pass (docs/defenses.md) shows here as a slope ratio of 10."""

    class Shrink(Preprocessor):
        name = "shrink"

        def forward(self, audio, generator):
            return audio.detach() + (audio - audio.detach()) / 10

    behaviour = measure(_bound(Shrink()), SR)
    assert behaviour.gradient_fd_ratio == pytest.approx(10, rel=1e-3)
    assert behaviour.shattered and behaviour.attack_with_bpda
