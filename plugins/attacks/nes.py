"""NES: a score-based black-box attack with natural-evolution-strategies gradient estimates.

Ilyas, Engstrom, Athalye, Lin, "Black-box Adversarial Attacks with Limited Queries and
Information", ICML 2018. Each iteration estimates the gradient of the attack objective from
antithetic Gaussian samples, ``g = 1/(2nσ) Σ_i [f(x + σu_i) - f(x - σu_i)] u_i``, and takes a
signed PGD step on it inside the L-inf ball (projected onto the ball and onto [-1, 1]).

Readings of what the paper leaves open for audio, as parameters (see :class:`NESParams`):

- ``eps = 0.002``: the same L-inf radius as ``pgd``'s default (docs/architecture.md,
  'Threat models'), so NES and PGD are compared under one threat model and the harness's
  "black-box stronger than white-box"
  flag is meaningful. About -54 dBFS; for a clip at -20 dBFS RMS, an SNR of at least ~34 dB.
- ``sigma = 0.001`` (half of eps, the ratio Ilyas et al. use for images),
  ``population = 50`` (25 antithetic pairs, as in the paper), ``step_size = eps / 5``, the
  objective the victim's margin (lowered; the cross-entropy is an option), optional momentum
  on the estimate (0 = the paper's plain estimate).

Queries: every forward of a perturbed copy counts as one query of its clip, and so does the
check of the current iterate at the start of each iteration (which is how a clip learns it is
done: it stops at once). An iteration costs ``1 + population`` queries per clip; the last one
shrinks its population to what the budget leaves, so a clip never exceeds ``budget``. The final
iterate is not checked by the attack (the harness re-scores every returned clip, uncounted).
Only forward queries are used: the Victim of a black-box attack refuses gradients.

**Randomized defenses (EOT).** The Victim scores every row over ``eot_samples`` draws and
counts each draw as a query (:attr:`Victim.queries_per_row`); the population of the last
iteration is planned in rows with :func:`musicbench.api.remaining_budget`, so ``queries =
rows × draws <= budget``. The gradient is estimated from the draw-averaged objective
(:func:`musicbench.api.score_rows`: the margin of the averaged scores, or the averaged
cross-entropy);
a clip stops only on the Victim's margin of its current iterate, which under EOT is <= 0
only when the model is wrong on every draw, so a clip that resampling alone makes wrong on
some draws is never dropped (the harness judges the returned clip over its own draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import Objective, check_number, remaining_budget, score_rows
from musicbench.interfaces import Attack, AttackResult, Bound
from musicbench.victim import Victim
from musicbench_plugins._limits import MAX_LINF_EPS, MAX_QUERIES, MAX_SIZE


@dataclass(frozen=True)
class NESParams:
    """``budget``: queries per clip. ``population``: perturbed copies per iteration (even:
    antithetic pairs). ``step_size`` None = eps / 5. ``query_chunk``: rows per forward pass
    (memory only; results do not depend on it)."""

    eps: float = 0.002
    budget: int = 1000
    population: int = 50
    sigma: float = 0.001
    step_size: float | None = None
    momentum: float = 0.0
    objective: Objective = "margin"
    query_chunk: int = 32  # 256 rows of musicnn windows peaked at 8.3 GB (docs/benchmarks.md)

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if self.population < 2 or self.population % 2:
            raise ValueError(f"population must be even and >= 2, got {self.population}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.objective not in ("margin", "cross-entropy"):
            raise ValueError(f"objective must be 'margin' or 'cross-entropy', got "
                             f"{self.objective!r}")
        if self.query_chunk < 1:
            raise ValueError(f"query_chunk must be >= 1, got {self.query_chunk}")
        check_number("eps", self.eps, above=0, at_most=MAX_LINF_EPS)
        check_number("budget", self.budget, at_least=1, at_most=MAX_QUERIES, integer=True)
        check_number("population", self.population, at_least=2, at_most=MAX_SIZE, integer=True)
        check_number("sigma", self.sigma, above=0, at_most=MAX_LINF_EPS)
        if self.step_size is not None:
            check_number("step_size", self.step_size, above=0, at_most=MAX_LINF_EPS)
        check_number("query_chunk", self.query_chunk, at_least=1, at_most=MAX_SIZE, integer=True)


class NES(Attack):
    """Antithetic NES gradient estimates + signed L-inf steps, per-clip early stop and budget.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``; ``steps[B]`` counts
    the gradient steps each clip took.
    """

    threat = "black-box"
    version = "2"  # 2: under EOT the estimate uses the margin of the draw-averaged scores
    Params = NESParams

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
        eps = p.eps
        alpha = p.step_size if p.step_size is not None else eps / 5
        batch, length = audio.shape
        dev = audio.device
        adv = audio.clone()
        lo, hi = (audio - eps).clamp(min=-1), (audio + eps).clamp(max=1)
        velocity = torch.zeros_like(audio)
        steps = torch.zeros(batch, dtype=torch.long, device=dev)
        active = torch.arange(batch, device=dev)
        while active.numel() and remaining_budget(victim, p.budget, active) >= 1:
            # Is the current iterate already adversarial? (The clean clip the first time.)
            _, centre = score_rows(victim, adv[active], target[active], active, p.objective,
                                   p.query_chunk)
            active = active[centre > 0]
            pairs = min(p.population, remaining_budget(victim, p.budget, active)) // 2
            if active.numel() == 0 or pairs == 0:
                break
            b = active.numel()
            u = torch.randn(b, pairs, length, generator=generator, device=dev,
                            dtype=audio.dtype)
            x = adv[active].unsqueeze(1)
            rows = torch.cat([x + p.sigma * u, x - p.sigma * u], 1).clamp_(-1, 1)
            index = active.repeat_interleave(2 * pairs)
            f, _ = score_rows(victim, rows.reshape(b * 2 * pairs, length), target[index],
                              index, p.objective, p.query_chunk)
            f = f.reshape(b, 2, pairs)
            del rows
            # Gradient of the objective (lowered) from antithetic differences.
            grad = torch.einsum("bp,bpt->bt", f[:, 0] - f[:, 1], u) / (2 * pairs * p.sigma)
            if p.momentum > 0:
                grad = velocity[active].mul_(p.momentum).add_(grad, alpha=1 - p.momentum)
                velocity[active] = grad
            stepped = adv[active] - alpha * grad.sign()
            adv[active] = torch.clamp(stepped, lo[active], hi[active])
            steps[active] += 1
        return AttackResult(adv=adv, success=torch.zeros(batch, dtype=torch.bool, device=dev),
                            queries=victim.queries.clone(), steps=steps)
