"""benchmarks/defense_evidence.py: paired overstatement, robustness gain and clean cost."""

from __future__ import annotations

import dataclasses

from conftest import benchmark_script
from test_leaderboard_flags import record


def _script():
    return benchmark_script("defense_evidence")


def _row(defense: str, survivors: dict[str, list[bool]], clean: list[bool] | None = None):
    cells = [record(label, "black-box" if label == "square" else "white-box", surv,
                    defense=defense, clean=clean) for label, surv in survivors.items()]
    for cell in cells:  # contrast cells are marked as the planner marks them
        if cell.spec.attack.label.endswith("non-adaptive"):
            cell.spec = dataclasses.replace(
                cell.spec, run=dataclasses.replace(cell.spec.run, adaptive=False))
    return cells


def test_the_three_families_are_paired_and_adjusted_together():
    ev = _script()
    n = 20
    broken = [False] * n
    kept = [True] * 15 + [False] * 5
    undefended = _row("none", {"apgd-ce": broken, "apgd-dlr": broken, "square": kept,
                               "apgd-ce, non-adaptive": broken})
    # the defense masks gradients: the non-adaptive APGD leaves 15 clips, the adaptive none;
    # the headline worst case (square is only as strong as undefended; the contrast cell
    # does not count) is no better than undefended; two clean clips are lost
    clean = [True] * 18 + [False] * 2
    defended = _row("quantize", {"apgd-ce": broken, "apgd-dlr": broken, "square": kept,
                                 "apgd-ce, non-adaptive": kept}, clean=clean)
    rows = {(r.family, r.defense): r for r in ev.evidence(undefended + defended)}
    over = rows[("overstatement", "quantize")].pair
    assert (over.n, over.rate_a, over.rate_b, over.only_a) == (n, 0.75, 0.0, 15)
    assert rows[("overstatement", "quantize")].p_holm < 0.05
    assert rows[("robustness gain", "quantize")].pair.diff == 0.0
    cost = rows[("clean cost", "quantize")].pair
    assert cost.diff == -0.1 and cost.only_b == 2
    assert rows[("overstatement", "none")].pair.diff == 0.0
    assert len(rows) == 4  # none has no gain/cost against itself
    table = ev.render(list(rows.values()))
    assert table.startswith("4 paired comparisons, Holm-adjusted together")
