"""Projected gradient descent on the waveform, L-inf (signed steps) or L2 (normalised steps).

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018. Untargeted: ascent steps on the victim's cross-entropy from a random start
inside the ball, each followed by projection onto the eps-ball and onto [-1, 1]. Every sample
stops as soon as it is misclassified (the logits of the step's own forward pass tell, so early
stopping costs no extra query).

- ``norm = "linf"``: signed gradient steps, uniform random start in the box.
- ``norm = "l2"``: steps along the L2-normalised gradient, random start uniform in the L2 ball,
  projection by rescaling onto the ball (then clipping to [-1, 1], which only shrinks the
  perturbation).

The budget is ``eps`` (a radius in the chosen norm) or, when ``snr_db`` is set, a per-clip
radius derived from each clip's own energy (see :mod:`musicbench.budgets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from musicbench.api import (
    Attack,
    AttackResult,
    Bound,
    Victim,
    check_number,
    check_snr_db,
    project_l2,
    snr_radius,
)
from musicbench_plugins._limits import MAX_L2_EPS, MAX_LINF_EPS, MAX_STEPS


@dataclass(frozen=True)
class PGDParams:
    """``eps`` is the radius in ``norm`` (0.002 is the L-inf default; docs/architecture.md,
    'Threat models'; an L2 radius is much larger: the L2 norm of a full-scale ±0.002 perturbation
    of a 4 s clip at
    16 kHz is 0.51). ``snr_db`` set replaces ``eps`` with a per-clip radius giving at least that
    SNR. ``step_size`` None means 2.5 * eps / steps (Madry et al.'s rule of thumb), per clip
    when the radius is per clip."""

    eps: float = 0.002
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True
    norm: Literal["linf", "l2"] = "linf"
    snr_db: float | None = None

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        check_snr_db(self.snr_db)
        check_number("eps", self.eps, above=0,
                     at_most=MAX_LINF_EPS if self.norm == "linf" else MAX_L2_EPS)
        check_number("steps", self.steps, at_least=1, at_most=MAX_STEPS, integer=True)
        if self.step_size is not None:
            check_number("step_size", self.step_size, above=0, at_most=MAX_L2_EPS)


class PGD(Attack):
    """PGD on the waveform with random start and per-sample early stop.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``.
    """

    threat = "white-box"
    version = "1"
    Params = PGDParams

    def bound(self) -> Bound | None:
        # With snr_db the radius is per clip; the harness checks it through Bound.limits.
        return Bound(self.params.norm, self.params.eps, snr_db=self.params.snr_db)

    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        p = self.params
        if p.snr_db is not None:
            eps: float | torch.Tensor = snr_radius(audio, p.snr_db, p.norm)  # [B, 1]
        else:
            eps = p.eps
        if p.norm == "l2":
            return self._run_l2(victim, audio, target, eps, generator)
        return self._run_linf(victim, audio, target, eps, generator)

    def _run_linf(self, victim: Victim, audio: torch.Tensor, target: torch.Tensor,
                  eps: float | torch.Tensor, generator: torch.Generator) -> AttackResult:
        p = self.params
        alpha = p.step_size if p.step_size is not None else 2.5 * eps / p.steps
        per_clip = isinstance(alpha, torch.Tensor)  # [B, 1] step sizes (snr_db budgets)
        batch = audio.shape[0]
        if p.random_start:
            noise = torch.rand(audio.shape, generator=generator, device=audio.device,
                               dtype=audio.dtype)
            adv = (audio + (2 * noise - 1) * eps).clamp(-1, 1)
        else:
            adv = audio.clone()
        # The projection onto the eps-ball and [-1, 1] is one clamp between these bounds.
        lo, hi = (audio - eps).clamp_(min=-1), (audio + eps).clamp_(max=1)
        done = torch.zeros(batch, dtype=torch.bool, device=audio.device)
        steps = torch.zeros(batch, dtype=torch.long, device=audio.device)
        active = torch.arange(batch, device=audio.device)
        for _ in range(p.steps):
            everyone = active.numel() == batch  # no gather/scatter copies while all are active
            x = (adv if everyone else adv[active]).detach().requires_grad_(True)
            loss, margin = victim.loss_and_margin(x, target[active], index=active)
            (grad, ) = torch.autograd.grad(loss.sum(), x)
            with torch.no_grad():
                hit = margin <= 0  # these iterates already fool the model: keep them
                if bool(hit.any()):
                    done[active[hit]] = True
                    keep = ~hit
                    active, grad, x = active[keep], grad[keep], x.detach()[keep]
                    everyone = False
                if per_clip:
                    stepped = x.detach() + grad.sign_() * (alpha if everyone else alpha[active])
                else:
                    stepped = torch.add(x.detach(), grad.sign_(), alpha=alpha)
                if everyone:
                    torch.clamp(stepped, lo, hi, out=adv)
                else:
                    adv[active] = torch.clamp(stepped, lo[active], hi[active])
                steps[active] += 1
            if active.numel() == 0:
                break
        # The last step's iterates are not scored here: Attack.__call__ re-scores every
        # returned clip anyway, so a check of our own would be a wasted forward pass.
        return AttackResult(adv=adv.detach(), success=done, queries=victim.queries.clone(),
                            steps=steps)

    def _run_l2(self, victim: Victim, audio: torch.Tensor, target: torch.Tensor,
                eps: float | torch.Tensor, generator: torch.Generator) -> AttackResult:
        p = self.params
        batch, length = audio.shape
        eps_b = torch.as_tensor(eps, dtype=audio.dtype, device=audio.device).expand(batch, 1)
        alpha = (torch.full_like(eps_b, p.step_size) if p.step_size is not None
                 else 2.5 * eps_b / p.steps)
        if p.random_start:
            # Uniform in the ball: a Gaussian direction, radius eps * u^(1/T).
            direction = torch.randn(audio.shape, generator=generator, device=audio.device,
                                    dtype=audio.dtype)
            direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
            u = torch.rand(batch, 1, generator=generator, device=audio.device, dtype=audio.dtype)
            adv = (audio + direction * eps_b * u.pow(1.0 / length)).clamp(-1, 1)
        else:
            adv = audio.clone()
        done = torch.zeros(batch, dtype=torch.bool, device=audio.device)
        steps = torch.zeros(batch, dtype=torch.long, device=audio.device)
        active = torch.arange(batch, device=audio.device)
        for _ in range(p.steps):
            x = adv[active].detach().requires_grad_(True)
            loss, margin = victim.loss_and_margin(x, target[active], index=active)
            (grad, ) = torch.autograd.grad(loss.sum(), x)
            with torch.no_grad():
                hit = margin <= 0
                if bool(hit.any()):
                    done[active[hit]] = True
                    keep = ~hit
                    active, grad, x = active[keep], grad[keep], x[keep]
                unit = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                stepped = x.detach() + alpha[active] * unit
                delta = project_l2(stepped - audio[active], eps_b[active])
                adv[active] = (audio[active] + delta).clamp(-1, 1)
                steps[active] += 1
            if active.numel() == 0:
                break
        return AttackResult(adv=adv.detach(), success=done, queries=victim.queries.clone(),
                            steps=steps)
