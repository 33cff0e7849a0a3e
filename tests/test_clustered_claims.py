"""The analysis scripts compare clips clustered by work when the store holds work ids, and
say that they could not when it does not."""

from __future__ import annotations

from conftest import benchmark_script
from test_leaderboard_flags import record


def _cells(defense: str, survivors: dict[str, list[bool]], works: list[str] | None):
    cells = [record(attack, "white-box", surv, defense=defense)
             for attack, surv in survivors.items()]
    for cell in cells:
        for s in cell.samples:
            s.work_id = None if works is None else works[s.position]
    return cells


def _run(works: list[str] | None):
    # 32 clips in 4 works of 8: PAMT keeps works 0 and 1 under PGD, the control keeps none
    n = 32
    keep = [i < 16 for i in range(n)]
    return (_cells("none", {"pgd": [False] * n}, works)
            + _cells("pamt-control", {"pgd": [False] * n}, works)
            + _cells("pamt", {"pgd": keep}, works))


WORKS = [f"w{i // 8}" for i in range(32)]


def test_pamt_claims_are_clustered_by_work_when_clips_carry_work_ids():
    claims = benchmark_script("pamt_claims")
    rows, averages = claims.evidence(_run(WORKS))
    plain_rows, plain_averages = claims.evidence(_run(None))
    claim = next(r.pair for r in rows if r.family == "pamt claim")
    plain = next(r.pair for r in plain_rows if r.family == "pamt claim")
    assert (claim.n, claim.only_a, claim.works, claim.clustered) == (32, 16, 4, True)
    assert plain.works is None and plain.p < 1e-4  # 16 clips taken as 16 independent wins
    assert claim.p == 0.5  # two works won of four: 2 of the 4 sign vectors as extreme
    assert claim.ci_low < plain.ci_low
    (avg,), (plain_avg,) = averages, plain_averages
    assert (avg.works, plain_avg.works) == (4, None) and avg.diff == plain_avg.diff == 50.0
    assert avg.ci_low < plain_avg.ci_low  # resampling 4 works, not 32 clips
    table = claims.render(rows, averages)
    assert "clustered by work: 4 works" in table and "| 32 (4 works) |" in table
    assert "carry no work ids" in claims.render(plain_rows, plain_averages)


def test_defense_evidence_is_clustered_by_work_when_clips_carry_work_ids():
    evidence = benchmark_script("defense_evidence")
    clustered = evidence.render(evidence.evidence(_run(WORKS)))
    assert "clustered by work: 4 works" in clustered and "sign-flip" in clustered
    assert "carry no work ids" in evidence.render(evidence.evidence(_run(None)))
