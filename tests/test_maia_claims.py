"""benchmarks/maia_claims.py: a claim is held only when every part holds (ASR, FAD, LSD)."""

from __future__ import annotations

from conftest import benchmark_script
from test_leaderboard_flags import record

from musicbench.store import MetricValue


def _script():
    return benchmark_script("maia_claims")


def _cell(label: str, fooled: int, n: int, fad: float, lsd: tuple[float, float, float]):
    cell = record(label, "white-box", [False] * fooled + [True] * (n - fooled))
    cell.metrics["fad"] = MetricValue(fad)
    cell.metrics["lsd"] = MetricValue(lsd[0], (lsd[1], lsd[2]))
    return cell


def test_higher_asr_alone_is_not_the_claim():
    claims = _script()
    maia = _cell("maia-wb", 30, 40, fad=5.0, lsd=(0.3, 0.25, 0.35))
    pgd = _cell("pgd", 5, 40, fad=1.0, lsd=(2.0, 1.9, 2.1))  # MAIA: more ASR, lower LSD ...
    cw = _cell("cw", 6, 40, fad=9.0, lsd=(1.0, 0.9, 1.1))  # ... and here lower FAD too
    rows = {r["baseline"]: r for r in claims.check([maia, pgd, cw])}
    assert rows["pgd"]["asr"].verdict == "holds" and rows["pgd"]["lsd"].verdict == "holds"
    assert rows["pgd"]["fad"].verdict == "fails" and rows["pgd"]["claim"] == "fails"
    assert rows["cw"]["claim"] == "held"


def test_a_small_difference_is_not_shown_after_the_correction():
    claims = _script()
    maia = _cell("maia-wb", 7, 40, fad=0.5, lsd=(0.3, 0.25, 0.35))
    pgd = _cell("pgd", 5, 40, fad=1.0, lsd=(2.0, 1.9, 2.1))
    row = claims.check([maia, pgd])[0]
    assert row["asr"].verdict == "not shown" and row["claim"] == "not shown"
