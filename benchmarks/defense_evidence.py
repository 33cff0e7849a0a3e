"""Paired evidence on a stored run of leaderboards/configs/defenses.toml.

Three families of comparisons, each paired on the same clips (every cell of one dataset and
model draws the same clips, and every attack on one (dataset, model, defense) attacks the same
clean-correct clips, since clean verdicts are judged once per row):

1. **Overstatement** (Athalye et al. 2018): for every defense, the robust accuracy a weaker
   evaluation leaves minus what the adaptive APGD-CE leaves, on all the row's clips: the
   non-adaptive APGD-CE (no EOT, no BPDA; planned only where there is something to adapt
   to) and the defense-oblivious one (crafted on the undefended model). Positive = the weaker
   evaluation overstates robustness. This is the confirmatory family.
2. **Robustness gain**: per defense, the headline worst-case robust accuracy (a clip counts
   when the defended model is right on it clean and it survives every adaptive attack of the
   default threat model, L-inf 0.002: the leaderboard's headline) minus that of the
   undefended model, on the same clips.
3. **Clean cost**: per defense, clean accuracy with it minus without it, on the same clips.

Each difference comes with a 95% Newcombe (method 10) interval and an exact McNemar p, or,
where the clips carry work ids and some works hold several of them, the clustered ones of
:func:`musicbench.compare.paired_pair` (Newcombe at Korn-Graubard effective counts, the exact
sign-flip test over works; the n column then gives the works); the p-values of all comparisons
the script makes are Holm-adjusted together (the count is printed). The undefended row is the
one whose defense label is ``--baseline`` (default ``none``): an analysis script may name a
defense; the harness never does. Reads the store only::

    python benchmarks/defense_evidence.py runs/defenses   # or leaderboards/runs/defenses.sqlite
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from musicbench.compare import (
    Pair,
    clean_outcomes,
    clips_cell,
    difference_cells,
    methods_sentence,
    pair_on_shared_clips,
    robust_outcomes,
    work_ids,
)
from musicbench.interfaces import DEFAULT_THREAT_MODEL
from musicbench.leaderboard import planned_records
from musicbench.stats import holm
from musicbench.store import CellRecord

ADAPTIVE = "apgd-ce"
CONTRASTS = ("apgd-ce, non-adaptive", "apgd-ce, oblivious")
ALPHA = 0.05


@dataclass
class Row:
    family: str  # overstatement | robustness gain | clean cost
    dataset: str
    model: str
    defense: str
    pair: Pair
    p_holm: float = 1.0


def _worst_case(cells: dict[str, CellRecord]) -> dict[str, bool] | None:
    """Per clip: survives every adaptive attack of the default threat model (the headline);
    None when there is none."""
    attacks = [r for r in cells.values() if not r.spec.run.contrast
               and r.spec.threat_model == DEFAULT_THREAT_MODEL]
    if not attacks:
        return None
    per_attack = [robust_outcomes(r) for r in attacks]
    return {i: all(p[i] for p in per_attack) for i in per_attack[0]}


def _clean(cells: dict[str, CellRecord]) -> dict[str, bool]:
    return clean_outcomes(next(iter(cells.values())))


def evidence(records: list[CellRecord], baseline: str = "none") -> list[Row]:
    """Every comparison of the three families present in ``records``, Holm-adjusted
    together, clustered by work where the clips carry work ids."""
    rows_by: dict[tuple[str, str, str], dict[str, CellRecord]] = {}
    for r in records:
        if r.status == "ok":
            rows_by.setdefault(r.names[:3], {})[r.names[3]] = r
    out: list[Row] = []
    for (dataset, model, defense), cells in rows_by.items():
        works = work_ids(*(r for r in records if r.names[0] == dataset))
        for contrast in CONTRASTS:
            if ADAPTIVE in cells and contrast in cells:
                pair = pair_on_shared_clips(contrast, ADAPTIVE,
                                            robust_outcomes(cells[contrast]),
                                            robust_outcomes(cells[ADAPTIVE]), works)
                if pair is not None:
                    out.append(Row("overstatement", dataset, model, defense, pair))
        base = rows_by.get((dataset, model, baseline))
        if defense == baseline or base is None:
            continue
        worst, base_worst = _worst_case(cells), _worst_case(base)
        if worst is not None and base_worst is not None:
            pair = pair_on_shared_clips(defense, baseline, worst, base_worst, works)
            if pair is not None:
                out.append(Row("robustness gain", dataset, model, defense, pair))
        pair = pair_on_shared_clips(defense, baseline, _clean(cells), _clean(base), works)
        if pair is not None:
            out.append(Row("clean cost", dataset, model, defense, pair))
    for row, p in zip(out, holm([r.pair.p for r in out]), strict=True):
        row.p_holm = p
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render(rows: list[Row]) -> str:
    lines = [f"{len(rows)} paired comparisons, Holm-adjusted together (alpha {ALPHA}); "
             f"differences in points. {methods_sentence([r.pair for r in rows])}", "",
             "| family | dataset | model | defense | n | a | b | a − b [95% CI] | "
             "p | Holm p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.pair
        what = {"overstatement": (p.a.removeprefix("apgd-ce, "), "adaptive"),
                "robustness gain": ("defended", "undefended"),
                "clean cost": ("defended", "undefended")}[r.family]
        lines.append(
            f"| {r.family} | {r.dataset} | {r.model} | {r.defense} | {clips_cell(p)} | "
            f"{what[0]} {_pct(p.rate_a)} | {what[1]} {_pct(p.rate_b)} | "
            f"{difference_cells(p, r.p_holm, ALPHA)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a run folder or its results.sqlite")
    parser.add_argument("--baseline", default="none", help="the undefended row's defense label")
    args = parser.parse_args()
    try:
        records = planned_records(args.out)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    rows = evidence(records, args.baseline)
    print(render(rows))


if __name__ == "__main__":
    main()
