"""Projected gradient descent with an L-inf bound on the waveform.

Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018. Untargeted: signed ascent steps on the victim's cross-entropy from a
uniform random start inside the ball, each followed by projection onto the eps-ball and onto
[-1, 1]. Every sample stops as soon as it is misclassified (the logits of the step's own forward
pass tell, so early stopping costs no extra query).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.interfaces import Attack, AttackResult, Bound
from musicbench.victim import Victim


@dataclass(frozen=True)
class PGDParams:
    """``step_size`` None means 2.5 * eps / steps (Madry et al.'s rule of thumb)."""

    eps: float = 0.002
    steps: int = 20
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")


class PGD(Attack):
    """L-inf PGD on the waveform with random start and per-sample early stop.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``.
    """

    threat = "white-box"
    version = "1"
    Params = PGDParams

    def bound(self) -> Bound:
        return Bound("linf", self.params.eps)

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
        alpha = p.step_size if p.step_size is not None else 2.5 * eps / p.steps
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
