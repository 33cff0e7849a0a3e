"""Intervals of proportions and paired differences when clips cluster in works."""

from __future__ import annotations

import math

import numpy as np
import pytest

from musicbench import metrics


def _width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


def _works(sizes: list[int]) -> list[str]:
    return [f"w{j}" for j, size in enumerate(sizes) for _ in range(size)]


@pytest.mark.parametrize("clusters", [None, [f"w{i}" for i in range(20)], [None] * 20,
                                      [f"w{i}" for i in range(10)] + [None] * 10])
def test_clips_each_of_their_own_work_keep_the_exact_interval(clusters):
    x = np.arange(20) < 7
    assert metrics.proportion_interval(x, clusters) == metrics.clopper_pearson(7, 20)
    assert metrics.interval_method(clusters) == metrics.CLOPPER_PEARSON


def test_perfectly_correlated_works_widen_the_interval_to_about_one_clip_per_work():
    # 8 works of 4 clips, each work all right or all wrong: 32 clips that know as much as 8
    clusters = _works([4] * 8)
    x = np.repeat(np.arange(8) < 3, 4)
    clustered = metrics.proportion_interval(x, clusters)
    exact = metrics.clopper_pearson(12, 32)
    assert clustered[0] < exact[0] and clustered[1] > exact[1]
    assert _width(clustered) >= _width(metrics.clopper_pearson(3, 8))  # one clip per work
    assert metrics.interval_method(clusters).endswith("clustered by work: 8 works")


@pytest.mark.parametrize("seed", range(12))
def test_a_clustered_interval_is_never_narrower_than_clopper_pearson(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    clusters = [f"w{j}" for j in rng.integers(0, max(1, n // 3), n)]
    x = rng.random(n) < rng.random()
    low, high = metrics.proportion_interval(x, clusters)
    exact = metrics.clopper_pearson(int(x.sum()), n)
    assert low <= exact[0] and high >= exact[1]
    assert 0 <= low <= x.mean() <= high <= 1


def test_independent_looking_works_cost_only_the_degrees_of_freedom():
    # works whose clips vary as much as independent clips: deff = 1, so the widening is the
    # t(works - 1) factor alone, small at 42 works
    rng = np.random.default_rng(3)
    clusters = _works([2] * 32)
    x = rng.random(64) < 0.3
    index = metrics.cluster_index(clusters, 64)
    inflation = metrics.variance_inflation(x, index)
    assert inflation >= 1.0
    assert _width(metrics.proportion_interval(x, clusters)) < 1.25 * _width(
        metrics.clopper_pearson(int(x.sum()), 64))


def test_one_work_says_nothing_about_others():
    assert metrics.proportion_interval(np.ones(8, bool), ["w"] * 8) == (0.0, 1.0)
    assert math.isinf(metrics.variance_inflation(np.ones(8), np.zeros(8, dtype=np.int64)))


def test_intervals_are_deterministic():
    rng = np.random.default_rng(0)
    x = rng.random(40) < 0.4
    clusters = _works([5] * 8)
    assert metrics.proportion_interval(x, clusters) == metrics.proportion_interval(x, clusters)
    values = rng.random(40)
    assert metrics.bootstrap_ci(values, clusters=clusters) == metrics.bootstrap_ci(
        values, clusters=clusters)


def test_the_cluster_bootstrap_resamples_works():
    # two works, one all 0 and one all 1: resampling works gives means of 0, 1/2 or 1, and
    # an interval spanning them; resampling clips gives a narrow one around 1/2
    values = np.repeat([0.0, 1.0], 10)
    assert metrics.bootstrap_ci(values, clusters=_works([10, 10])) == (0.0, 1.0)
    low, high = metrics.bootstrap_ci(values)
    assert 0.2 < low < 0.5 < high < 0.8
    assert metrics.bootstrap_ci(values, clusters=[None] * 20) == (low, high)


def test_a_cluster_list_of_the_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="3 ids for 4 clips"):
        metrics.proportion_interval(np.ones(4, bool), ["a", "b", "c"])


# -- classification_summary --------------------------------------------------------------------


def test_summary_of_a_survivor_cascade_counts_clips_fooled_earlier_as_not_robust():
    correct = np.array([1, 1, 1, 1, 1, 0], dtype=bool)
    attacked = np.array([1, 1, 1, 0, 0, 0], dtype=bool)  # clips 3, 4 fooled by an earlier attack
    success = np.array([1, 0, 0, 1, 0, 0], dtype=bool)  # clip 3's success is not this attack's
    s = metrics.classification_summary(correct, success, attacked=attacked)
    assert (s["n"], s["n_attacked"], s["n_success"]) == (6, 3, 1)
    assert s["asr"] == pytest.approx(1 / 3)
    assert s["robust_accuracy"] == pytest.approx(2 / 6)
    assert s["robust_accuracy_ci"] == metrics.clopper_pearson(2, 6)
    assert (s["interval"], s["works"]) == (metrics.CLOPPER_PEARSON, None)


def test_summary_defaults_to_attacking_every_clean_correct_clip():
    correct = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    success = np.array([1, 0, 0, 1, 1, 0], dtype=bool)
    assert metrics.classification_summary(correct, success) == metrics.classification_summary(
        correct, success, attacked=correct)


def test_summary_refuses_attacked_clips_that_are_clean_wrong():
    with pytest.raises(ValueError, match="1 attacked clips that are clean-wrong"):
        metrics.classification_summary(np.array([1, 0], bool), np.array([0, 0], bool),
                                       attacked=np.array([1, 1], bool))


def test_summary_with_works_uses_clustered_intervals_and_says_so():
    clusters = _works([4] * 6)
    correct = np.repeat([1, 1, 1, 1, 0, 1], 4).astype(bool)
    success = np.repeat([1, 1, 0, 0, 0, 0], 4).astype(bool)
    s = metrics.classification_summary(correct, success, clusters=clusters)
    assert (s["n"], s["n_attacked"], s["n_success"]) == (24, 20, 8)
    assert s["works"] == 6 and "clustered by work: 6 works" in s["interval"]
    for key, k, n in (("clean_accuracy", 20, 24), ("asr", 8, 20), ("robust_accuracy", 12, 24)):
        assert _width(s[f"{key}_ci"]) > _width(metrics.clopper_pearson(k, n)), key
    # ASR's interval is over the attacked clips and their 5 works
    assert s["asr_ci"] == metrics.proportion_interval(np.repeat([1, 1, 0, 0, 0], 4) == 1,
                                                      _works([4] * 5))


def test_when_every_clip_agrees_each_work_counts_as_one_clip():
    # 0 of 32 clips in 8 works: nothing shows how alike a work's clips are, so assume the
    # worst (deff = 4 clips per work), then the t(7) factor
    from scipy.stats import norm, t

    index = metrics.cluster_index(_works([4] * 8), 32)
    factor = (t.ppf(0.975, 7) / norm.ppf(0.975)) ** 2
    assert metrics.variance_inflation(np.zeros(32), index) == pytest.approx(4 * factor)
    low, high = metrics.proportion_interval(np.zeros(32, bool), _works([4] * 8))
    assert low == 0 and high == pytest.approx(1 - 0.025 ** (factor / 8))
    assert high > metrics.clopper_pearson(0, 8)[1]
