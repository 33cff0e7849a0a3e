"""Metric computations of the leaderboard contract (docs/metrics.md).

Per-sample distances are batched torch code on (clean, adv) pairs. Proportions (clean
accuracy, ASR, robust accuracy) come with exact Clopper–Pearson 95% intervals, which never
collapse to a point (41/41 is [91.4, 100], not [100, 100]); means with a percentile bootstrap
(fixed seed).

Clips of one musical work are not independent, so where clips share a work (``clusters``:
each clip's work id) a proportion's interval is Korn & Graubard's (1998) clustered
Clopper–Pearson: the exact interval at the *effective* sample size ``n / deff`` (``deff``, the
design effect, estimated from the spread of the works' counts, never below 1; the number of
clips per work when every clip has the same outcome, as nothing then shows the spread), shrunk
further by the degrees-of-freedom factor ``(z / t_{works - 1})^2``, and never narrower than the
unclustered interval on the same counts. Where every clip is its own work (or works are
unknown) it is the exact interval itself. Bootstrap intervals of means resample works.
docs/metrics.md gives the reasons and the measured coverage.

References:
- E. L. Korn, B. I. Graubard (1998), "Confidence intervals for proportions with small expected
  number of positive counts estimated from survey data", Survey Methodology 24, 193-201.
- L. Kish (1965), Survey Sampling (the design effect ``deff``), Wiley.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

LSD_N_FFT = 2048
LSD_HOP = 512
LSD_FLOOR = 1e-10
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CLOPPER_PEARSON = "Clopper–Pearson"
KORN_GRAUBARD = "Korn–Graubard clustered Clopper–Pearson"


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


def cluster_index(clusters: Sequence[str | None] | None, n: int) -> np.ndarray | None:
    """``int[N]``: the index of each of ``n`` clips' cluster (work), numbered in order of first
    appearance; a clip whose cluster is ``None`` is a cluster of its own. None when
    ``clusters`` is None or every clip is alone in its cluster (the independent case)."""
    if clusters is None:
        return None
    if len(clusters) != n:
        raise ValueError(f"need one cluster id per clip: {len(clusters)} ids for {n} clips")
    first: dict[tuple[str, Any], int] = {}
    index = np.array([first.setdefault(("clip", i) if c is None else ("work", str(c)),
                                       len(first)) for i, c in enumerate(clusters)],
                     dtype=np.int64)
    return None if len(first) == n else index


def cluster_count(clusters: Sequence[str | None] | None) -> int | None:
    """How many clusters (works) the clips fall in, each ``None`` counting as one of its own;
    None when ``clusters`` is None or every clip is alone in its cluster (the intervals are
    then the unclustered ones)."""
    if clusters is None:
        return None
    index = cluster_index(clusters, len(clusters))
    return None if index is None else int(index.max()) + 1


def interval_method(clusters: Sequence[str | None] | None) -> str:
    """Names the interval :func:`proportion_interval` gives for clips with these ``clusters``."""
    works = cluster_count(clusters)
    if works is None:
        return CLOPPER_PEARSON
    return f"{KORN_GRAUBARD}, clustered by work: {works} works"


def variance_inflation(values: np.ndarray, index: np.ndarray, *, level: float = 0.95) -> float:
    """By how much to divide the sample size of the mean of ``values[N]`` when clips cluster
    as ``index[N]`` (:func:`cluster_index`, K clusters): the design effect
    ``deff = max(1, v_cluster / v_independent)`` times ``(t_{K-1} / z)^2`` (Korn & Graubard's
    degrees-of-freedom adjustment; about 42 at K = 2, 1.5 at K = 8, 1.2 at K = 14).

    ``v_cluster = K / (K - 1) * sum_j (S_j - m_j * mean)^2 / N^2`` (S_j, m_j: cluster j's sum
    and size; the linearised variance of a mean over sampled clusters) and
    ``v_independent = sum_i (x_i - mean)^2 / N^2``. When every value is equal (k = 0 or k = N)
    the spread between works cannot be estimated, so ``deff = N / K``, the worst case (each work
    worth one clip; Korn & Graubard's ``deff = 1`` there undercovers: 89% at p = 0.1, 8 works,
    ICC 0.5, see docs/metrics.md). ``inf`` for one cluster: one work says nothing about others.
    """
    from scipy.stats import norm, t

    values = np.asarray(values, dtype=np.float64)
    works = int(index.max()) + 1 if index.size else 0
    if works < 2:
        return math.inf
    n, mean = values.size, values.mean()
    sums = np.bincount(index, weights=values, minlength=works)
    sizes = np.bincount(index, minlength=works)
    v_cluster = works / (works - 1) * np.square(sums - sizes * mean).sum() / n**2
    v_independent = np.square(values - mean).sum() / n**2
    deff = n / works if v_independent == 0 else max(1.0, v_cluster / v_independent)
    q = 0.5 + level / 2
    return float(deff) * (float(t.ppf(q, works - 1)) / float(norm.ppf(q))) ** 2


def proportion_interval(outcomes: np.ndarray, clusters: Sequence[str | None] | None = None,
                        *, level: float = 0.95) -> tuple[float, float]:
    """Two-sided interval of the proportion of True in ``outcomes`` (``bool[N]``, one per clip)
    whose clips fall in ``clusters`` (``[N]`` work ids, None where unknown; or None).

    Every clip its own cluster (or clusters unknown): the exact Clopper–Pearson interval of
    k/N. Otherwise Korn & Graubard's (1998) clustered Clopper–Pearson: the beta quantiles at
    the effective size ``N* = N / variance_inflation(...)`` and ``k* = N* k / N``, widened to
    contain the exact interval of k/N (so never narrower than it); (0, 1) when every clip is
    of one work. Deterministic (no resampling). (NaN, NaN) when N == 0.
    """
    outcomes = np.asarray(outcomes, dtype=bool)
    n, k = int(outcomes.size), int(outcomes.sum())
    exact = clopper_pearson(k, n, level=level)
    index = cluster_index(clusters, n)
    if index is None or n == 0:
        return exact
    inflation = variance_inflation(outcomes, index, level=level)
    if math.isinf(inflation):
        return (0.0, 1.0)
    n_eff = n / inflation
    low, high = _beta_interval(n_eff * k / n, n_eff, level)
    return (min(low, exact[0]), max(high, exact[1]))


def bootstrap_ci(values: np.ndarray, *, seed: int = BOOTSTRAP_SEED,
                 clusters: Sequence[str | None] | None = None) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values[N]`` (NaNs if N == 0).

    With ``clusters`` (``[N]`` work ids) where some work holds several clips, works are
    resampled (a cluster bootstrap: each draw takes as many works as there are, with
    replacement, and averages over their clips), so the clips of a work stay together."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    index = cluster_index(clusters, values.size)
    if index is None:
        idx = rng.integers(0, values.size, size=(BOOTSTRAP_RESAMPLES, values.size))
        means = values[idx].mean(axis=1)
    else:
        works = int(index.max()) + 1
        sums = np.bincount(index, weights=values, minlength=works)
        sizes = np.bincount(index, minlength=works).astype(np.float64)
        idx = rng.integers(0, works, size=(BOOTSTRAP_RESAMPLES, works))
        means = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


def _beta_interval(k: float, n: float, level: float) -> tuple[float, float]:
    """Clopper–Pearson's beta quantiles at real-valued counts ``0 <= k <= n``, ``n > 0``."""
    from scipy.stats import beta

    alpha = 1.0 - level
    low = 0.0 if k <= 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k >= n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (low, high)


def clopper_pearson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion k/n (Clopper & Pearson, 1934): the
    beta quantiles that bound p with at least ``level`` coverage. (NaN, NaN) when n == 0."""
    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return _beta_interval(k, n, level)


def rate(values: np.ndarray) -> float:
    """Mean of a 0/1 array, NaN when empty."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def classification_summary(
    clean_correct: np.ndarray, attacked_success: np.ndarray,
    attacked: np.ndarray | None = None, clusters: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Clean accuracy, ASR and robust accuracy, each with its 95% interval and its counts.

    :param clean_correct: ``bool[N]`` the model is right on the clean clip.
    :param attacked_success: ``bool[N]`` the attack made an attacked clip wrong (read only on
        attacked clips).
    :param attacked: ``bool[N]`` the clips the attack ran on, all clean-correct (default: every
        clean-correct clip). In a survivor cascade a clean-correct clip fooled by an earlier
        attack is not attacked again, and counts as not robust.
    :param clusters: ``[N]`` each clip's work id (None where unknown), or None: intervals by
        :func:`proportion_interval` (clustered where a work holds several clips; ASR's over the
        attacked clips and their works).
    :returns: ``n``, ``n_attacked`` and ``n_success``; ``clean_accuracy``, ``asr`` =
        fooled / attacked and ``robust_accuracy`` = (attacked and not fooled) / N, each with
        its ``*_ci``; ``interval``: the method over the N clips (:func:`interval_method`) and
        ``works``: how many works they fall in (None when unclustered).
    """
    clean_correct = np.asarray(clean_correct, dtype=bool)
    attacked = clean_correct if attacked is None else np.asarray(attacked, dtype=bool)
    if attacked.shape != clean_correct.shape or (attacked & ~clean_correct).any():
        raise ValueError("attacked must be a bool[N] subset of the clean-correct clips "
                         f"(got {int((attacked & ~clean_correct).sum())} attacked clips that "
                         f"are clean-wrong, shapes {attacked.shape} {clean_correct.shape})")
    success = np.asarray(attacked_success, dtype=bool) & attacked
    robust = attacked & ~success
    n, n_attacked = int(clean_correct.size), int(attacked.sum())
    n_success = int(success.sum())
    if clusters is not None and len(clusters) != n:
        raise ValueError(f"need one cluster id per clip: {len(clusters)} ids for {n} clips")
    attacked_clusters = (None if clusters is None
                         else [c for c, a in zip(clusters, attacked, strict=True) if a])
    return {
        "n": n, "n_attacked": n_attacked, "n_success": n_success,
        "clean_accuracy": rate(clean_correct),
        "clean_accuracy_ci": proportion_interval(clean_correct, clusters),
        "asr": n_success / n_attacked if n_attacked else math.nan,
        "asr_ci": proportion_interval(success[attacked], attacked_clusters),
        "robust_accuracy": rate(robust),
        "robust_accuracy_ci": proportion_interval(robust, clusters),
        "interval": interval_method(clusters),
        "works": cluster_count(clusters),
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
