"""Every registered attack passes the conformance checks of `musicbench validate`, and the
harness rejects attacks that break the contract."""

from __future__ import annotations

import pytest
import torch

from musicbench.errors import AttackContractError
from musicbench.plugins import PluginSystem
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.validate import validate_plugin
from musicbench.victim import Victim
from musicbench_plugins.attacks.pgd import PGD, PGDParams

BUILTIN_ATTACKS = sorted(PluginSystem().registry("attack").names())


@pytest.mark.parametrize("name", BUILTIN_ATTACKS)
def test_builtin_attack_passes_validation(name):
    report = validate_plugin(name, kind="attack", device="cpu")
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, failed
    assert len(report.checks) >= 5


def test_validation_catches_contract_breakers(toy_plugins):
    report = validate_plugin("out-of-range", kind="attack", device="cpu", plugins=toy_plugins)
    assert not report.ok
    assert "outside [-1, 1]" in report.checks[1].detail


@pytest.fixture
def model():
    m = TinyClassifier()
    m.load()
    return m


def test_pgd_stays_in_bound_stops_early_and_succeeds_with_a_large_eps(model):
    x = tone_batch(6, model.input_samples, seed=3)
    victim = Victim(model)
    with torch.no_grad():
        y = victim.predict(x)
    attack = PGD(PGDParams(eps=0.05, steps=30))
    res = attack(victim, x, y, generator=torch.Generator().manual_seed(0))
    assert (res.adv - x).abs().max() <= 0.05 + 1e-7
    assert res.success.all()
    # a sample stops stepping once fooled: its queries are steps + at most one check
    assert (res.queries <= res.steps + 1).all() and (res.steps < 30).any()


def test_harness_rejects_a_bound_violation(model):
    class Cheat(PGD):
        def run(self, victim, audio, target, *, generator):
            out = super().run(victim, audio, target, generator=generator)
            out.adv = (audio + 2 * self.params.eps).clamp(-1, 1)
            return out

    x = tone_batch(2, model.input_samples)
    victim = Victim(model)
    with torch.no_grad():
        y = victim.predict(x)
    with pytest.raises(AttackContractError, match="exceeded its linf bound"):
        Cheat(PGDParams(eps=0.01, steps=2))(victim, x, y, generator=torch.Generator())


def test_harness_rescores_success_instead_of_trusting_the_attack(model):
    class Liar(PGD):
        def run(self, victim, audio, target, *, generator):
            out = super().run(victim, audio, target, generator=generator)
            out.adv = audio.clone()
            out.success = torch.ones_like(out.success)
            return out

    x = tone_batch(3, model.input_samples)
    victim = Victim(model)
    with torch.no_grad():
        y = victim.predict(x)
    res = Liar(PGDParams(eps=0.01, steps=2))(victim, x, y, generator=torch.Generator())
    assert not res.success.any()


@pytest.mark.parametrize("name", ["toy-model", "toy-embedder"])
def test_model_validation_runs_every_check(name, toy_plugins):
    report = validate_plugin(name, kind="model", device="cpu", plugins=toy_plugins)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]
    names = " ".join(c.name for c in report.checks)
    for expected in ("odd longer length", "shorter length", "deterministic", "differentiable"):
        assert expected in names
