"""Perturbation budgets given in dB SNR, turned into per-sample norm bounds.

An attack budget in dB is relative to each clip's own loudness, so a quiet clip gets a small
perturbation and a loud one a larger one. With the SNR of DESIGN.md section 5,
``SNR = 10·log10(‖x‖² / ‖δ‖²)``, requiring ``SNR >= snr_db`` means

- L2:   ``‖δ_i‖₂ <= ‖x_i‖₂ · 10^(-snr_db / 20)`` — exactly the SNR bound;
- L-inf: ``‖δ_i‖∞ <= rms(x_i) · 10^(-snr_db / 20)`` with ``rms(x) = ‖x‖₂ / sqrt(T)``. This is
  the per-sample amplitude at which a full-scale square perturbation (every sample at ±eps,
  what a signed L-inf attack tends to produce) has exactly that SNR; any other perturbation in
  the ball has at least that SNR, because ``‖δ‖₂ <= sqrt(T)·‖δ‖∞``.

So both forms guarantee an SNR of at least ``snr_db`` dB for every returned clip. A silent clip
gets eps 0: it cannot be perturbed at all under a relative budget.
"""

from __future__ import annotations

from typing import Literal

import torch

from musicbench.interfaces.attack import snr_radius


def eps_from_snr(audio: torch.Tensor, snr_db: float, norm: Literal["linf", "l2"]) -> torch.Tensor:
    """Per-sample radius ``eps[B, 1]`` (audio's dtype and device) for ``audio[B, T]`` so that
    every perturbation inside the ``norm`` ball has an SNR of at least ``snr_db`` dB (the
    harness checks returned clips against the same :func:`musicbench.interfaces.snr_radius`)."""
    return snr_radius(audio, snr_db, norm)


def snr_db(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """``[B]``: SNR in dB of ``adv[B, T]`` against ``clean[B, T]`` (inf where they are equal)."""
    noise = (adv - clean).flatten(1).pow(2).sum(1)
    signal = clean.flatten(1).pow(2).sum(1)
    return 10 * torch.log10(signal / noise)


def check_snr_db(value: float | None) -> None:
    """Range check for an ``snr_db`` parameter (used by attack ``Params``)."""
    if value is not None and not -20.0 <= value <= 120.0:
        raise ValueError(f"snr_db must be within [-20, 120] dB (or unset), got {value}")


def project_l2(delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """``delta[B, T]`` scaled down (per row) onto the L2 ball of radius ``eps`` (float or
    ``[B, 1]``); rows already inside are unchanged."""
    norm = delta.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)
    factor = torch.clamp(eps / norm, max=1.0)
    return delta * factor
