"""Check MAIA's claim, part by part, on a stored run of leaderboards/configs/maia.toml.

The paper (arXiv 2509.04980) claims that MAIA reaches a **higher attack success rate at lower
FAD and LSD** than the baselines: white-box MAIA-WB against PGD and C&W, black-box MAIA-BB
against NES and ZOO at the same query budget. That is one claim with three parts, and it is
"held" on a target only when every part holds against every baseline:

- ASR: MAIA's success minus the baseline's on the clips both attacked, paired (Newcombe
  method-10 interval, exact McNemar p; ``musicbench.compare``; clustered by work where the
  clips carry work ids and some works hold several: Newcombe at Korn-Graubard effective
  counts, the exact sign-flip test over works), Holm-adjusted over **every** ASR comparison
  this script makes on the run (the number is printed). "holds" = higher with
  adjusted p < 0.05; "fails" = lower with adjusted p < 0.05; otherwise "not shown".
- FAD: both cells' FAD stands on the same attacked clips (every attack of one model and defense
  runs on the same clean-correct clips), so the values compare; there is no interval, so this
  part holds when MAIA's is lower, fails when it is higher, and is "not defined" when either is
  NaN.
- LSD: mean over each attack's successful clips, with bootstrap intervals; holds when MAIA's
  interval lies below the baseline's, fails when above, otherwise "not shown".

SNR is printed beside them (the paper does not claim it; a localised attack can have a low LSD
and a low SNR at once). Reads the store only::

    python benchmarks/maia_claims.py runs/maia            # or leaderboards/runs/maia.sqlite
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicbench.compare import compare_cells, methods_sentence
from musicbench.leaderboard import planned_records
from musicbench.stats import holm
from musicbench.store import CellRecord

CLAIMS = {"maia-wb": ("pgd", "cw"),
          "maia-bb": ("nes", "zoo", "nes, eps 0.01", "zoo, eps 0.01")}
"""MAIA attack label -> the baseline labels it is claimed to beat (NES and ZOO at both radii
of maia.toml: the paper does not publish its baselines' budgets)."""
ALPHA = 0.05


@dataclass
class Part:
    verdict: str  # holds | fails | not shown | not defined
    text: str


def _metric(record: CellRecord, name: str) -> tuple[float, tuple[float, float] | None]:
    mv = record.metrics.get(name)
    if mv is None or mv.value is None:
        return math.nan, None
    return float(mv.value), mv.ci


def fad_part(maia: CellRecord, base: CellRecord) -> Part:
    a, _ = _metric(maia, "fad")
    b, _ = _metric(base, "fad")
    if math.isnan(a) or math.isnan(b):
        return Part("not defined", f"FAD {a:.2f} vs {b:.2f}")
    return Part("holds" if a < b else "fails", f"FAD {a:.2f} vs {b:.2f}")


def lsd_part(maia: CellRecord, base: CellRecord) -> Part:
    a, ca = _metric(maia, "lsd")
    b, cb = _metric(base, "lsd")
    text = f"LSD {a:.3f} vs {b:.3f} (n ok {maia.info.n_success} vs {base.info.n_success})"
    if math.isnan(a) or math.isnan(b) or not ca or not cb:
        return Part("not defined", text)
    if ca[1] < cb[0]:
        return Part("holds", text)
    if ca[0] > cb[1]:
        return Part("fails", text)
    return Part("not shown", text)


def check(records: list[CellRecord]) -> list[dict[str, Any]]:
    """One row per (dataset, model, MAIA attack, baseline) present in ``records``."""
    by_model: dict[tuple[str, str, str], dict[str, CellRecord]] = {}
    for r in records:
        if r.status == "ok":
            by_model.setdefault(r.names[:3], {})[r.names[3]] = r
    rows = []
    for (dataset, model, defense), cells in by_model.items():
        for maia, baselines in CLAIMS.items():
            present = [b for b in baselines if b in cells]
            if maia not in cells or not present:
                continue
            comparison = compare_cells({k: cells[k] for k in (maia, *present)},
                                       [maia, *present], source="", dataset=dataset,
                                       model=model, varying="attack", fixed=defense)
            for pair in comparison.pairs:
                rows.append({"dataset": dataset, "model": model, "maia": maia,
                             "baseline": pair.b, "pair": pair, "fad": fad_part(
                                 cells[maia], cells[pair.b]),
                             "lsd": lsd_part(cells[maia], cells[pair.b]),
                             "snr": (_metric(cells[maia], "snr")[0],
                                     _metric(cells[pair.b], "snr")[0])})
    adjusted = holm([r["pair"].p for r in rows])
    for r, p in zip(rows, adjusted, strict=True):
        pair = r["pair"]
        clips = f"{pair.n} clips" + (f" of {pair.works} works" if pair.clustered else "")
        text = (f"ASR {100 * pair.rate_a:.1f} vs {100 * pair.rate_b:.1f} on {clips}, "
                f"diff {100 * pair.diff:+.1f} [{100 * pair.ci_low:+.1f}, "
                f"{100 * pair.ci_high:+.1f}], Holm p {p:.3g}")
        verdict = ("holds" if pair.diff > 0 and p < ALPHA else
                   "fails" if pair.diff < 0 and p < ALPHA else "not shown")
        r["asr"] = Part(verdict, text)
        parts = [r["asr"], r["fad"], r["lsd"]]
        r["claim"] = ("held" if all(x.verdict == "holds" for x in parts) else
                      "fails" if any(x.verdict == "fails" for x in parts) else "not shown")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a run folder or its results.sqlite")
    args = parser.parse_args()
    try:
        records = planned_records(args.out)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    rows = check(records)
    print(f"{len(rows)} ASR comparisons, Holm-adjusted together (alpha {ALPHA}). "
          + methods_sentence([r["pair"] for r in rows]))
    print("| target | MAIA | vs | ASR (paired) | FAD | LSD | SNR dB | claim |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        snr = f"{r['snr'][0]:.1f} vs {r['snr'][1]:.1f}"
        cells = [f"{r['model']} / {r['dataset']}", r["maia"], r["baseline"]]
        cells += [f"**{p.verdict}**: {p.text}" for p in (r["asr"], r["fad"], r["lsd"])]
        cells += [snr, f"**{r['claim']}**"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
