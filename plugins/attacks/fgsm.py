"""Fast gradient sign method: one signed L-inf step of size eps on the waveform.

Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
FGSM is PGD with one step of size eps from the clean input (no random start), so it is
implemented as exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import check_number
from musicbench.interfaces import AttackResult, Bound
from musicbench.victim import Victim
from musicbench_plugins._limits import MAX_LINF_EPS
from musicbench_plugins.attacks.pgd import PGD, PGDParams


@dataclass(frozen=True)
class FGSMParams:
    eps: float = 0.002

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        check_number("eps", self.eps, above=0, at_most=MAX_LINF_EPS)


class FGSM(PGD):
    """One gradient-sign step, one query per clip.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``.
    """

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
        eps = self.params.eps
        one_step = PGD(PGDParams(eps=eps, steps=1, step_size=eps, random_start=False))
        return one_step.run(victim, audio, target, generator=generator)
