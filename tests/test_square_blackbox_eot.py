"""Square, NES and ZOO against a randomized defense (EOT): a clip that resampling alone makes
wrong on some draws is never stopped by the attack, the search runs on the draw-averaged
scores, and every iteration costs its rows times the draws, within the budget."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from test_attack_contracts import FragileModel
from torch import nn

from musicbench.api import score_rows
from musicbench.interfaces import Preprocessor, TargetModel
from musicbench.victim import Scorer, Victim, begin_batch, margin_from_logits
from musicbench_plugins.attacks.nes import NES, NESParams
from musicbench_plugins.attacks.square import Square, SquareParams
from musicbench_plugins.attacks.zoo import ZOO, ZOOParams

DRAWS = 8
BUDGET = 200  # 25 rows of 8 draws


@dataclass(frozen=True)
class CoinParams:
    chance: float = 0.4
    offset: float = 0.5


class Coin(Preprocessor):
    """Randomized: on each draw, each clip is shifted up by ``offset`` with probability
    ``chance`` (a DC shift the mean-reading model below cannot tell from its input)."""

    randomized = True
    Params = CoinParams

    def forward(self, audio, generator):
        heads = torch.rand(audio.shape[0], 1, generator=generator, device=audio.device)
        return (audio + self.params.offset * (heads < self.params.chance)).clamp(-1, 1)


class _MeanNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(1)
        return torch.stack([0.25 - m, torch.zeros_like(m)], 1)


class MeanModel(FragileModel):
    """Two classes; class 0 wins while the clip's mean is below 0.25. An L-inf perturbation
    of 0.002 moves the mean by at most 0.002: only the Coin's shift decides a draw."""

    def __init__(self):
        TargetModel.__init__(self, None)
        self.name = "mean"
        self.net = _MeanNet()


def setup():
    model = MeanModel()
    t = torch.arange(4000) / 16_000
    x = 0.1 * torch.sin(2 * torch.pi * torch.tensor([[220.0], [330.0]]) * t)
    defense = Coin()
    defense.name = "coin"
    defense.bind(16_000)
    victim = Victim(model, defense=defense, eot_samples=DRAWS, allow_gradients=False,
                    budget=BUDGET, generator=torch.Generator().manual_seed(0))
    return model, defense, victim, x, torch.zeros(2, dtype=torch.long)


def test_the_clips_are_wrong_on_some_draws_by_resampling_alone():
    model, defense, _, x, y = setup()
    verdict = Scorer(model, defense=defense, generator=torch.Generator().manual_seed(5)
                     ).judge(x, y, draws=400)
    assert (verdict.wrong_fraction > 0.3).all() and (verdict.wrong_fraction < 0.5).all()
    assert not verdict.fooled.any()


# rows per iteration, rows before the first iteration (clean check, Square's start)
ATTACKS = {
    "square": (Square(SquareParams(budget=BUDGET)), 1, 2),
    "nes": (NES(NESParams(budget=BUDGET, population=4)), 5, 0),
    "zoo": (ZOO(ZOOParams(budget=BUDGET, coordinates=2)), 5, 0),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_clip_wrong_on_some_draws_is_not_stopped_and_every_draw_is_counted(name):
    attack, rows_per_iteration, rows_before = ATTACKS[name]
    attack.name = name
    model, _, victim, x, y = setup()
    res = attack(victim, x, y, generator=torch.Generator().manual_seed(1))
    # Both clips ran until the budget was spent: neither a wrong draw (98 in 100 rows have
    # one) nor a wrong draw-average (41 in 100) stopped them, only all 8 draws wrong would
    rows = BUDGET // DRAWS
    assert res.steps.tolist() == [(rows - rows_before) // rows_per_iteration] * 2
    assert res.queries.tolist() == [DRAWS * (rows_before + rows_per_iteration * s)
                                    for s in res.steps.tolist()]
    assert int(res.queries.max()) <= BUDGET and victim.used_eot
    assert not res.success.any()


def test_score_rows_takes_the_margin_of_the_draw_averaged_scores():
    model, _, victim, x, y = setup()
    begin_batch(victim, 2)
    index = torch.tensor([0, 0, 1])
    rows, target = x[index], y[index]
    gen = victim.generator.get_state()
    value, margin = score_rows(victim, rows, target, index, "margin", chunk=3)
    assert victim.queries.tolist() == [2 * DRAWS, DRAWS]
    victim.generator.set_state(gen)  # the same draws again, seen one by one
    draws = victim._logits_draws(rows, index, False)  # [D, R, K]
    assert torch.allclose(value, margin_from_logits(draws.mean(0), target))
    assert torch.allclose(margin, margin_from_logits(draws, target).amax(0))
    # one draw per row (no defense): the two margins agree
    plain = Victim(model, allow_gradients=False)
    begin_batch(plain, 2)
    value, margin = score_rows(plain, rows, target, index, "margin", chunk=32)
    assert torch.equal(value, margin)
