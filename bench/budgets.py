"""Perturbation budgets for attack code: a per-clip budget in dB SNR, and projection onto a
norm ball (public through :mod:`musicbench.api`).

An attack budget in dB is relative to each clip's own loudness, so a quiet clip gets a small
perturbation and a loud one a larger one. With the SNR of docs/metrics.md,
``SNR = 10·log10(‖x‖² / ‖δ‖²)``, requiring ``SNR >= snr_db`` means

- L2:   ``‖δ_i‖₂ <= ‖x_i‖₂ · 10^(-snr_db / 20)`` — exactly the SNR bound;
- L-inf: ``‖δ_i‖∞ <= rms(x_i) · 10^(-snr_db / 20)`` with ``rms(x) = ‖x‖₂ / sqrt(T)``. This is
  the per-sample amplitude at which a full-scale square perturbation (every sample at ±eps,
  what a signed L-inf attack tends to produce) has exactly that SNR; any other perturbation in
  the ball has at least that SNR, because ``‖δ‖₂ <= sqrt(T)·‖δ‖∞``.

So both forms guarantee an SNR of at least ``snr_db`` dB for every returned clip. A silent clip
gets eps 0: it cannot be perturbed at all under a relative budget. The radius is
:func:`musicbench.interfaces.snr_radius` (the harness checks returned clips against the same
function, through ``Bound(norm, eps, snr_db=...)``); the SNR itself is
:func:`musicbench.metrics.snr_db`.
"""

from __future__ import annotations

import torch


def check_snr_db(value: float | None) -> None:
    """Range check for an ``snr_db`` parameter (call it in an attack's ``Params.__post_init__``
    or ``__init__``): ``None`` (no SNR budget) or a number in [-20, 120] dB."""
    if value is not None and not -20.0 <= value <= 120.0:
        raise ValueError(f"snr_db must be within [-20, 120] dB (or unset), got {value}")


def project_l2(delta: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """``delta[B, T]`` scaled down (per row) onto the L2 ball of radius ``eps`` (float or
    ``[B, 1]``); rows already inside are unchanged."""
    norm = delta.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)
    factor = torch.clamp(eps / norm, max=1.0)
    return delta * factor
