"""Attack interface. ``__call__`` is final: it checks the contract so an attack cannot skip it."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, final

from musicbench.errors import AttackContractError
from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context
    from musicbench.victim import Victim

Threat = Literal["white-box", "black-box"]

BOUND_RTOL = 1e-5
"""Relative slack on a norm bound (float32 rounding of a projected perturbation)."""


@dataclass(frozen=True)
class Bound:
    """A perturbation budget: ``norm(adv - clean) <= eps`` per sample, or, with ``snr_db``, a
    per-clip radius that guarantees at least that SNR (:func:`snr_radius`; ``eps`` is then
    ignored)."""

    norm: Literal["linf", "l2"]
    eps: float
    snr_db: float | None = None

    def limits(self, clean: torch.Tensor) -> torch.Tensor:
        """``[B]`` radii for ``clean[B, T]`` (float32, on its device)."""
        import torch

        if self.snr_db is None:
            return torch.full((clean.shape[0],), self.eps, device=clean.device)
        return snr_radius(clean, self.snr_db, self.norm).squeeze(1)


def snr_radius(audio: torch.Tensor, snr_db: float, norm: Literal["linf", "l2"]) -> torch.Tensor:
    """Per-clip radius ``[B, 1]`` (audio's dtype and device) for ``audio[B, T]`` such that every
    perturbation inside the ``norm`` ball has an SNR of at least ``snr_db`` dB.

    L2: ``‖x_i‖₂ · 10^(-snr/20)``, exactly the SNR bound. L-inf: ``rms(x_i) · 10^(-snr/20)``,
    the amplitude at which a full-scale square perturbation has that SNR; any other
    perturbation in the ball is quieter since ``‖δ‖₂ <= sqrt(T)·‖δ‖∞``. A silent clip gets 0.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    energy = audio.detach().flatten(1).norm(dim=1, keepdim=True)  # ‖x_i‖₂, [B, 1]
    if norm == "linf":
        energy = energy / audio.shape[-1] ** 0.5  # rms
    return energy * 10.0 ** (-snr_db / 20.0)


@dataclass
class AttackResult:
    """What an attack returns, one row per input clip.

    Shapes: ``adv[B, T]`` float32 in [-1, 1]; ``success``, ``queries``, ``steps`` ``[B]``.
    ``success`` and ``queries`` are overwritten by the harness (re-scored and counted by the
    Victim); ``steps`` is the attack's own iteration count per sample.
    """

    adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    steps: torch.Tensor


class Attack(Component, abc.ABC):
    """An untargeted evasion attack on a :class:`~musicbench.victim.Victim`.

    Implementations override :meth:`run`. They must stop early per sample once it is
    successful, take randomness only from ``generator``, and never return autograd state.
    White-box attacks may use gradients through the victim; black-box attacks get a Victim
    that refuses them.
    """

    threat: ClassVar[Threat] = "white-box"

    def prepare(self, ctx: Context) -> None:
        """Load what the attack needs besides the victim (an inpainter, say) before the first
        batch; ``ctx.inpainter(name, params)`` resolves inpainters. Default: nothing."""

    def bound(self) -> Bound | None:
        """The norm bound this attack promises to respect, or None (region/unbounded attacks)."""
        return None

    @abc.abstractmethod
    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        """Attack ``audio[B, T]`` whose true labels (or work indices) are ``target[B]``."""

    @final
    def __call__(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        """Run the attack, then check its output and re-score success with the victim."""
        import torch

        if audio.dim() != 2:
            raise ValueError(f"attacks take audio[B, T]; got shape {tuple(audio.shape)}")
        victim.reset_counters(audio.shape[0])
        result = self.run(victim, audio, target, generator=generator)
        adv = result.adv
        if adv.shape != audio.shape or adv.dtype != audio.dtype or adv.device != audio.device:
            raise AttackContractError(
                f"attack '{self.name}' returned {tuple(adv.shape)} {adv.dtype} on {adv.device}; "
                f"expected {tuple(audio.shape)} {audio.dtype} on {audio.device}"
            )
        if adv.requires_grad or adv.grad_fn is not None:
            raise AttackContractError(f"attack '{self.name}' returned audio with autograd state")
        if not torch.isfinite(adv).all():
            raise AttackContractError(f"attack '{self.name}' returned non-finite samples")
        peak = adv.abs().max().item() if adv.numel() else 0.0
        if peak > 1.0:
            raise AttackContractError(
                f"attack '{self.name}' returned samples outside [-1, 1] (peak {peak:.6f})"
            )
        bound = self.bound()
        if bound is not None:
            delta = (adv - audio).flatten(1)
            size = delta.abs().amax(1) if bound.norm == "linf" else delta.norm(dim=1)
            limit = bound.limits(audio).to(size.dtype)
            over = size > limit * (1 + BOUND_RTOL) + 1e-7
            if bool(over.any()):
                i = int(over.nonzero()[0])
                what = (f"eps {limit[i].item():.6g}" if bound.snr_db is None else
                        f"radius {limit[i].item():.6g} of its {bound.snr_db:g} dB SNR budget")
                raise AttackContractError(
                    f"attack '{self.name}' exceeded its {bound.norm} bound on clip {i}: "
                    f"{size[i].item():.6g} > {what}"
                )
        queries = victim.queries.clone()
        success = victim.success(adv, target, count=False)
        return AttackResult(adv=adv, success=success, queries=queries, steps=result.steps)
