"""Behaviour of the paper's baseline attacks (C&W, PGD-L2, NES, ZOO) and of SNR budgets,
on the tiny random-weight classifier and on a hand-set 'fragile' model."""

from __future__ import annotations

import pytest
import torch
from test_attack_contracts import fragile_setup

from musicbench.api import snr_db, snr_radius
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import Scorer, Victim
from musicbench_plugins.attacks.cw import CW, CWParams, update_const
from musicbench_plugins.attacks.nes import NES, NESParams
from musicbench_plugins.attacks.pgd import PGD, PGDParams
from musicbench_plugins.attacks.zoo import ZOO, ZOOParams


@pytest.fixture(scope="module")
def tiny():
    model = TinyClassifier()
    model.load()
    x = tone_batch(6, model.input_samples, seed=3)
    with torch.no_grad():
        y = Scorer(model).predict(x)
    return model, x, y


def attack(att, model, x, y, seed=0, **victim_kwargs):
    att.name = type(att).__name__.lower()
    victim = Victim(model, **victim_kwargs)
    return att(victim, x, y, generator=torch.Generator().manual_seed(seed))


def l2(res, x):
    return (res.adv - x).flatten(1).norm(dim=1)


# -- C&W ---------------------------------------------------------------------------------------

def test_cw_finds_smaller_l2_than_pgd_l2_at_the_same_success(tiny):
    model, x, y = tiny
    pgd = attack(PGD(PGDParams(norm="l2", eps=0.1, steps=30)), model, x, y)
    cw = attack(CW(CWParams()), model, x, y)
    assert pgd.success.all() and cw.success.all()
    assert l2(cw, x).mean() < 0.7 * l2(pgd, x).mean(), (l2(cw, x), l2(pgd, x))


def test_cw_with_kappa_returns_clips_fooled_by_at_least_kappa(tiny):
    """C&W's success is margin <= -kappa (the paper's confidence), not the harness's margin <= 0:
    v1 kept the first smallest-L2 iterate past the boundary, at margins of -0.0002..-0.007
    here."""
    model, x, y = tiny
    plain = attack(CW(CWParams()), model, x, y)
    confident = attack(CW(CWParams(kappa=0.05)), model, x, y)
    assert plain.success.all() and confident.success.all()
    margin = Scorer(model).margin(confident.adv, y)
    assert (margin <= -0.05 + 1e-6).all(), margin
    assert (Scorer(model).margin(plain.adv, y) > -0.05).all()  # kappa mattered
    assert (l2(confident, x) > l2(plain, x)).all()  # a confident adversarial costs distortion


def test_binary_search_raises_c_when_failing_and_lowers_it_after_success():
    const = torch.tensor([1.0, 1.0, 1.0])
    lower = torch.tensor([0.0, 0.0, 0.5])
    upper = torch.tensor([float("inf"), 4.0, float("inf")])
    found = torch.tensor([False, False, True])
    c, lo, hi = update_const(const, lower, upper, found)
    assert c.tolist() == [10.0, 2.5, 0.75]  # x10 without an upper bound, else bisect
    assert lo.tolist() == [1.0, 1.0, 0.5] and hi.tolist() == [float("inf"), 4.0, 1.0]


def test_cw_search_recovers_from_a_too_small_initial_const(tiny):
    model, x, y = tiny
    params = {"initial_const": 1e-6, "steps": 20}
    once = attack(CW(CWParams(binary_search_steps=1, **params)), model, x, y)
    searched = attack(CW(CWParams(binary_search_steps=8, **params)), model, x, y)
    assert not once.success.any()  # c too small: the distance term wins in one search step
    assert searched.success.all()  # raising c x10 per failed search finds them all


def test_cw_returns_the_clean_clip_for_already_wrong_and_failed_samples():
    model, x, y = fragile_setup()
    res = attack(CW(CWParams(binary_search_steps=3, steps=20)), model, x, y)
    assert torch.equal(res.adv[0], x[0]) and int(res.queries[0]) == 1 and res.steps[0] == 0
    assert res.success[1] and torch.equal(res.adv[2:], x[2:])
    # the fragile clip stops once its distortion stops improving, before the search is spent
    assert int(res.steps[1]) < 3 * 20


def test_cw_l2_bound_is_respected_and_declared(tiny):
    model, x, y = tiny
    att = CW(CWParams(eps=0.03, binary_search_steps=3, steps=30))
    assert att.bound().norm == "l2" and att.bound().eps == 0.03
    res = attack(att, model, x, y)  # __call__ also checks the bound
    assert (l2(res, x) <= 0.03 * (1 + 1e-5)).all()
    assert res.success.any() and not res.success.all()  # a tight ball: some clips survive
    assert CW(CWParams()).bound() is None


# -- SNR budgets -------------------------------------------------------------------------------

def test_snr_radius_matches_the_snr_definition():
    x = tone_batch(3, 4000, seed=1) * torch.tensor([[1.0], [0.1], [0.5]])
    thirty = torch.full((3,), 30.0, dtype=torch.float64)  # snr_db computes in float64
    eps = snr_radius(x, 30.0, "l2")
    delta = torch.randn(x.shape)
    delta = delta / delta.norm(dim=1, keepdim=True) * eps
    assert torch.allclose(snr_db(x, x + delta), thirty, atol=1e-3)
    # L-inf: a full-scale square wave at eps has exactly that SNR
    eps = snr_radius(x, 30.0, "linf")
    square = eps * torch.where(torch.arange(4000) % 2 == 0, 1.0, -1.0)
    assert torch.allclose(snr_db(x, x + square), thirty, atol=1e-3)


@pytest.mark.parametrize("make", [
    lambda: PGD(PGDParams(snr_db=30.0, steps=10)),
    lambda: PGD(PGDParams(norm="l2", snr_db=30.0, steps=10)),
    lambda: CW(CWParams(snr_db=30.0, binary_search_steps=2, steps=20)),
], ids=["pgd-linf", "pgd-l2", "cw"])
def test_snr_budget_gives_at_least_the_requested_snr_per_clip(tiny, make):
    model, x, y = tiny
    x = x * torch.tensor([1.0, 0.05, 0.5, 1.0, 0.2, 0.8]).unsqueeze(1)  # different loudness
    with torch.no_grad():
        y = Scorer(model).predict(x)
    att = make()
    assert att.bound().snr_db == 30.0  # a per-clip radius, which the harness checks too
    res = attack(att, model, x, y)
    changed = (res.adv != x).any(1)
    assert changed.any()
    assert (snr_db(x, res.adv)[changed] >= 30.0 - 1e-3).all(), snr_db(x, res.adv)


def test_pgd_l2_stays_in_its_ball_and_uses_the_budget(tiny):
    model, x, y = tiny
    res = attack(PGD(PGDParams(norm="l2", eps=0.2, steps=5)), model, x, y)
    norms = l2(res, x)
    assert (norms <= 0.2 * (1 + 1e-5)).all()
    assert (norms[~res.success] > 0.15).all()  # unfooled clips are pushed out to the sphere


# -- NES and ZOO -------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: NES(NESParams(eps=0.05, budget=1000, population=20, sigma=0.01)),
    lambda: ZOO(ZOOParams(eps=0.05, budget=1000, learning_rate=0.05, h=1e-3, block=8)),
], ids=["nes", "zoo"])
def test_black_box_attacks_fool_the_tiny_model_with_a_large_eps(tiny, make):
    model, x, y = tiny
    att = make()
    res = attack(att, model, x, y, allow_gradients=False, budget=att.params.budget)
    assert res.success.float().mean() >= 0.8, res.success
    assert (res.adv - x).abs().max() <= 0.05 + 1e-7
    assert int(res.queries.max()) <= 1000


@pytest.mark.parametrize("make, budget", [
    (lambda b: NES(NESParams(budget=b, population=10)), 100),  # 9 x (1 + 10) + 1 = 100
    (lambda b: ZOO(ZOOParams(budget=b, coordinates=4)), 100),  # 11 x (1 + 8) + 1 = 100
    (lambda b: NES(NESParams(budget=b, population=10)), 97),  # 8 x 11 + 1 + 4 pairs = 97
    (lambda b: ZOO(ZOOParams(budget=b, coordinates=4)), 97),  # 10 x 9 + 1 + 3 coords = 97
], ids=["nes-100", "zoo-100", "nes-97", "zoo-97"])
def test_budget_exhaustion_stops_exactly_at_the_budget(make, budget):
    model, x, y = fragile_setup()  # clips 2 and 3 cannot be fooled: they spend everything
    res = attack(make(budget), model, x, y, allow_gradients=False, budget=budget)
    assert res.queries[2:].tolist() == [budget, budget]
    assert int(res.queries[0]) == 1  # already wrong: one query to find out


def test_black_box_attacks_stop_a_clip_once_it_is_fooled():
    model, x, y = fragile_setup()
    for att in (NES(NESParams()), ZOO(ZOOParams())):
        res = attack(att, model, x, y, allow_gradients=False, budget=1000)
        assert res.success[1] and int(res.queries[1]) < 400, (type(att).__name__, res.queries)


def test_zoo_step_scales_with_eps():
    """ZOO v1 had a fixed Adam step (0.002), so a larger radius changed nothing: its perturbation
    stayed at the step's size. v2's step is ``step_fraction * eps``."""
    model = TinyClassifier()
    model.load()
    x = tone_batch(12, model.input_samples, seed=3)
    with torch.no_grad():
        y = Scorer(model).predict(x)

    def zoo(**params):
        att = ZOO(ZOOParams(budget=300, block=8, **params))
        return attack(att, model, x, y, allow_gradients=False, budget=300)

    small, large, larger = zoo(eps=0.002), zoo(eps=0.01), zoo(eps=0.03)
    assert ZOOParams(eps=0.01).step == 0.01 and ZOOParams(eps=0.002).step == 0.002
    assert (large.adv - x).abs().amax(1).min() > 0.009  # the step reaches the new radius
    assert l2(large, x).mean() > 3 * l2(small, x).mean()
    assert int(small.success.sum()) < int(large.success.sum()) < int(larger.success.sum())
    # The absolute step (v1's reading) is still expressible, and with it the radius stops
    # mattering once it exceeds what a few Adam steps can reach.
    fixed = [zoo(eps=eps, learning_rate=0.002) for eps in (0.01, 0.03)]
    assert torch.equal(fixed[0].adv, fixed[1].adv)
    assert int(fixed[0].success.sum()) < int(large.success.sum())


def test_unbounded_zoo_needs_an_absolute_step():
    with pytest.raises(ValueError, match="learning_rate"):
        ZOOParams(eps=None, const=1.0)
    assert ZOOParams(eps=None, const=1.0, learning_rate=0.002).step == 0.002
