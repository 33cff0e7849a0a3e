"""Coverage of the clustered intervals and size of the clustered test, by simulation.

Clips are drawn in works whose clips share a random success probability: work j's
probability ~ Beta(p s, (1 - p) s) with s = (1 - ICC) / ICC, so the intra-class correlation of
two clips of one work is ICC (ICC 0: independent clips). Paired outcomes (A, B) draw each work's
2x2 cell probabilities from a Dirichlet the same way (each cell indicator has that ICC).

Run as a script for the table docs/metrics.md quotes (2000 data sets per row, ~3 min)::

    OMP_NUM_THREADS=1 python tests/test_clustered_coverage.py [data sets per row]
    OMP_NUM_THREADS=1 python tests/test_clustered_coverage.py alternatives [data sets per row]

(the second: the rejected cluster bootstrap and the interval without the t factor, ~5 min).

The tests run a few rows with fewer data sets, at margins several standard errors wide.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import norm, t

from musicbench.metrics import (
    _beta_interval,
    bootstrap_ci,
    clopper_pearson,
    cluster_index,
    proportion_interval,
    variance_inflation,
)
from musicbench.pairing import paired_pair
from musicbench.stats import mcnemar_exact_p, paired_difference_interval

Interval = Callable[[np.ndarray, Sequence[str]], tuple[float, float]]
PAIRED_CELLS = (0.30, 0.15, 0.05, 0.50)  # P(both), P(A only), P(B only), P(neither): D = 0.10
NULL_CELLS = (0.30, 0.10, 0.10, 0.50)  # D = 0


def _work_probabilities(rng: np.random.Generator, mean: Sequence[float], icc: float,
                        works: int) -> np.ndarray:
    """``[works, len(mean)]`` per-work category probabilities with the given mean and ICC."""
    mean = np.asarray(mean, dtype=np.float64)
    if icc == 0:
        return np.tile(mean, (works, 1))
    return rng.dirichlet(mean * (1 - icc) / icc, size=works)


def clustered_clips(rng: np.random.Generator, mean: Sequence[float], icc: float,
                    sizes: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """``(category[N], work ids[N])``: clips of works with ``sizes[j]`` clips each."""
    probs = _work_probabilities(rng, mean, icc, len(sizes))
    cats, works = [], []
    for j, size in enumerate(sizes):
        cats.append(rng.choice(len(mean), size=size, p=probs[j]))
        works += [f"w{j}"] * size
    return np.concatenate(cats), works


def design(name: str, rng: np.random.Generator) -> list[int]:
    """Work sizes: ``"n/works"`` equal works (n = 16/2: 2 works of 8), or ``"n~works"``: n clips
    spread over that many works at random (every work at least one clip: what a random draw of
    clips from m21-styles' test split gives, e.g. 16 clips in 14 works)."""
    if "/" in name:
        n, works = map(int, name.split("/"))
        return [n // works] * works
    n, works = map(int, name.split("~"))
    return list(np.bincount(rng.integers(0, works, n - works), minlength=works) + 1)


def exact(x: np.ndarray, works: Sequence[str]) -> tuple[float, float]:
    return clopper_pearson(int(x.sum()), x.size)


def cluster_bootstrap(x: np.ndarray, works: Sequence[str]) -> tuple[float, float]:
    """The rejected alternative: percentile cluster bootstrap, widened to contain CP."""
    low, high = bootstrap_ci(x.astype(np.float64), clusters=works)
    cp = exact(x, works)
    return (min(low, cp[0]), max(high, cp[1]))


def without_df(x: np.ndarray, works: Sequence[str]) -> tuple[float, float]:
    """The rejected alternative: the clustered interval without the t(works - 1) factor."""
    index = cluster_index(works, x.size)
    works_n = int(index.max()) + 1
    factor = (t.ppf(0.975, works_n - 1) / norm.ppf(0.975)) ** 2
    n_eff = x.size / (variance_inflation(x, index) / factor)
    low, high = _beta_interval(n_eff * x.mean(), n_eff, 0.95)
    cp = exact(x, works)
    return (min(low, cp[0]), max(high, cp[1]))


ALTERNATIVES: dict[str, Interval] = {"cluster bootstrap": cluster_bootstrap,
                                     "no t factor": without_df}


def coverage(p: float, icc: float, layout: str, reps: int, seed: int = 0,
             others: dict[str, Interval] | None = None) -> dict[str, tuple[float, float]]:
    """``{method: (coverage, mean width)}`` of 95% intervals of a proportion ``p``."""
    rng = np.random.default_rng(seed)
    methods: dict[str, Interval] = {"Clopper–Pearson": exact, "clustered": proportion_interval,
                                    **(others or {})}
    hits = dict.fromkeys(methods, 0)
    widths = dict.fromkeys(methods, 0.0)
    for _ in range(reps):
        cats, works = clustered_clips(rng, (p, 1 - p), icc, design(layout, rng))
        x = cats == 0
        for name, interval in methods.items():
            low, high = interval(x, works)
            hits[name] += low <= p <= high
            widths[name] += high - low
    return {k: (hits[k] / reps, widths[k] / reps) for k in methods}


def paired_coverage(icc: float, layout: str, reps: int, seed: int = 0
                    ) -> dict[str, tuple[float, float]]:
    """``{method: (coverage of D = 0.10, rejection rate at 0.05 under D = 0)}``."""
    rng = np.random.default_rng(seed)
    truth = PAIRED_CELLS[1] - PAIRED_CELLS[2]
    covered = {"Newcombe / McNemar": 0, "clustered": 0}
    rejected = dict.fromkeys(covered, 0)
    for _ in range(reps):
        sizes = design(layout, rng)
        for cells, under_null in ((PAIRED_CELLS, False), (NULL_CELLS, True)):
            cats, works = clustered_clips(rng, cells, icc, sizes)
            xa, xb = np.isin(cats, (0, 1)), np.isin(cats, (0, 2))
            counts = [int((cats == c).sum()) for c in range(4)]
            plain = (paired_difference_interval(*counts), mcnemar_exact_p(counts[1], counts[2]))
            pair = paired_pair("a", "b", xa, xb, works)
            for name, ((low, high), p) in (("Newcombe / McNemar", plain),
                                           ("clustered", ((pair.ci_low, pair.ci_high), pair.p))):
                if under_null:
                    rejected[name] += p <= 0.05
                else:
                    covered[name] += low <= truth <= high
    return {k: (covered[k] / reps, rejected[k] / reps) for k in covered}


# -- tests -------------------------------------------------------------------------------------


def test_clustered_intervals_cover_where_clopper_pearson_does_not():
    # 64 clips in 8 works of 8, ICC 0.5: Clopper–Pearson covers ~67%, the clustered ~97%
    # (2000 data sets; at 300 the standard error is about 1.3 points)
    got = coverage(0.3, 0.5, "64/8", reps=300)
    assert got["Clopper–Pearson"][0] < 0.80
    assert got["clustered"][0] >= 0.92


def test_clustered_intervals_stay_near_clopper_pearson_for_independent_clips():
    got = coverage(0.3, 0.0, "64~42", reps=300)
    assert got["clustered"][0] >= 0.93
    assert got["clustered"][1] < 1.15 * got["Clopper–Pearson"][1]


def test_the_sign_flip_test_keeps_its_size_where_mcnemar_does_not():
    got = paired_coverage(0.5, "64/8", reps=300)
    assert got["Newcombe / McNemar"][1] > 0.10  # exact McNemar rejects a true null too often
    assert got["clustered"][1] <= 0.08
    assert got["clustered"][0] >= 0.92


# -- the table ---------------------------------------------------------------------------------

LAYOUTS = ("16/2", "64/8", "512/64", "16~14", "64~42")


def main(reps: int) -> None:
    print(f"95% intervals of a proportion p; {reps} data sets per row; coverage % "
          "(mean width in points)")
    print("| p | clips / works | ICC | Clopper–Pearson | clustered |\n|---|---|---|---|---|")
    for p in (0.3, 0.1):
        for layout in LAYOUTS:
            for icc in (0.0, 0.2, 0.5):
                got = coverage(p, icc, layout, reps)
                print(f"| {p} | {layout} | {icc} | " + " | ".join(
                    f"{100 * c:.1f} ({100 * w:.0f})" for c, w in got.values()) + " |",
                      flush=True)
    print(f"\nPaired: coverage % of the 95% interval of D = 0.10 and rejection % at 0.05 "
          f"under D = 0; {reps} data sets per row")
    print("| clips / works | ICC | Newcombe cover | McNemar reject | clustered cover | "
          "sign-flip reject |\n|---|---|---|---|---|---|")
    for layout in LAYOUTS:
        for icc in (0.0, 0.2, 0.5):
            got = paired_coverage(icc, layout, reps)
            print(f"| {layout} | {icc} | " + " | ".join(
                f"{100 * c:.1f} | {100 * r:.1f}" for c, r in got.values()) + " |", flush=True)


def main_alternatives(reps: int) -> None:
    print(f"Rejected alternatives at few works; {reps} data sets per row; coverage % (width)")
    print("| p | clips / works | ICC | Clopper–Pearson | clustered | cluster bootstrap | "
          "no t factor |\n|---|---|---|---|---|---|---|")
    for p in (0.3, 0.1):
        for layout in ("16/2", "64/8"):
            for icc in (0.0, 0.2, 0.5):
                got = coverage(p, icc, layout, reps, others=ALTERNATIVES)
                print(f"| {p} | {layout} | {icc} | " + " | ".join(
                    f"{100 * c:.1f} ({100 * w:.0f})" for c, w in got.values()) + " |",
                      flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["alternatives"]:
        main_alternatives(int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
