"""Fast gradient sign method: one signed L-inf step of size eps on the waveform.

Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.interfaces import Attack, AttackResult, Bound
from musicbench.victim import Victim


@dataclass(frozen=True)
class FGSMParams:
    eps: float = 0.002

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


class FGSM(Attack):
    """One gradient-sign step; clean-correct inputs only (the harness guarantees that).

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``.
    """

    threat = "white-box"
    version = "1"
    Params = FGSMParams

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
        x = audio.clone().requires_grad_(True)
        loss = victim.loss(x, target)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        adv = (audio + self.params.eps * grad.sign()).clamp(-1, 1).detach()
        # One query per clip: success is re-scored by the harness, not by a second query here.
        success = torch.zeros(audio.shape[0], dtype=torch.bool, device=audio.device)
        steps = torch.ones(audio.shape[0], dtype=torch.long, device=audio.device)
        return AttackResult(adv=adv, success=success, queries=victim.queries.clone(), steps=steps)
