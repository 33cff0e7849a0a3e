"""Square Attack, L-inf: score-based black-box random search on the margin, in 1-D.

Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (Algorithms 1 and 2, the L-inf attack; one
of the attacks of AutoAttack). On the waveform:

- **initialisation** (the paper's vertical stripes, in 1-D): ``x + ε·s`` with ``s`` a random
  sign per block of ``init_block`` samples (the image version draws one sign per column, so
  the pattern is constant along one axis; a waveform has one axis, and the block length is
  the parameter that says how coarse the pattern is), clipped to [-1, 1];
- **updates** on a contiguous window of the waveform, the 1-D square: a window of
  ``max(1, round(p·T))`` samples at a uniformly random position is set to ``x ± ε`` with one
  random sign for the whole window (the paper sets a square to one random ±ε per colour
  channel); if that changes nothing (the window already is at that sign), the sign flips;
- **window schedule**: the fraction ``p`` starts at ``p_init`` and halves at iterations
  10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10 000-query run, the iteration
  rescaled to the query budget as the paper does for other budgets
  (``i → ⌊i / budget · 10 000⌋``, :func:`window_fraction`);
- **acceptance**: the candidate replaces the current point when it lowers the margin loss
  ``z_y − max_{i≠y} z_i`` (the victim's margin: logits, or best similarity to the true work
  minus the best to another for retrieval). A clip stops as soon as its margin is <= 0.

Queries, every one counted by the Victim against ``budget`` (the harness's budget too, when
it sets one): 1 for the clean clip (a clip the model already gets wrong stops there), 1 for
the initial point, then 1 per iteration; each clip stops at its budget, never above.
Only forward queries: the Victim of a black-box attack refuses gradients.

Readings and defaults (:class:`SquareParams`): ``eps = 0.002`` (the benchmark's L-inf radius,
so Square shares a threat model with ``pgd`` and ``apgd``), ``budget = 1000`` (the other
black-box attacks' budget), ``p_init = 0.05`` (the paper's L-inf value for its ImageNet and
CIFAR runs; AutoAttack's "standard" version uses 0.8 with 5000 queries), ``init_block = 1``
(one sign per sample: the initial point is the loudest perturbation the ball allows, white
rather than striped; a parameter).

Measured on 20 clean-correct m21-styles clips of style-cnn at eps 0.002, 1000 queries (ASR):
the defaults 7/20; ``init_block = 16`` 7/20; ``p_init = 0.8`` (AutoAttack's) 8/20; windows
filled with a fresh sign per sample instead of one per window (not the paper's) 5/20. PGD
(20 steps) fooled 18/20: on undefended targets Square is the weakest member of the ensemble;
it is there for defenses that mask gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import (
    Attack,
    AttackResult,
    Bound,
    Victim,
    check_number,
    remaining_budget,
    score_rows,
)
from musicbench_plugins._limits import MAX_LINF_EPS, MAX_QUERIES, MAX_SIZE

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
"""Iterations (of a 10 000-query run) after which the paper halves ``p``."""


@dataclass(frozen=True)
class SquareParams:
    """``eps``: L-inf radius. ``budget``: queries per clip. ``p_init``: the initial window as a
    fraction of the clip. ``init_block``: samples per random sign of the initial point.
    ``query_chunk``: rows per forward pass (memory only; results do not depend on it)."""

    eps: float = 0.002
    budget: int = 1000
    p_init: float = 0.05
    init_block: int = 1
    query_chunk: int = 32  # 256 rows of musicnn windows peaked at 8.3 GB (docs/benchmarks.md)

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if not 0 < self.p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")
        if self.init_block < 1:
            raise ValueError(f"init_block must be >= 1, got {self.init_block}")
        if self.query_chunk < 1:
            raise ValueError(f"query_chunk must be >= 1, got {self.query_chunk}")
        check_number("eps", self.eps, above=0, at_most=MAX_LINF_EPS)
        check_number("budget", self.budget, at_least=1, at_most=MAX_QUERIES, integer=True)
        check_number("init_block", self.init_block, at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("query_chunk", self.query_chunk, at_least=1, at_most=MAX_SIZE, integer=True)


def window_fraction(iteration: int, budget: int, p_init: float) -> float:
    """The fraction ``p`` of the clip a window covers at ``iteration`` (0-based, after the
    initial point): ``p_init`` halved once for every entry of :data:`HALVINGS` that the
    iteration, rescaled to a 10 000-query run, is past."""
    rescaled = int(iteration / budget * 10_000)
    return p_init / 2 ** sum(rescaled > h for h in HALVINGS)


class Square(Attack):
    """Square Attack (L-inf) on the waveform, with per-clip early stop and query budget.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``; ``steps[B]`` counts
    the random-search iterations (window proposals) each clip took.
    """

    threat = "black-box"
    version = "2"
    Params = SquareParams

    def bound(self) -> Bound:
        return Bound("linf", self.params.eps)

    @torch.no_grad()
    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        p = self.params
        batch, length = audio.shape
        dev, dt = audio.device, audio.dtype
        eps = p.eps
        lo, hi = (audio - eps).clamp(min=-1), (audio + eps).clamp(max=1)
        steps = torch.zeros(batch, dtype=torch.long, device=dev)
        adv = audio.clone()
        active = torch.arange(batch, device=dev)

        def margin_of(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return score_rows(victim, rows, target[index], index, "margin", p.query_chunk)[1]

        if remaining_budget(victim, p.budget, active) < 1:
            return self._result(adv, victim, steps)
        active = active[margin_of(audio, active) > 0]  # already wrong: never attacked
        if active.numel() == 0 or remaining_budget(victim, p.budget, active) < 1:
            return self._result(adv, victim, steps)
        # Stripes: one random sign per block of init_block samples.
        blocks = -(-length // p.init_block)
        signs = torch.randint(0, 2, (batch, blocks), generator=generator, device=dev)
        signs = (2 * signs - 1).to(dt).repeat_interleave(p.init_block, dim=1)[:, :length]
        start = (audio + eps * signs).clamp(lo, hi)
        adv[active] = start[active]
        best = margin_of(adv[active], active)
        keep = best > 0
        active, best = active[keep], best[keep]
        positions = torch.arange(length, device=dev)
        # The p schedule runs over the iterations the budget buys: against a randomized
        # defense every scored row costs victim.queries_per_row queries (EOT draws).
        iterations = max(1, p.budget // victim.queries_per_row)
        iteration = 0
        while active.numel() and remaining_budget(victim, p.budget, active) >= 1:
            b = active.numel()
            width = min(length, max(1, round(window_fraction(iteration, iterations, p.p_init)
                                            * length)))
            first = torch.randint(0, length - width + 1, (b, 1), generator=generator,
                                  device=dev)
            window = (positions >= first) & (positions < first + width)  # [b, T]
            sign = (2 * torch.randint(0, 2, (b, 1), generator=generator, device=dev) - 1).to(dt)
            current, clean = adv[active], audio[active]
            low, high = lo[active], hi[active]
            proposal = (clean + eps * sign).clamp(low, high)
            same = ((proposal == current) | ~window).all(1, keepdim=True)
            sign = torch.where(same, -sign, sign)  # nothing would change: the other sign
            proposal = (clean + eps * sign).clamp(low, high)
            candidate = torch.where(window, proposal, current)
            margin = margin_of(candidate, active)
            better = margin < best
            adv[active[better]] = candidate[better]
            best = torch.where(better, margin, best)
            steps[active] += 1
            iteration += 1
            keep = best > 0
            active, best = active[keep], best[keep]
        return self._result(adv, victim, steps)

    @staticmethod
    def _result(adv: torch.Tensor, victim: Victim, steps: torch.Tensor) -> AttackResult:
        return AttackResult(adv=adv, success=torch.zeros_like(steps, dtype=torch.bool),
                            queries=victim.queries.clone(), steps=steps)
