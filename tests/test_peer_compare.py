"""benchmarks/peer_compare.py: the parameter conversions between our [-1, 1] convention and
each peer library's are right (the same attack, not a rescaled one), and run without any peer
library installed."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import benchmark_script


def _load():
    return benchmark_script("peer_compare")


def test_settings_for_a_01_library_halve_radii_and_quarter_c():
    peer = _load()
    s = peer.Settings(eps=0.002, step_size=0.00025, pgd_steps=20, cw_c=1.0, cw_lr=3e-4,
                      cw_steps=50, kappa=0.5)
    t = peer.in_range(s, (0.0, 1.0))
    assert math.isclose(t.eps, 0.001) and math.isclose(t.step_size, 0.000125)
    assert math.isclose(t.cw_c, 0.25)
    # Adam acts on w (x = tanh(w)) and kappa is a logit margin: neither depends on the range.
    assert (t.cw_lr, t.kappa, t.pgd_steps, t.cw_steps) == (3e-4, 0.5, 20, 50)
    assert peer.in_range(s, (-1.0, 1.0)) == s
    with pytest.raises(ValueError, match="hi > lo"):
        peer.in_range(s, (1.0, 0.0))


def test_the_cw_objective_in_01_with_c_over_4_is_ours_over_4():
    peer = ta = _load()  # to01 / from01 are torchattacks_compare's, imported there
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 64, generator=g) * 2 - 1
    adv = (x + 0.05 * torch.randn(3, 64, generator=g)).clamp(-1, 1)
    margin = torch.tensor([0.3, -0.2, 1.5])
    c = 0.7
    t = peer.in_range(peer.Settings(cw_c=c), (0.0, 1.0))

    def objective(clean, a, const):
        return (a - clean).pow(2).sum(1) + const * margin.clamp(min=0)

    ours = objective(x, adv, c)
    theirs = objective(ta.to01(x), ta.to01(adv), t.cw_c)
    assert torch.allclose(theirs, ours / 4)  # the same minimiser in w


def test_the_linf_projection_in_01_is_ours():
    peer = ta = _load()  # to01 / from01 are torchattacks_compare's, imported there
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 32, generator=g) * 2 - 1
    stepped = x + 0.01 * torch.randn(2, 32, generator=g)
    eps = 0.002
    t = peer.in_range(peer.Settings(eps=eps), (0.0, 1.0))
    ours = torch.clamp(stepped, x - eps, x + eps).clamp(-1, 1)
    x01 = ta.to01(x)
    theirs = ta.from01(torch.clamp(ta.to01(stepped), x01 - t.eps, x01 + t.eps).clamp(0, 1))
    assert torch.allclose(theirs, ours, rtol=0, atol=1e-6)


def test_every_library_gets_the_same_steps_one_search_step_and_untargeted():
    peer = _load()
    s = peer.Settings(eps=0.002, step_size=0.00025, pgd_steps=20, cw_c=1.0, cw_lr=3e-4,
                      cw_steps=50)
    ta_pgd, ta_cw = peer.torchattacks_kwargs(s)
    assert ta_pgd == {"eps": 0.001, "alpha": 0.000125, "steps": 20, "random_start": True}
    assert ta_cw == {"c": 0.25, "kappa": 0.0, "steps": 50, "lr": 3e-4}

    art_pgd, art_cw = peer.art_kwargs(s, batch=16, cw_lr=0.01)
    assert (art_pgd["eps"], art_pgd["eps_step"], art_pgd["max_iter"]) == (0.002, 0.00025, 20)
    assert art_pgd["norm"] == math.inf and art_pgd["num_random_init"] == 1
    assert art_cw["initial_const"] == 1.0 and art_cw["max_iter"] == 50
    assert art_cw["binary_search_steps"] == 1 and art_cw["learning_rate"] == 0.01
    assert art_pgd["batch_size"] == art_cw["batch_size"] == 16  # ART's C&W default is 1
    assert art_pgd["targeted"] is art_cw["targeted"] is False

    fb_pgd, fb_eps, fb_cw = peer.foolbox_kwargs(s, abort_early=False)
    assert fb_pgd == {"abs_stepsize": 0.00025, "steps": 20, "random_start": True}
    assert fb_eps == 0.002
    assert fb_cw == {"binary_search_steps": 1, "steps": 50, "stepsize": 3e-4, "confidence": 0.0,
                     "initial_const": 1.0, "abort_early": False}


def test_foolbox_nothing_found_zeros_become_the_clean_clip():
    peer = _load()
    x = torch.tensor([[0.1, -0.2], [0.3, 0.4], [0.0, 0.0]])
    adv = torch.tensor([[0.0, 0.0], [0.31, 0.4], [0.0, 0.0]])  # clip 0: nothing found
    fixed, never = peer.nothing_found_to_clean(adv, x)
    assert never == 1  # the silent clean clip (row 2) is not counted
    assert torch.equal(fixed, torch.tensor([[0.1, -0.2], [0.31, 0.4], [0.0, 0.0]]))
