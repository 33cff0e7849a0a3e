"""Paired evidence on a stored run of leaderboards/configs/pamt.toml: PAMT's robustness claim
and what adversarial training buys.

PAMT (arXiv 2509.04985) reports **+9.15 points of average robust accuracy** from using its
perceptual model as a defense. Our reading (docs/pamt.md) compares `pamt` (frozen encoder ->
PAMT head -> task head) with `pamt-control` (the same network without the PAMT head), paired
on the same clips. Every cell of one dataset and model row draws the same clips, so any two
defenses of a row compare clip by clip.

Per model row and attack, robust accuracy is "right clean and still right after the attack"
over all the row's clips (``musicbench compare`` with defenses varying). Comparisons, each a
difference with a 95% Newcombe (method 10) interval and an exact McNemar p, all Holm-adjusted
together (the count is printed); where the clips carry work ids and some works hold several of
them, clustered by work instead (the Korn-Graubard-widened Newcombe interval and the exact
sign-flip test over works of :func:`musicbench.compare.paired_pair`; the n column then gives
the works):

1. **pamt − pamt-control** per attack (the claim, attack by attack);
2. **defense − none** per defense and attack (robustness gain) and in clean accuracy (clean
   cost);
3. **pamt − advtrain** per attack (the paper's defense against the standard one).

The claim's own figure is an average: per row, the mean over the row's attacks of
RA(pamt) − RA(pamt-control). It is computed per clip (the clip's share of attacks survived under
each defense) and given a 95% paired bootstrap interval over clips (2000 draws, seeded), which
resamples works instead where clips share works (:func:`musicbench.metrics.bootstrap_ci`). It
"reproduces" +9.15 only if its interval excludes 0 on the positive side; "is consistent with"
+9.15 if the interval contains 9.15. Both are printed, per row; there is no pooled figure over
rows, since the rows hold different clips and tasks.

Added after the results were seen (post hoc, so read it as such): where several rows hold the
same model on the same dataset with overlapping clips (pamt.toml's "style-cnn" on 64 clips and
"style-cnn, 16 clips", whose 16 clips are among the 64), the same average over **every attack
of those rows** on the clips they share — the closest we get to the paper's all-attack figure.
An attack in two rows (PGD) is taken from the first.

Labels default to the config's; ``--advtrain`` names the advtrain row per model when it is
labelled otherwise (cover-net's "advtrain, 30 epochs" is found by prefix). Reads the store
only::

    python benchmarks/pamt_claims.py runs/pamt          # or leaderboards/runs/pamt.sqlite
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
from musicbench.leaderboard import planned_records
from musicbench.metrics import BOOTSTRAP_RESAMPLES, bootstrap_ci, cluster_count
from musicbench.stats import holm
from musicbench.store import CellRecord

PAPER_GAIN_POINTS = 9.15
ALPHA = 0.05
BOOTSTRAP_DRAWS = BOOTSTRAP_RESAMPLES


@dataclass
class Row:
    family: str  # pamt claim | robustness gain | clean cost | pamt vs advtrain
    dataset: str
    model: str
    attack: str  # "" for clean cost
    pair: Pair
    p_holm: float = 1.0


@dataclass
class Average:
    dataset: str
    model: str
    attacks: tuple[str, ...]
    n: int
    diff: float  # points
    ci_low: float
    ci_high: float
    works: int | None = None  # the works the bootstrap resampled; None: it resampled clips

    @property
    def verdict(self) -> str:
        shown = ("reproduced (interval above 0)" if self.ci_low > 0 else
                 "reversed (interval below 0)" if self.ci_high < 0 else
                 "not shown (interval contains 0)")
        consistent = self.ci_low <= PAPER_GAIN_POINTS <= self.ci_high
        return f"{shown}; {'consistent' if consistent else 'inconsistent'} with +9.15"


def _rows(records: list[CellRecord]) -> dict[tuple[str, str], dict[str, dict[str, CellRecord]]]:
    """(dataset, model) -> defense -> attack -> finished cell."""
    out: dict[tuple[str, str], dict[str, dict[str, CellRecord]]] = {}
    for r in records:
        if r.status == "ok":
            dataset, model, defense, attack = r.names[:4]
            out.setdefault((dataset, model), {}).setdefault(defense, {})[attack] = r
    return out


def _advtrain_label(defenses: dict[str, dict[str, CellRecord]], wanted: str) -> str | None:
    if wanted in defenses:
        return wanted
    close = sorted(d for d in defenses if d.startswith(f"{wanted},"))
    return close[0] if close else None


def _clean(cells: dict[str, CellRecord]) -> dict[str, bool]:
    return clean_outcomes(next(iter(cells.values())))


def evidence(records: list[CellRecord], *, pamt: str = "pamt", control: str = "pamt-control",
             baseline: str = "none", advtrain: str = "advtrain"
             ) -> tuple[list[Row], list[Average]]:
    """Every paired comparison present in ``records`` (Holm-adjusted together, clustered by
    work where the clips carry work ids) and the claim's average per model row."""
    out: list[Row] = []
    averages: list[Average] = []
    for (dataset, model), defenses in _rows(records).items():
        adv = _advtrain_label(defenses, advtrain)
        works = work_ids(*(r for cells in defenses.values() for r in cells.values()))
        if pamt in defenses and control in defenses:
            shared = sorted(defenses[pamt].keys() & defenses[control].keys())
            outcomes = {attack: (robust_outcomes(defenses[pamt][attack]),
                                 robust_outcomes(defenses[control][attack]))
                        for attack in shared}
            for attack, (a, b) in outcomes.items():
                pair = pair_on_shared_clips(pamt, control, a, b, works)
                if pair is not None:
                    out.append(Row("pamt claim", dataset, model, attack, pair))
            average = _average_on_shared_clips(dataset, model, outcomes, works)
            if average is not None:
                averages.append(average)
        base = defenses.get(baseline)
        if base is not None:
            for defense, cells in defenses.items():
                if defense == baseline:
                    continue
                for attack in sorted(cells.keys() & base.keys()):
                    pair = pair_on_shared_clips(defense, baseline,
                                                robust_outcomes(cells[attack]),
                                                robust_outcomes(base[attack]), works)
                    if pair is not None:
                        out.append(Row("robustness gain", dataset, model, attack, pair))
                pair = pair_on_shared_clips(defense, baseline, _clean(cells), _clean(base),
                                            works)
                if pair is not None:
                    out.append(Row("clean cost", dataset, model, "", pair))
        if pamt in defenses and adv is not None:
            for attack in sorted(defenses[pamt].keys() & defenses[adv].keys()):
                pair = pair_on_shared_clips(pamt, adv, robust_outcomes(defenses[pamt][attack]),
                                            robust_outcomes(defenses[adv][attack]), works)
                if pair is not None:
                    out.append(Row("pamt vs advtrain", dataset, model, attack, pair))
    for row, p in zip(out, holm([r.pair.p for r in out]), strict=True):
        row.p_holm = p
    return out, averages


def model_averages(records: list[CellRecord], *, pamt: str = "pamt",
                   control: str = "pamt-control") -> list[Average]:
    """Post hoc: the claim's average over every attack of all rows of one model (by name) and
    dataset, on the clips those rows share; only where a model has more than one row."""
    groups: dict[tuple[str, str], dict[str, tuple[dict[str, bool], dict[str, bool]]]] = {}
    labels: dict[tuple[str, str], set[str]] = {}
    for (dataset, label), defenses in _rows(records).items():
        if pamt not in defenses or control not in defenses:
            continue
        name = next(iter(defenses[pamt].values())).spec.model.name
        group = groups.setdefault((dataset, name), {})
        labels.setdefault((dataset, name), set()).add(label)
        for attack in sorted(defenses[pamt].keys() & defenses[control].keys()):
            group.setdefault(attack, (robust_outcomes(defenses[pamt][attack]),
                                      robust_outcomes(defenses[control][attack])))
    averages = [_average_on_shared_clips(dataset, f"{name} (all rows, post hoc)", outcomes,
                                         work_ids(*(r for r in records if r.names[0] == dataset)))
                for (dataset, name), outcomes in groups.items()
                if len(labels[(dataset, name)]) > 1]
    return [a for a in averages if a is not None]


def _average_on_shared_clips(dataset: str, model: str,
                             outcomes: dict[str, tuple[dict[str, bool], dict[str, bool]]],
                             works: dict[str, str | None] | None = None) -> Average | None:
    """The claim's average over ``outcomes`` (attack -> per-clip robust outcomes of pamt and
    of the control) on the clips every one of them holds, its bootstrap resampling the clips'
    ``works`` (clip id -> work id) where some hold several; None when they share no clip."""
    ids = sorted(set.intersection(*(set(a) & set(b) for a, b in outcomes.values()))
                 if outcomes else set())
    if not ids:
        return None
    diffs = np.array([[float(a[i]) - float(b[i]) for i in ids] for a, b in outcomes.values()])
    clusters = None if works is None else [works.get(i) for i in ids]
    return _average(dataset, model, tuple(outcomes), diffs, clusters)


def _average(dataset: str, model: str, attacks: tuple[str, ...], diffs: np.ndarray,
             clusters: list[str | None] | None = None) -> Average:
    """``diffs``: [attacks, clips] of per-clip robust(pamt) − robust(control) in {-1, 0, 1};
    ``clusters``: the clips' work ids (None: unknown)."""
    per_clip = diffs.mean(axis=0)  # [clips]: the clip's average gain over attacks
    low, high = bootstrap_ci(per_clip, clusters=clusters)
    return Average(dataset, model, attacks, len(per_clip), 100 * float(per_clip.mean()),
                   100 * low, 100 * high, cluster_count(clusters))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render(rows: list[Row], averages: list[Average]) -> str:
    lines = ["## The claim's figure: average robust-accuracy gain of pamt over pamt-control", "",
             (f"Paper: +{PAPER_GAIN_POINTS} points. Per row: the mean over its attacks, with a "
             f"95% paired bootstrap interval ({BOOTSTRAP_DRAWS} draws) over clips, or over "
             "works where clips share works (n then gives the works)."), "",
             "| dataset | model | attacks | n clips | gain (points) [95% CI] | verdict |",
             "|---|---|---|---|---|---|"]
    for a in averages:
        n = f"{a.n} ({a.works} works)" if a.works is not None else str(a.n)
        lines.append(f"| {a.dataset} | {a.model} | {', '.join(a.attacks)} | {n} | "
                     f"{a.diff:+.1f} [{a.ci_low:+.1f}, {a.ci_high:+.1f}] | {a.verdict} |")
    lines += ["", "## Paired comparisons", "",
              (f"{len(rows)} paired comparisons, Holm-adjusted together (alpha {ALPHA}); "
              "differences in points; robust accuracy over all the row's clips. "
              + methods_sentence([r.pair for r in rows])), "",
              ("| family | dataset | model | attack | a | b | n | a % | b % | a − b [95% CI] | "
              "p | Holm p |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.pair
        lines.append(
            f"| {r.family} | {r.dataset} | {r.model} | {r.attack or 'clean'} | {p.a} | {p.b} | "
            f"{clips_cell(p)} | {_pct(p.rate_a)} | {_pct(p.rate_b)} | "
            f"{difference_cells(p, r.p_holm, ALPHA)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a run folder or its results.sqlite")
    parser.add_argument("--pamt", default="pamt")
    parser.add_argument("--control", default="pamt-control")
    parser.add_argument("--baseline", default="none", help="the undefended row's defense label")
    parser.add_argument("--advtrain", default="advtrain",
                        help="the advtrain defense label (or its prefix before a comma)")
    args = parser.parse_args()
    try:
        records = planned_records(args.out)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    rows, averages = evidence(records, pamt=args.pamt, control=args.control,
                              baseline=args.baseline, advtrain=args.advtrain)
    averages += model_averages(records, pamt=args.pamt, control=args.control)
    print(render(rows, averages))


if __name__ == "__main__":
    main()
