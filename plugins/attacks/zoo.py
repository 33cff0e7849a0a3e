"""ZOO: zeroth-order optimisation, a score-based black-box attack with coordinate-wise finite
differences and per-coordinate Adam.

Chen, Zhang, Sharma, Yi, Hsieh, "ZOO: Zeroth Order Optimization Based Black-box Attacks to Deep
Neural Networks without Training Substitute Models", AISec 2017 (ZOO-ADAM, their Algorithm 2).
The objective is ``max(margin(x + δ), -κ)`` inside an L-inf ball (default), or the paper's
C&W form ``‖δ‖₂² + c · max(margin(x + δ), -κ)`` when ``const`` is set, lowered by Adam one
random block of coordinates at a time: each chosen coordinate's partial derivative of the
margin term comes from a symmetric difference ``[f(z + h e_j) - f(z - h e_j)] / 2h`` (two
queries), the distortion term's exactly (it needs no query). Under an L-inf bound the
distortion term only fights the attack (on the tiny test model, c = 10 halved the success
rate), so it is off by default; an unbounded ZOO needs it.

A 4 s clip at 16 kHz has 64 000 samples, and 1 000 queries estimate at most 500 partial
derivatives, so the perturbation lives in a smaller space, the paper's "attack-space dimension
reduction": ``δ = upsample(z)``, each coordinate of ``z`` being a block of ``block``
consecutive samples (nearest-neighbour upsampling: piecewise constant, which keeps the
perturbation broadband; ``block = 1`` is the plain per-sample ZOO). The paper's importance
sampling and hierarchical attack are not implemented (coordinates are drawn uniformly without
replacement per clip and iteration).

Readings of what the paper leaves open, as parameters (see :class:`ZOOParams`): an optional
L-inf bound ``eps`` (default 0.002, pgd's radius, so the black-box and white-box cells share a
threat model; None = unbounded as in the paper), coordinates per iteration, ``h``, Adam's
learning rate, ``c`` (fixed when set: no binary search on c, which a 1 000-query budget cannot
afford).

**The step scales with the radius.** Adam's first update of a coordinate moves it by exactly
the learning rate (m̂ / sqrt(v̂) = ±1 after one gradient), and a 1 000-query budget updates
most chosen coordinates once or twice, so the learning rate, not ``eps``, is what bounds the
perturbation in practice. Version 1 used a fixed 0.002: at ``eps = 0.01`` almost no coordinate
got near the radius and the attack behaved as at 0.002 (same ASR in leaderboards/maia.md).
Now the learning rate is ``step_fraction · eps`` (default 1.0: a coordinate's first update
takes it to the boundary, which at ``eps = 0.002`` is exactly version 1's 0.002);
``learning_rate`` set to a number is the absolute step of version 1, and an unbounded ZOO
(no radius to scale by) needs it. ``h`` stays absolute: it sets how local the derivative
estimate is (the model's smoothness and float32 resolution), not how far the attack may go —
as NES keeps ``sigma`` absolute while its step is ``eps / 5``.

Queries: each iteration checks the current iterate (1 query; a clip stops as soon as it is
misclassified) and then spends 2 queries per chosen coordinate; the last iteration takes only
the coordinates the budget leaves, so a clip never exceeds ``budget``. The final iterate is
re-scored by the harness, uncounted. Only forward queries: the Victim refuses gradients.

**Randomized defenses (EOT).** Every row costs ``eot_samples`` queries
(:attr:`Victim.queries_per_row`); coordinates are planned in rows with
:func:`musicbench.api.remaining_budget`, so ``queries = rows × draws <= budget``. The finite
differences are taken of the margin of the draw-averaged scores (a difference of two
pessimistic per-draw maxima would mostly measure which draw was luckier), and a clip stops
only on the Victim's margin of its current iterate (<= 0 only when the model is wrong on every
draw), never because resampling alone made it wrong on some draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import check_number, remaining_budget, score_rows
from musicbench.interfaces import Attack, AttackResult, Bound
from musicbench.victim import Victim
from musicbench_plugins._limits import (
    MAX_LEARNING_RATE,
    MAX_LINF_EPS,
    MAX_QUERIES,
    MAX_SIZE,
    MAX_WEIGHT,
)

_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class ZOOParams:
    """``eps``: L-inf radius (None: unbounded). ``budget``: queries per clip. ``coordinates``:
    coordinates estimated per iteration (2 queries each). ``block``: samples per coordinate
    (the dimension reduction). ``h``: finite-difference step (waveform units).
    ``step_fraction``: Adam's learning rate per coordinate as a fraction of ``eps``.
    ``learning_rate``: an absolute learning rate instead (overrides ``step_fraction``; needed
    when ``eps`` is unset). ``const``: c of the paper's objective ``‖δ‖² + c·margin``; None =
    margin only (needs ``eps``). ``kappa``: confidence. ``query_chunk``: rows per forward pass
    (memory only)."""

    eps: float | None = 0.002
    budget: int = 1000
    coordinates: int = 16
    block: int = 32
    h: float = 1e-4
    step_fraction: float = 1.0
    learning_rate: float | None = None
    const: float | None = None
    kappa: float = 0.0
    query_chunk: int = 32  # 256 rows of musicnn windows peaked at 8.3 GB (docs/benchmarks.md)

    def __post_init__(self) -> None:
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"eps must be > 0 or unset, got {self.eps}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")
        if self.coordinates < 1:
            raise ValueError(f"coordinates must be >= 1, got {self.coordinates}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        if not self.h > 0:
            raise ValueError(f"h must be > 0, got {self.h}")
        if not self.step_fraction > 0:
            raise ValueError(f"step_fraction must be > 0, got {self.step_fraction}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 or unset, got {self.learning_rate}")
        if self.eps is None and self.learning_rate is None:
            raise ValueError("an unbounded ZOO (eps unset) has no radius to scale its step by: "
                             "set learning_rate (e.g. 0.002, version 1's default)")
        if self.const is not None and not self.const > 0:
            raise ValueError(f"const must be > 0 or unset, got {self.const}")
        if self.eps is None and self.const is None:
            raise ValueError("an unbounded ZOO (eps unset) needs const, the weight of the "
                             "margin against the L2 distortion (the paper's objective)")
        if not self.kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")
        if self.query_chunk < 1:
            raise ValueError(f"query_chunk must be >= 1, got {self.query_chunk}")
        if self.eps is not None:
            check_number("eps", self.eps, above=0, at_most=MAX_LINF_EPS)
        check_number("budget", self.budget, at_least=1, at_most=MAX_QUERIES, integer=True)
        check_number("coordinates", self.coordinates, at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("block", self.block, at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("h", self.h, above=0, at_most=MAX_LINF_EPS)
        check_number("step_fraction", self.step_fraction, above=0, at_most=100)
        if self.learning_rate is not None:
            check_number("learning_rate", self.learning_rate, above=0, at_most=MAX_LEARNING_RATE)
        if self.const is not None:
            check_number("const", self.const, above=0, at_most=MAX_WEIGHT)
        check_number("kappa", self.kappa, at_least=0, at_most=MAX_WEIGHT)
        check_number("query_chunk", self.query_chunk, at_least=1, at_most=MAX_SIZE, integer=True)

    @property
    def step(self) -> float:
        """Adam's learning rate per coordinate: ``learning_rate`` if set, else
        ``step_fraction · eps``."""
        if self.learning_rate is not None:
            return self.learning_rate
        return self.step_fraction * (self.eps or 0.0)  # both unset is refused above


def upsample(z: torch.Tensor, block: int, length: int) -> torch.Tensor:
    """``z[..., N]`` -> ``[..., length]``: each coordinate repeated over ``block`` samples."""
    return z.repeat_interleave(block, dim=-1)[..., :length]


class ZOO(Attack):
    """ZOO-ADAM over random coordinate blocks with per-clip early stop and query budget.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``; ``steps[B]`` counts
    the Adam iterations each clip took.
    """

    threat = "black-box"
    version = "3"  # 3: under EOT, differences of the draw-averaged margin; 2: learning rate
    # = step_fraction * eps (was a fixed 0.002)
    Params = ZOOParams

    def bound(self) -> Bound | None:
        return Bound("linf", self.params.eps) if self.params.eps is not None else None

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
        n = -(-length // p.block)  # coordinates of the reduced space
        # Samples per coordinate (the last block may be short): d‖upsample(z)‖² / dz_j.
        sizes = torch.full((n,), float(p.block), device=dev, dtype=dt)
        sizes[-1] = length - (n - 1) * p.block
        z = torch.zeros(batch, n, device=dev, dtype=dt)
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        clock = torch.zeros_like(z)  # per-coordinate Adam time step
        steps = torch.zeros(batch, dtype=torch.long, device=dev)
        active = torch.arange(batch, device=dev)
        b1, b2 = _BETAS
        lr = p.step
        while active.numel() and remaining_budget(victim, p.budget, active) >= 1:
            adv = (audio[active] + upsample(z[active], p.block, length)).clamp_(-1, 1)
            _, centre = score_rows(victim, adv, target[active], active, "margin", p.query_chunk)
            keep = centre > 0  # misclassified clips stop here
            active, adv = active[keep], adv[keep]
            k = min(p.coordinates, n, remaining_budget(victim, p.budget, active) // 2)
            if active.numel() == 0 or k == 0:
                break
            b = active.numel()
            coords = torch.rand(b, n, generator=generator, device=dev).topk(k, dim=1).indices
            onehot = torch.zeros(b, k, n, device=dev, dtype=dt)
            onehot.scatter_(2, coords.unsqueeze(2), 1.0)
            bump = p.h * upsample(onehot, p.block, length)  # [b, k, T]
            x = adv.unsqueeze(1)
            rows = torch.cat([x + bump, x - bump], 1).clamp_(-1, 1).reshape(b * 2 * k, length)
            del bump
            index = active.repeat_interleave(2 * k)
            value, _ = score_rows(victim, rows, target[index], index, "margin",
                                  p.query_chunk)
            del rows
            f = value.clamp(min=-p.kappa).reshape(b, 2, k)
            zc = z[active].gather(1, coords)
            grad = (f[:, 0] - f[:, 1]) / (2 * p.h)
            if p.const is not None:  # the paper's objective: c * margin + ‖upsample(z)‖²
                grad = p.const * grad + 2 * zc * sizes[coords]
            # Adam on the chosen coordinates only, each with its own clock (ZOO-ADAM).
            mc = m[active].gather(1, coords).mul_(b1).add_(grad, alpha=1 - b1)
            vc = v[active].gather(1, coords).mul_(b2).addcmul_(grad, grad, value=1 - b2)
            tc = clock[active].gather(1, coords) + 1
            zc = zc - lr * (mc / (1 - b1 ** tc)) / (
                (vc / (1 - b2 ** tc)).sqrt() + _ADAM_EPS)
            if p.eps is not None:
                zc = zc.clamp(-p.eps, p.eps)
            for state, value in ((m, mc), (v, vc), (clock, tc), (z, zc)):
                rows_state = state[active]
                rows_state.scatter_(1, coords, value)
                state[active] = rows_state
            steps[active] += 1
        adv = (audio + upsample(z, p.block, length)).clamp_(-1, 1)
        return AttackResult(adv=adv, success=torch.zeros(batch, dtype=torch.bool, device=dev),
                            queries=victim.queries.clone(), steps=steps)
