"""Paired statistics of two cells on the clips both hold: the per-clip outcomes counted
(success, robust correctness, clean correctness), the clips' work ids, and one :class:`Pair`
(rates, difference with its Newcombe interval, discordant clips, McNemar or clustered sign-flip
p; the methods are in :mod:`musicbench.compare`'s docstring). Both the comparison command
(:mod:`musicbench.compare`) and the leaderboard's flags (:mod:`musicbench.leaderboard`) use
them, so they live below both."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from musicbench.metrics import cluster_index, variance_inflation
from musicbench.stats import mcnemar_exact_p, paired_difference_interval, sign_flip_p

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Pair:
    """One paired comparison of condition ``a`` (the first named) with ``b``."""

    a: str
    b: str
    n: int
    rate_a: float
    rate_b: float
    diff: float
    ci_low: float
    ci_high: float
    only_a: int
    only_b: int
    p: float
    p_holm: float
    # How many works the n clips fall in (a clip without a work id counting as one of its own);
    # None when no clip carries a work id.
    works: int | None = None

    @property
    def clustered(self) -> bool:
        """Some work holds several of the clips: the interval and p are the clustered ones."""
        return self.works is not None and self.works < self.n


def paired_pair(a: str, b: str, xa: Sequence[bool], xb: Sequence[bool],
                works: Sequence[str | None] | None = None) -> Pair:
    """Statistics of two aligned 0/1 outcome lists (the same clips in the same order), clustered
    by ``works`` (each clip's work id, None where unknown) when some work holds several clips
    (see the module docstring); the Holm-adjusted p is the raw p until :func:`compare_cells`
    adjusts over the family."""
    if len(xa) != len(xb):
        raise ValueError(f"paired outcomes need equal lengths, got {len(xa)} and {len(xb)}")
    n = len(xa)
    ua, ub = np.asarray(xa, dtype=bool), np.asarray(xb, dtype=bool)
    both, only_a = int((ua & ub).sum()), int((ua & ~ub).sum())
    only_b = int((ub & ~ua).sum())
    neither = n - both - only_a - only_b
    low, high = paired_difference_interval(both, only_a, only_b, neither, CONFIDENCE)
    known = works is not None and any(w is not None for w in works)
    index = cluster_index(works, n) if known else None
    if index is None:
        p = mcnemar_exact_p(only_a, only_b)
        n_works = n if known else None
    else:
        diff = ua.astype(np.int64) - ub.astype(np.int64)  # [n] in {-1, 0, 1}
        n_works = int(index.max()) + 1
        p = sign_flip_p(np.bincount(index, weights=diff, minlength=n_works).round()
                        .astype(np.int64).tolist())
        inflation = variance_inflation(diff, index, level=CONFIDENCE)
        if inflation == math.inf:  # one work: nothing is known about others
            low, high = -1.0, 1.0
        else:
            c_low, c_high = paired_difference_interval(
                *(count / inflation for count in (both, only_a, only_b, neither)), CONFIDENCE)
            low, high = min(low, c_low), max(high, c_high)
    return Pair(a, b, n, (both + only_a) / n, (both + only_b) / n, (only_a - only_b) / n,
                low, high, only_a, only_b, p, p, n_works)


def outcomes(record: Any, varying: str) -> dict[str, bool]:
    """Per clip id, the event counted for this cell (see the module docstring)."""
    if varying == "attack":
        return {s.sample_id: bool(s.success) for s in record.samples if s.attacked}
    return {s.sample_id: bool(s.clean_correct) and not bool(s.success) for s in record.samples}


def success_outcomes(record: Any) -> dict[str, bool]:
    """Per attacked clip id: the attack fooled the model, the event counted when attacks
    vary (clean-wrong clips are not attacked and left out)."""
    return outcomes(record, "attack")


def robust_outcomes(record: Any) -> dict[str, bool]:
    """Per clip id: right after the attack (clean-wrong clips count as wrong), the event
    counted when defenses vary."""
    return outcomes(record, "defense")


def clean_outcomes(record: Any) -> dict[str, bool]:
    """Per clip id: the model (with the cell's defense) is right on the clean clip."""
    return {s.sample_id: bool(s.clean_correct) for s in record.samples}


def work_ids(*records: Any) -> dict[str, str | None]:
    """Per clip id, its work id as the ``records`` stored it (the first record holding one
    wins; None where none does: a store written before work ids were kept, or a dataset
    without works)."""
    out: dict[str, str | None] = {}
    for record in records:
        for s in record.samples:
            if out.get(s.sample_id) is None:
                out[s.sample_id] = s.work_id
    return out


def pair_on_shared_clips(a: str, b: str, xa: dict[str, bool], xb: dict[str, bool],
                         works: dict[str, str | None] | None = None) -> Pair | None:
    """:func:`paired_pair` over the clip ids both outcome maps hold (None if none), clustered
    by ``works`` (clip id -> work id, e.g. :func:`work_ids` of the two cells) when given."""
    common = sorted(xa.keys() & xb.keys())
    if not common:
        return None
    return paired_pair(a, b, [xa[i] for i in common], [xb[i] for i in common],
                       None if works is None else [works.get(i) for i in common])
