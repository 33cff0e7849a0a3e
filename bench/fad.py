"""Fréchet Audio Distance between two sets of frame embeddings (DESIGN.md section 5).

Kilgour, Zuluaga, Roblek, Sharifi, "Fréchet Audio Distance: A Metric for Evaluating Music
Enhancement Algorithms", 2019. Gaussians are fitted in float64;
FAD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)). The matrix square root is
scipy's Schur-based ``sqrtm``; when the product is singular (non-finite root) both covariances
get ``eps * I`` added, the usual fallback.

When FAD means nothing it is NaN with the reason. The rule counts **clips**: frames of one clip
are strongly autocorrelated, so a few long clips give many frames but little information about
the distribution of the set. A set needs at least :data:`FAD_MIN_CLIPS` clips, and (because the
covariance of ``D``-dimensional frames is singular below ``D`` samples) ``2 * D`` frames too.
FAD from N clips is biased upward, more so for small N (Chong & Forsyth, "Effectively Unbiased
FID and Inception Score", CVPR 2020), so values compare only between sets of equal N: the
harness scores every attack of one (dataset, model, defense) on the same attacked clips.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg

SQRTM_EPS = 1e-6
IMAG_TOLERANCE = 1e-3
NEGATIVE_TOLERANCE = 1e-6  # relative to tr(S1) + tr(S2)
FAD_MIN_CLIPS = 10
"""Fewest clips per set for a FAD value (see the module docstring)."""


@dataclass(frozen=True)
class FadResult:
    value: float
    reason: str | None = None  # why value is NaN, or a warning about its reliability


def gaussian(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased) of ``frames[N, D]``, in float64."""
    x = np.asarray(frames, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> FadResult:
    """The Fréchet distance of two Gaussians, float64."""
    diff = mu1 - mu2
    root, trouble = _sqrtm(sigma1 @ sigma2)
    note = None
    if trouble or not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
        root, _ = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        note = f"singular covariance product: added {SQRTM_EPS:g}*I before the square root"
    if np.iscomplexobj(root):
        worst = float(np.max(np.abs(root.imag)))
        if worst > IMAG_TOLERANCE:
            return FadResult(math.nan, f"matrix square root has imaginary part {worst:.3g}")
        root = root.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))
    scale = max(1.0, float(np.trace(sigma1) + np.trace(sigma2)))
    # The eps*I fallback shifts the root's trace by up to about D * eps.
    slack = NEGATIVE_TOLERANCE * scale + (2 * len(mu1) * SQRTM_EPS if note else 0.0)
    if value < -slack:
        return FadResult(math.nan, f"FAD came out negative ({value:.3g}): the square root is "
                                   "numerically unreliable for these covariances")
    return FadResult(max(value, 0.0), note)  # round-off (or the eps fallback) below zero


def _sqrtm(m: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's matrix square root and whether it warned that the result is unreliable."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(m)
    return np.asarray(root), any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)


def fad(clean: np.ndarray, adv: np.ndarray, *, clips: int | None = None) -> FadResult:
    """FAD between ``clean[N, D]`` and ``adv[M, D]`` frame embeddings of ``clips`` clips each.

    NaN with a reason when there are fewer than :data:`FAD_MIN_CLIPS` clips, or when either
    set has fewer than ``2 * D`` frames. ``clips=None``: frames are independent items.
    """
    clean = np.asarray(clean, dtype=np.float64)
    adv = np.asarray(adv, dtype=np.float64)
    if clean.ndim != 2 or adv.ndim != 2 or clean.shape[1] != adv.shape[1]:
        raise ValueError(f"fad needs [N, D] and [M, D]; got {clean.shape} and {adv.shape}")
    dim = clean.shape[1]
    if clips is not None and clips < FAD_MIN_CLIPS:
        return FadResult(math.nan, f"{clips} clips < {FAD_MIN_CLIPS}: too few for FAD")
    fewest = min(clean.shape[0], adv.shape[0])
    if fewest < 2 * dim:
        return FadResult(math.nan, f"{fewest} frames < 2 x {dim} dimensions: too few for a "
                                   "covariance estimate")
    return frechet_distance(*gaussian(clean), *gaussian(adv))
