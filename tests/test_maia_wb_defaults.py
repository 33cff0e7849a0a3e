"""benchmarks/maia_wb_defaults.py: the stated rule picks what it says on a fake table (no model),
every sweep contains the current default, and every r spends the same region budget."""

from __future__ import annotations

import math

import pytest
from conftest import benchmark_script


def _load():
    return benchmark_script("maia_wb_defaults")


def _runs(script, *asr_lsd):
    """One fake Run per target, 10 clips each, the first round(10 * asr) fooled."""
    return [script.Run([i < round(a * 10) for i in range(10)], lsd, 20.0, 1.0)
            for a, lsd in asr_lsd]


def test_rule_asr_first_then_lsd_then_the_current_default():
    s = _load()
    # the highest mean ASR wins even with a higher LSD
    table = {0.01: _runs(s, (0.3, 0.1), (0.3, 0.1)), 0.03: _runs(s, (0.5, 0.4), (0.2, 0.3))}
    assert s.choose(table, default=0.01) == 0.03
    # equal mean ASR (0.4 both): the lower mean LSD wins
    table = {0.01: _runs(s, (0.5, 0.4), (0.3, 0.2)), 0.03: _runs(s, (0.3, 0.1), (0.5, 0.2))}
    assert s.choose(table, default=0.01) == 0.03
    # a full tie keeps the current default, wherever it sits in the table
    same = _runs(s, (0.4, 0.3), (0.2, 0.3))
    assert s.choose({"raw": same, "normalized": same}, default="normalized") == "normalized"
    # a target without successes has no LSD; it does not make a value's LSD undefined
    table = {1: [s.Run([False] * 10, math.nan, math.nan, 1.0), *_runs(s, (0.2, 0.3))],
             2: _runs(s, (0.1, 0.5), (0.1, 0.5))}
    assert s.choose(table, default=2) == 1


def test_a_sweep_without_the_current_default_is_an_error():
    s = _load()
    with pytest.raises(ValueError, match="current default"):
        s.choose({0.003: _runs(s, (0.1, 0.1))}, default=0.01)


def test_versus_counts_discordant_clips_pooled_over_targets():
    s = _load()
    base = [s.Run([True, False, False], 0.1, 1, 1), s.Run([True, True], 0.1, 1, 1)]
    runs = [s.Run([False, True, True], 0.1, 1, 1), s.Run([True, True], 0.1, 1, 1)]
    gained, lost, p = s.versus(runs, base)
    assert (gained, lost) == (2, 1) and p == 1.0


def test_every_sweep_holds_the_current_default_and_r_keeps_the_region_budget():
    s = _load()
    gap = 0.264
    plan = s.sweeps(gap)
    for parameter, candidates in plan.items():
        assert s.DEFAULTS[parameter] in candidates, parameter
        for value, params in candidates.items():
            assert params[parameter] == value
    for r, params in plan["regions"].items():
        assert r * params.get("gap_seconds", gap) == pytest.approx(gap)
