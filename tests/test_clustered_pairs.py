"""Paired comparisons clustered by work: the sign-flip test over works and the widened
Newcombe interval (:func:`musicbench.compare.paired_pair`)."""

from __future__ import annotations

import pytest

from musicbench.pairing import paired_pair
from musicbench.stats import mcnemar_exact_p, paired_difference_interval, sign_flip_p


def _works(sizes: list[int]) -> list[str]:
    return [f"w{j}" for j, size in enumerate(sizes) for _ in range(size)]


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (4, 9), (7, 7), (12, 1)])
def test_the_sign_flip_test_over_one_clip_works_is_exact_mcnemar(b, c):
    assert sign_flip_p([1] * b + [-1] * c + [0] * 5) == pytest.approx(mcnemar_exact_p(b, c))


def test_the_sign_flip_test_by_hand():
    assert sign_flip_p([3, 2]) == 0.5  # 2 works: 4 sign vectors, 2 as extreme
    assert sign_flip_p([4] * 8) == pytest.approx(2 / 2**8)
    assert sign_flip_p([3, -1, 0]) == pytest.approx(1.0)  # |3-1| = 2 is reached by every sign
    assert sign_flip_p([]) == 1.0


def test_a_pair_without_work_ids_is_the_unclustered_one():
    xa = [True] * 10 + [False] * 10
    xb = [False] * 20
    plain = paired_pair("a", "b", xa, xb)
    assert plain.works is None and not plain.clustered
    assert plain.p == pytest.approx(2 * 0.5**10)
    assert paired_pair("a", "b", xa, xb, [None] * 20) == plain
    singletons = paired_pair("a", "b", xa, xb, [f"w{i}" for i in range(20)])
    assert (singletons.works, singletons.clustered) == (20, False)
    assert (singletons.p, singletons.ci_low, singletons.ci_high) == (
        plain.p, plain.ci_low, plain.ci_high)


def test_a_pair_clustered_by_work_is_wider_and_tests_over_works():
    # A wins on 10 clips, but they are 2 works of 5: two works cannot show much
    xa = [True] * 10 + [False] * 10
    xb = [False] * 20
    works = _works([5, 5]) + [f"s{i}" for i in range(10)]
    pair = paired_pair("a", "b", xa, xb, works)
    assert (pair.works, pair.clustered) == (12, True)
    assert pair.p == pytest.approx(sign_flip_p([5, 5])) == 0.5
    plain = paired_difference_interval(0, 10, 0, 10)
    assert pair.ci_low < plain[0] and pair.ci_high >= plain[1]
    assert pair.diff == 0.5 and pair.ci_low <= pair.diff <= pair.ci_high
