"""benchmarks/pamt_claims.py: PAMT vs its control per attack and on average, gains over the
undefended model, clean cost, PAMT vs advtrain; all paired, Holm over every comparison."""

from __future__ import annotations

from conftest import benchmark_script
from test_leaderboard_flags import record


def _script():
    return benchmark_script("pamt_claims")


def _cells(defense: str, survivors: dict[str, list[bool]], clean: list[bool] | None = None):
    return [record(attack, "white-box", surv, defense=defense, clean=clean)
            for attack, surv in survivors.items()]


def test_the_claim_is_paired_per_attack_and_averaged_per_clip():
    claims = _script()
    n = 40
    none = _cells("none", {"pgd": [False] * n, "maia-wb": [True] * 10 + [False] * 30})
    # the control keeps 10 clips under PGD, PAMT 20 (10 more); under MAIA-WB both keep 20
    control = _cells("pamt-control", {"pgd": [True] * 10 + [False] * 30,
                                      "maia-wb": [True] * 20 + [False] * 20})
    pamt = _cells("pamt", {"pgd": [True] * 20 + [False] * 20,
                           "maia-wb": [True] * 20 + [False] * 20})
    advtrain = _cells("advtrain, 30 epochs", {"pgd": [True] * 30 + [False] * 10,
                                              "maia-wb": [True] * 20 + [False] * 20},
                      clean=[False] * 4 + [True] * 36)
    rows, averages = claims.evidence(none + control + pamt + advtrain)
    by = {(r.family, r.pair.a, r.attack): r for r in rows}
    pgd = by[("pamt claim", "pamt", "pgd")].pair
    assert (pgd.n, pgd.diff, pgd.only_a, pgd.only_b) == (n, 0.25, 10, 0)
    assert by[("pamt claim", "pamt", "maia-wb")].pair.diff == 0.0
    # advtrain is found by its label's prefix, and PAMT is below it under PGD (20 vs 26)
    assert by[("pamt vs advtrain", "pamt", "pgd")].pair.diff == -0.15
    assert by[("clean cost", "advtrain, 30 epochs", "")].pair.diff == -0.1
    # robust accuracy counts clean-wrong clips as wrong: of advtrain's 30 survivors 4 are
    # clean-wrong, so 26 of 40
    gain = by[("robustness gain", "advtrain, 30 epochs", "pgd")].pair
    assert gain.rate_a == 26 / 40 and gain.rate_b == 0.0
    # 2 attacks x (pamt claim) + 3 defenses x (2 gains + 1 cost) + 2 pamt vs advtrain
    assert len(rows) == 2 + 9 + 2
    assert all(r.p_holm >= r.pair.p for r in rows)
    (avg,) = averages
    assert avg.attacks == ("maia-wb", "pgd") and avg.n == n
    assert avg.diff == 12.5  # (25 + 0) / 2 points
    assert avg.ci_low <= 12.5 <= avg.ci_high and avg.ci_low > 0
    assert avg.verdict.startswith("reproduced") and "consistent with +9.15" in avg.verdict
    table = claims.render(rows, averages)
    assert f"{len(rows)} paired comparisons, Holm-adjusted together" in table


def test_no_gain_is_not_called_reproduced():
    claims = _script()
    same = {"pgd": [True] * 5 + [False] * 15}
    rows, averages = claims.evidence(_cells("pamt-control", same) + _cells("pamt", same))
    (avg,) = averages
    assert avg.diff == 0.0 and avg.verdict.startswith("not shown")
    assert "inconsistent with +9.15" in avg.verdict
    assert [r.family for r in rows] == ["pamt claim"]


def _relabelled(records, label: str):
    """The same cells as another row of model ``m`` (a ``[[models]]`` entry with a label)."""
    from dataclasses import replace
    return [replace(r, spec=replace(r.spec, model=replace(r.spec.model, label=label)))
            for r in records]


def test_rows_of_one_model_are_averaged_over_all_their_attacks_on_shared_clips():
    claims = _script()
    # row "m": 8 clips, PGD and MAIA-WB; row "m, 4 clips": its first 4 clips, C&W
    big = (_cells("pamt", {"pgd": [True] * 8, "maia-wb": [True] * 8})
           + _cells("pamt-control", {"pgd": [True] * 4 + [False] * 4, "maia-wb": [True] * 8}))
    small = _relabelled(_cells("pamt", {"cw": [True, True, False, False]})
                        + _cells("pamt-control", {"cw": [False] * 4}), "m, 4 clips")
    _, per_row = claims.evidence(big + small)
    assert [(a.model, a.n) for a in per_row] == [("m", 8), ("m, 4 clips", 4)]
    (pooled,) = claims.model_averages(big + small)
    assert pooled.attacks == ("maia-wb", "pgd", "cw") and pooled.n == 4
    # on c0..c3 PGD and MAIA-WB differ nowhere; C&W: +1 on c0, c1 -> (1/3 + 1/3) / 4
    assert abs(pooled.diff - 100 / 6) < 1e-9
    assert "post hoc" in pooled.model
    # a model with one row gets no pooled figure
    assert claims.model_averages(big) == []
