"""A black-box baseline: uniform random noise inside the L-inf ball.

Each clip gets up to ``tries`` independent draws of ``delta ~ U[-eps, eps]^T``; the first draw
that fools the victim is kept. It needs no gradients (``threat = "black-box"``), so it is the
floor any real attack at the same ``eps`` should beat: an attack that does no better than
random noise has learned nothing about the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import Attack, AttackResult, Bound, Victim, check_number


@dataclass(frozen=True)
class NoiseParams:
    """``eps``: L-inf size of the noise; ``tries``: random draws per clip at most."""

    eps: float = 0.002
    tries: int = 10

    def __post_init__(self) -> None:
        check_number("eps", self.eps, above=0, at_most=1)
        check_number("tries", self.tries, at_least=1, at_most=10_000)


class NoiseAttack(Attack):
    """Uniform L-inf noise, redrawn up to ``tries`` times per clip; keeps the first draw that
    fools the model. Clips that are never fooled return their last draw.

    Shape: audio ``[B, T]`` in [-1, 1], target ``[B]`` -> adv ``[B, T]``.
    Queries: one per draw, only for clips not yet fooled (``steps`` counts them too).
    """

    threat = "black-box"
    version = "1"
    Params = NoiseParams

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
        eps = self.params.eps
        batch = audio.shape[0]
        adv = audio.clone()
        done = torch.zeros(batch, dtype=torch.bool, device=audio.device)
        steps = torch.zeros(batch, dtype=torch.long, device=audio.device)
        active = torch.arange(batch, device=audio.device)  # clips not fooled yet
        for _ in range(self.params.tries):
            if active.numel() == 0:
                break
            clean = audio[active]
            noise = torch.rand(clean.shape, generator=generator, device=audio.device,
                               dtype=audio.dtype)
            # Clamping to [-1, 1] only moves samples towards the clean clip: still within eps.
            draw = (clean + (2 * noise - 1) * eps).clamp(-1, 1)
            hit = victim.success(draw, target[active], index=active)
            adv[active] = draw
            steps[active] += 1
            done[active[hit]] = True
            active = active[~hit]
        return AttackResult(adv=adv, success=done, queries=victim.queries.clone(), steps=steps)
