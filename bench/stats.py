"""Small exact statistics for paired 0/1 outcomes: Wilson intervals, Newcombe's interval of a
paired difference of proportions, the exact McNemar test, its clustered form (an exact
sign-flip test over clusters) and Holm's step-down correction.

Pure functions on counts (standard library only), so they can be checked by hand.

A paired 2x2 table of n clips scored by two conditions A and B (1 = the event, e.g. "fooled"):

    ============  =======  =======
                  B = 1    B = 0
    ============  =======  =======
    **A = 1**     ``a``    ``b``
    **A = 0**     ``c``    ``d``
    ============  =======  =======

``b`` and ``c`` are the discordant clips (A only, B only); the difference of the two rates is
``(b - c) / n``.

References:
- E. B. Wilson (1927), "Probable inference, the law of succession, and statistical inference",
  JASA 22, 209-212.
- R. G. Newcombe (1998), "Improved confidence intervals for the difference between binomial
  proportions based on paired data", Statistics in Medicine 17, 2635-2650: method 10, the
  square-and-add (MOVER) interval from the two Wilson intervals with the estimated correlation,
  recommended by M. W. Fagerland, S. Lydersen, P. Laake (2014), "Recommended tests and
  confidence intervals for paired binomial proportions", Statistics in Medicine 33, 2850-2875.
- Q. McNemar (1947), Psychometrika 12, 153-157; the exact (conditional binomial) form.
- V. L. Durkalski, Y. Y. Palesch, S. R. Lipsitz, P. F. Rust (2003), "Analysis of clustered
  matched-pair data", Statistics in Medicine 22, 2417-2428: McNemar's statistic with the
  variance of the clusters' discordance sums; :func:`sign_flip_p` is its exact randomisation
  form.
- S. Holm (1979), "A simple sequentially rejective multiple test procedure", Scandinavian
  Journal of Statistics 6, 65-70.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` (never [1, 1] at k = n; needs n > 0;
    real counts allowed)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = _z(confidence)
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference_interval(a: float, b: float, c: float, d: float,
                               confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998) method-10 interval of ``p_A - p_B = (b - c) / n`` for paired 0/1 data.

    From the Wilson intervals ``(l1, u1)`` of ``p_A = (a + b) / n`` and ``(l2, u2)`` of
    ``p_B = (a + c) / n`` and the correlation estimate ``phi``:

        lower = D - sqrt((p_A - l1)^2 - 2 phi (p_A - l1)(u2 - p_B) + (u2 - p_B)^2)
        upper = D + sqrt((p_B - l2)^2 - 2 phi (p_B - l2)(u1 - p_A) + (u1 - p_A)^2)

    where ``phi = (ad - bc - n/2) / sqrt((a+b)(c+d)(a+c)(b+d))`` if ``ad - bc > n/2``, 0 if
    ``0 <= ad - bc <= n/2``, ``(ad - bc) / sqrt(...)`` if ``ad - bc < 0``, and 0 when a margin
    is empty (Newcombe's continuity correction of phi, which keeps the interval from collapsing
    when every pair is concordant). It stays inside [-1, 1], has positive width for every table,
    and its width at b = c = 0 shrinks with n as the Wilson intervals do. Counts may be real
    (effective counts of clustered clips: every count divided by one design effect).
    """
    for name, v in (("a", a), ("b", b), ("c", c), ("d", d)):
        if v < 0:
            raise ValueError(f"paired_difference_interval: count {name} = {v} < 0")
    n = a + b + c + d
    if n == 0:
        raise ValueError("paired_difference_interval needs at least one pair")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, confidence)
    l2, u2 = wilson_interval(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    else:
        phi = cross / math.sqrt(margins)
    diff = p1 - p2
    lower = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)
                                 + (u2 - p2) ** 2))
    upper = diff + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
                                 + (u1 - p1) ** 2))
    return (lower, upper)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: the binomial test of ``b`` successes in ``b + c``
    discordant pairs at 1/2 (``min(1, 2 P[X <= min(b, c)])``); 1.0 when there are none."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact_p needs counts >= 0, got b={b}, c={c}")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**m)


def sign_flip_p(sums: Sequence[int]) -> float:
    """Exact two-sided p of the sign-flip test over clusters: ``sums[j]`` is cluster j's
    ``(A only) - (B only)`` count of discordant clips; under the null each cluster's sum is as
    likely to have either sign (A and B exchangeable within a cluster), so p is the share of
    the 2^K sign vectors e with ``|sum_j e_j sums[j]| >= |sum_j sums[j]|``, counted exactly by
    convolution. With every cluster one clip (sums of -1, 0, +1) it is the exact McNemar p;
    1.0 when every sum is 0. Its smallest possible value is ``2 / 2^K`` over the K clusters
    with a nonzero sum (0.5 for 2 works), so few works cannot give a small p."""
    signed = [int(v) for v in sums]
    observed = abs(sum(signed))
    counts = {0: 1}  # value of sum_j e_j |S_j| -> number of sign vectors giving it
    for v in (abs(x) for x in signed if x):
        spread: dict[int, int] = {}
        for total, ways in counts.items():
            spread[total + v] = spread.get(total + v, 0) + ways
            spread[total - v] = spread.get(total - v, 0) + ways
        counts = spread
    extreme = sum(ways for total, ways in counts.items() if abs(total) >= observed)
    return min(1.0, extreme / sum(counts.values()))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: the i-th smallest p (from 0) is
    multiplied by ``m - i``, made non-decreasing along the order, and capped at 1. Rejecting
    where the adjusted p <= alpha controls the family-wise error rate at alpha over the m."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
