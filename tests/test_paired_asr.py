"""The paired comparison script used for docs/maia.md's claim check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from musicbench.store import CellRecord, SampleRecord

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_asr.py"


def _load():
    spec = importlib.util.spec_from_file_location("paired_asr", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(successes: dict[str, bool], not_attacked: tuple[str, ...] = ()) -> CellRecord:
    samples = [SampleRecord(i, n, 0, 0, True, True, 1 if ok else 0, ok, 1, 1)
               for n, (i, ok) in enumerate(successes.items())]
    samples += [SampleRecord(i, 99, 0, 1, False, False, 1, False, 0, 0) for i in not_attacked]
    return CellRecord("k", {}, "ok", "", "", 0.0, samples=samples)


def test_paired_counts_discordant_clips_over_the_common_attacked_set():
    paired = _load().paired
    a = _cell({"c0": True, "c1": True, "c2": True, "c3": False, "c4": True}, ("c9",))
    b = _cell({"c0": True, "c1": False, "c2": False, "c3": True, "c5": True})
    s = paired(a, b)
    assert s["n"] == 4  # c4 and c5 were attacked by one cell only, c9 by none
    assert (s["only_a"], s["only_b"]) == (2, 1)
    assert s["asr_a"] == pytest.approx(0.75) and s["asr_b"] == pytest.approx(0.5)
    assert s["diff"] == pytest.approx(0.25)
    assert s["low"] <= 0.25 <= s["high"]
    assert s["p"] == pytest.approx(1.0)  # 2 vs 1 discordant pairs: no evidence either way


def test_paired_p_value_is_small_when_only_one_side_wins():
    paired = _load().paired
    ids = [f"c{i}" for i in range(20)]
    a = _cell({i: True for i in ids})
    b = _cell({i: n >= 10 for n, i in enumerate(ids)})
    s = paired(a, b)
    assert (s["only_a"], s["only_b"]) == (10, 0)
    assert s["p"] == pytest.approx(2 * 0.5 ** 10)
    assert s["low"] > 0
