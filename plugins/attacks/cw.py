"""Carlini & Wagner's L2 attack on the waveform.

Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.
Untargeted L2 variant: minimise ``‖x̂ - x‖₂² + c · max(margin(x̂) + κ, 0)`` over ``x̂ = tanh(w)``
(the change of variables keeps every iterate inside [-1, 1] with no clipping), with Adam on
``w`` and a per-clip binary search over ``c``. ``margin`` is the Victim's: true logit minus the
best other logit, the other-class maximum taken with the true class masked out by -inf (so it
is right when every logit is negative, a known fault of some implementations); for retrieval it
is the Victim's work-similarity margin, so the same code attacks both tasks.

What the paper leaves open, as parameters (defaults in :class:`CWParams`): the initial ``c``,
the number of binary-search steps and of Adam steps per search step, the learning rate, κ,
and early abort. Our readings:

- Each search step restarts from the clean clip (``w = atanh(x)``) with fresh Adam state, as
  the paper does, so the search steps are independent optimisations with different ``c``.
- Success, for the attack's own bookkeeping (best-so-far, binary search, early abort), is
  margin <= -κ, as in the paper (its ``compare`` adds κ to the true class's logit before
  taking the argmax): the best adversarial clip of a sample is the iterate with margin <= -κ
  with the smallest L2 distance, over every step of every search. With κ = 0 this is the
  harness's test (margin <= 0); with κ > 0 an iterate that only just crosses the boundary is
  not kept, because κ asks for a confident adversarial. (Version 1 judged margin <= 0 whatever
  κ, so κ only shaped the objective and the returned clip could have any margin in (-κ, 0].)
  Samples never fooled with that margin are returned unchanged (the clean clip).
- Binary search per clip: a search step that found an adversarial (margin <= -κ) lowers the
  upper bound on ``c`` and bisects; one that did not raises the lower bound and multiplies
  ``c`` by 10 until an upper bound exists, then bisects.
- Early abort (``abort_early``), per clip: a search step ends when the objective has not
  dropped by 0.01% over the last ``max(1, steps // 10)`` steps (the paper's rule); a clip stops
  for good when a search step found an adversarial but did not lower its best distance (the
  search has converged), or when its search steps are spent. A clip the model already gets
  wrong (margin <= 0, whatever κ) is detected by the first iterate's forward pass (which is
  the clean clip) and never attacked: one query.
- Optional L2 budget: ``eps`` or ``snr_db`` (a per-clip radius from the clip's energy, see
  :func:`musicbench.api.snr_radius`). Iterates are projected onto the ball after each
  Adam step and only iterates inside it are accepted as the best adversarial.

Every Adam step is one counted forward+backward through the Victim (a query and a gradient
call per active clip).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import check_number, check_snr_db, project_l2
from musicbench.api import snr_radius as eps_from_snr
from musicbench.interfaces import Attack, AttackResult, Bound
from musicbench.victim import Victim
from musicbench_plugins._limits import MAX_L2_EPS, MAX_LEARNING_RATE, MAX_STEPS, MAX_WEIGHT

_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_EDGE = 1 - 1e-6  # |x| is clipped to this before atanh so w stays finite for clips at ±1
_ABORT_TOL = 0.9999  # the paper's early-abort test: objective must drop by 0.01%


@dataclass(frozen=True)
class CWParams:
    """``initial_const``: c of the first search step. ``binary_search_steps`` x ``steps``
    bounds the Adam steps per clip. ``learning_rate`` is Adam's on ``w`` (= on the waveform
    near 0, where tanh' is 1). ``kappa``: confidence, the margin the objective drives below
    -kappa. ``eps`` / ``snr_db``: optional L2 budget (a radius, or a per-clip radius giving
    at least that SNR); both unset = unbounded, as in the paper."""

    initial_const: float = 0.1
    binary_search_steps: int = 5
    steps: int = 50
    learning_rate: float = 3e-4
    kappa: float = 0.0
    abort_early: bool = True
    eps: float | None = None
    snr_db: float | None = None

    def __post_init__(self) -> None:
        if not self.initial_const > 0:
            raise ValueError(f"initial_const must be > 0, got {self.initial_const}")
        if self.binary_search_steps < 1:
            raise ValueError(f"binary_search_steps must be >= 1, got {self.binary_search_steps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"eps must be > 0 or unset, got {self.eps}")
        if self.eps is not None and self.snr_db is not None:
            raise ValueError("set eps or snr_db, not both")
        check_snr_db(self.snr_db)
        check_number("initial_const", self.initial_const, above=0, at_most=MAX_WEIGHT)
        check_number("binary_search_steps", self.binary_search_steps, at_least=1,
                     at_most=MAX_STEPS, integer=True)
        check_number("steps", self.steps, at_least=1, at_most=MAX_STEPS, integer=True)
        check_number("learning_rate", self.learning_rate, above=0, at_most=MAX_LEARNING_RATE)
        check_number("kappa", self.kappa, at_least=0, at_most=MAX_WEIGHT)
        if self.eps is not None:
            check_number("eps", self.eps, above=0, at_most=MAX_L2_EPS)


def update_const(
    const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, found: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One binary-search step on ``c`` per clip (all ``[b]``): found an adversarial -> c was
    large enough, bisect below it; not found -> c too small: x10 until an upper bound exists,
    then bisect above it. Returns the new ``(const, lower, upper)``."""
    upper = torch.where(found, torch.minimum(upper, const), upper)
    lower = torch.where(found, lower, torch.maximum(lower, const))
    bisect = (lower + upper) / 2
    const = torch.where(torch.isinf(upper), const * 10, bisect)
    return const, lower, upper


class CW(Attack):
    """C&W L2 with tanh box constraint, Adam, per-clip binary search over c and early abort.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``; ``steps[B]`` counts
    the Adam steps each clip took (over all its search steps).
    """

    threat = "white-box"
    version = "2"  # 2: success (best-so-far, search, abort) is margin <= -kappa, not <= 0
    Params = CWParams
    def bound(self) -> Bound | None:
        # With snr_db the radius is per clip; the harness checks it through Bound.limits.
        p = self.params
        if p.snr_db is not None:
            return Bound("l2", 0.0, snr_db=p.snr_db)  # eps is ignored under snr_db
        return Bound("l2", p.eps) if p.eps is not None else None

    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        p = self.params
        batch = audio.shape[0]
        dev, dt = audio.device, audio.dtype
        if p.snr_db is not None:
            radius: torch.Tensor | None = eps_from_snr(audio, p.snr_db, "l2").squeeze(1)
        elif p.eps is not None:
            radius = torch.full((batch,), p.eps, device=dev, dtype=dt)
        else:
            radius = None
        w0 = torch.atanh(audio.clamp(-_EDGE, _EDGE))
        w = w0.clone()
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        adam_t = torch.zeros(batch, 1, device=dev, dtype=dt)
        const = torch.full((batch,), p.initial_const, device=dev, dtype=dt)
        lower = torch.zeros(batch, device=dev, dtype=dt)
        upper = torch.full((batch,), float("inf"), device=dev, dtype=dt)
        search = torch.zeros(batch, dtype=torch.long, device=dev)
        inner = torch.zeros(batch, dtype=torch.long, device=dev)
        found = torch.zeros(batch, dtype=torch.bool, device=dev)  # adversarial in this search
        improved = torch.zeros(batch, dtype=torch.bool, device=dev)  # best l2 fell this search
        last_obj = torch.full((batch,), float("inf"), device=dev, dtype=dt)
        best_l2 = torch.full((batch,), float("inf"), device=dev, dtype=dt)
        best = audio.clone()
        steps = torch.zeros(batch, dtype=torch.long, device=dev)
        done = torch.zeros(batch, dtype=torch.bool, device=dev)
        check_every = max(1, p.steps // 10)
        b1, b2 = _BETAS

        for _ in range(p.binary_search_steps * p.steps):
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            wa = w[active].requires_grad_(True)
            xa = torch.tanh(wa)
            clean = audio[active]
            margin = victim.margin(xa, target[active], index=active)
            dist = (xa - clean).pow(2).flatten(1).sum(1)
            obj = dist + const[active] * (margin + p.kappa).clamp(min=0)
            (grad,) = torch.autograd.grad(obj.sum(), wa)
            with torch.no_grad():
                xa = xa.detach()
                margin = margin.detach()
                hit = margin <= -p.kappa  # the paper's success: confident by kappa
                # The very first iterate is the clean clip: already wrong -> never attacked.
                first = (search[active] == 0) & (inner[active] == 0)
                wrong = (margin <= 0) & first
                if bool(wrong.any()):
                    done[active[wrong]] = True
                l2 = (xa - clean).flatten(1).norm(dim=1)
                ok = hit & ~first
                if radius is not None:
                    ok &= l2 <= radius[active]
                better = ok & (l2 < best_l2[active])
                if bool(better.any()):
                    rows = active[better]
                    best_l2[rows] = l2[better]
                    best[rows] = xa[better]
                    improved[rows] = True
                found[active[ok]] = True

                # Adam on w, one clock per clip (clips restart their search at different times).
                t = adam_t[active] + 1
                adam_t[active] = t
                ma = m[active].mul_(b1).add_(grad, alpha=1 - b1)
                va = v[active].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                m[active], v[active] = ma, va
                step = (ma / (1 - b1 ** t)) / ((va / (1 - b2 ** t)).sqrt_() + _ADAM_EPS)
                wn = wa.detach() - p.learning_rate * step
                if radius is not None:
                    delta = project_l2(torch.tanh(wn) - clean, radius[active].unsqueeze(1))
                    wn = torch.atanh((clean + delta).clamp(-_EDGE, _EDGE))
                w[active] = wn
                inner[active] += 1
                steps[active[~wrong]] += 1

                # End of a search step: its steps are spent, or (early abort) it stalled.
                n_in = inner[active]
                end = n_in >= p.steps
                if p.abort_early:
                    check = n_in % check_every == 0
                    obj = obj.detach()
                    stalled = check & (obj > _ABORT_TOL * last_obj[active])
                    last_obj[active] = torch.where(check, obj, last_obj[active])
                    end |= stalled
                end &= ~wrong
                if bool(end.any()):
                    self._next_search(end, active, const, lower, upper, found, improved, search,
                                      inner, last_obj, done, w, w0, m, v, adam_t)
        return AttackResult(adv=best, success=best_l2 < float("inf"),
                            queries=victim.queries.clone(), steps=steps)

    def _next_search(self, end, active, const, lower, upper, found, improved, search, inner,
                     last_obj, done, w, w0, m, v, adam_t) -> None:
        """Close the search step of the clips ``active[end]``: update c, then stop them or
        restart them from the clean clip."""
        p = self.params
        rows = active[end]
        c, lo, hi = update_const(const[rows], lower[rows], upper[rows], found[rows])
        const[rows], lower[rows], upper[rows] = c, lo, hi
        search[rows] += 1
        finished = search[rows] >= p.binary_search_steps
        if p.abort_early:
            finished |= found[rows] & ~improved[rows]  # converged: lower c did not help
        done[rows[finished]] = True
        again = rows[~finished]
        if again.numel():
            inner[again] = 0
            found[again] = False
            improved[again] = False
            last_obj[again] = float("inf")
            w[again] = w0[again]
            m[again] = 0
            v[again] = 0
            adam_t[again] = 0
