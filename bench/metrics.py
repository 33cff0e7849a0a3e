"""Metric computations of the leaderboard contract (DESIGN.md section 5).

Per-sample distances are batched torch code on (clean, adv) pairs. Proportions (clean
accuracy, ASR, robust accuracy) come with exact Clopper–Pearson 95% intervals, which never
collapse to a point (41/41 is [91.4, 100], not [100, 100]); means with a percentile bootstrap
(fixed seed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

LSD_N_FFT = 2048
LSD_HOP = 512
LSD_FLOOR = 1e-10
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def lsd(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Log-spectral distance ``[B]`` of ``clean[B, T]`` and ``adv[B, T]``.

    mean over frames t of sqrt(mean over bins f of (log10 P - log10 P_hat)^2), with
    P = |STFT|^2 + 1e-10, Hann window, n_fft 2048, hop 512, centred frames (reflect padding)
    over the whole clip. Clips shorter than n_fft are zero-padded to n_fft.
    """
    if clean.shape != adv.shape:
        raise ValueError(f"lsd needs equal shapes, got {tuple(clean.shape)} {tuple(adv.shape)}")
    x = torch.stack([clean, adv]).to(torch.float64).flatten(0, 1)
    if x.shape[-1] < LSD_N_FFT:
        x = torch.nn.functional.pad(x, (0, LSD_N_FFT - x.shape[-1]))
    window = torch.hann_window(LSD_N_FFT, dtype=torch.float64, device=x.device)
    spec = torch.stft(x, LSD_N_FFT, LSD_HOP, window=window, center=True, return_complex=True)
    logp = torch.log10(spec.abs().square() + LSD_FLOOR)  # [2B, F, frames]
    logp = logp.reshape(2, clean.shape[0], *logp.shape[1:])
    per_frame = (logp[0] - logp[1]).square().mean(dim=1).sqrt()  # [B, frames]
    return per_frame.mean(dim=1)


def snr_db(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """``[B]``: 10 log10(||x||^2 / ||x_hat - x||^2) in dB (inf where adv == clean)."""
    x = clean.to(torch.float64).flatten(1)
    noise = (adv.to(torch.float64).flatten(1) - x).square().sum(1)
    return 10 * torch.log10(x.square().sum(1) / noise)


def linf(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """``[B]``: max |x_hat - x|."""
    return (adv - clean).flatten(1).abs().amax(1).to(torch.float64)


def l2(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """``[B]``: ||x_hat - x||_2."""
    return (adv - clean).flatten(1).to(torch.float64).norm(dim=1)


def bootstrap_ci(values: np.ndarray, *, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values[N]`` (NaNs if N == 0)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(BOOTSTRAP_RESAMPLES, values.size))
    means = values[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


def clopper_pearson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion k/n (Clopper & Pearson, 1934): the
    beta quantiles that bound p with at least ``level`` coverage. (NaN, NaN) when n == 0."""
    from scipy.stats import beta

    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (low, high)


def rate(values: np.ndarray) -> float:
    """Mean of a 0/1 array, NaN when empty."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def classification_summary(
    clean_correct: np.ndarray, attacked_success: np.ndarray
) -> dict[str, Any]:
    """Clean accuracy, ASR and robust accuracy, each with its exact interval and its counts.

    :param clean_correct: ``bool[N]`` the model is right on the clean clip.
    :param attacked_success: ``bool[N]`` the attack made a clean-correct clip wrong (False for
        clean-wrong clips, which are never attacked).
    """
    clean_correct = np.asarray(clean_correct, dtype=bool)
    success = np.asarray(attacked_success, dtype=bool) & clean_correct
    robust = clean_correct & ~success
    n, n_attacked = int(clean_correct.size), int(clean_correct.sum())
    n_success, n_robust = int(success.sum()), int(robust.sum())
    return {
        "n": n, "n_attacked": n_attacked, "n_success": n_success,
        "clean_accuracy": rate(clean_correct),
        "clean_accuracy_ci": clopper_pearson(n_attacked, n),
        "asr": n_success / n_attacked if n_attacked else math.nan,
        "asr_ci": clopper_pearson(n_success, n_attacked),
        "robust_accuracy": rate(robust),
        "robust_accuracy_ci": clopper_pearson(n_robust, n),
    }


def retrieval_ranking(
    queries: torch.Tensor, query_works: torch.Tensor, refs: torch.Tensor, ref_works: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Rank references by cosine similarity for each query (embeddings L2-normalised).

    :param queries: ``[Q, D]``; ``query_works[Q]`` their work indices.
    :param refs: ``[R, D]``; ``ref_works[R]``.
    :returns: ``ap[Q]`` average precision over the query's relevant references,
        ``top1[Q]`` (nearest reference is of the query's work) and ``first_rank[Q]`` (1-based
        rank of the first relevant reference; its mean is MR1). Every query must have at least
        one relevant reference.
    """
    sims = queries.double() @ refs.double().T  # [Q, R]
    order = sims.argsort(dim=1, descending=True, stable=True)
    relevant = (ref_works[order] == query_works[:, None]).double()  # [Q, R] in rank order
    if not bool((relevant.sum(1) > 0).all()):
        raise ValueError("every query needs at least one reference of its work")
    ranks = torch.arange(1, refs.shape[0] + 1, dtype=torch.float64)
    precision = relevant.cumsum(1) / ranks
    ap = (precision * relevant).sum(1) / relevant.sum(1)
    first_rank = relevant.argmax(1).double() + 1
    return {"ap": ap, "top1": relevant[:, 0].bool(), "first_rank": first_rank}
