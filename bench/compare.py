"""Paired comparisons of cells of a stored run on the same clips (docs/metrics.md).

Cells of one run that share dataset and model were drawn on the same clips (the draw depends on
the run seed and the model's sample count only), so "A beats B" is a paired question, asked per
clip. One condition is compared with each of the others; what varies is either the attack (one
model and defense) or the defense (one model and attack):

- **attacks**: the quantity is the ASR on the clips *attacked by both* cells (clean-correct
  under the cell's model and defense; for one model and defense these are the same clips, up
  to a randomized defense's clean draws). A clip counts for A when A fooled it.
- **defenses**: the quantity is **robust correctness** over *all* clips of both cells (the
  clip is clean-correct and the attack did not fool it), i.e. the paired robust accuracy.
  Not ASR: ASR is conditional on clean-correct clips, and a defended model and its undefended
  twin are clean-correct on different clips, so an ASR difference compares different clips,
  and a defense that breaks clean accuracy could look robust by shrinking its denominator.
  Robust accuracy counts both ways a defense can lose a clip, on every clip of the draw.

Per pair (first condition A against another, B): n, the rate of each, the difference A - B
with Newcombe's (1998) method-10 interval (:func:`musicbench.stats.paired_difference_interval`,
which keeps its width when every clip agrees, where a bootstrap of the paired differences
collapses to [0, 0]), the discordant clips (A only, B only), the exact two-sided McNemar p, and
the Holm-Bonferroni adjusted p over the pairs of this one comparison (their number is stated).

Clips of one work are not independent. Where the clips carry work ids (``SampleRecord.work_id``)
and some work holds several of the compared clips, the pair is **clustered by work**: the
interval is Newcombe's at effective counts (every cell of the 2x2 table divided by the
Korn-Graubard variance inflation of the paired difference, :func:`musicbench.metrics.
variance_inflation`: the design effect times (t_{works-1} / z)^2), never narrower than the
unclustered one, and the p is the exact sign-flip test over works
(:func:`musicbench.stats.sign_flip_p`), which is the exact McNemar p when every clip is its own
work. Clips without work ids (stores written before they were kept, datasets without works)
are compared as independent, and the output says so. docs/metrics.md gives the coverage.

Reads the store only: the latest run's planned cells, as the leaderboard does.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from musicbench.errors import ConfigError, did_you_mean
from musicbench.pairing import (
    CONFIDENCE,
    Pair,
    clean_outcomes,  # noqa: F401  (re-exported: benchmarks/ import it from here)
    outcomes,
    pair_on_shared_clips,
    robust_outcomes,  # noqa: F401  (re-exported: benchmarks/ import it from here)
    work_ids,
)
from musicbench.stats import holm

INTERVAL = "Newcombe (1998) method 10"
TEST = "exact McNemar (two-sided binomial on the discordant clips)"
INTERVAL_CLUSTERED = "Newcombe (1998) method 10 at Korn-Graubard effective counts"
TEST_CLUSTERED = "exact sign-flip test over works (a clustered McNemar)"
CORRECTION = "Holm-Bonferroni"
QUANTITY = {
    "attack": ("asr", "ASR on the clips attacked by both cells"),
    "defense": ("robust_accuracy",
                "robust accuracy (clean-correct and not fooled) on all clips of both cells"),
}


@dataclass(frozen=True)
class Comparison:
    """Every pair of one ``musicbench compare`` call, with what was held fixed."""

    source: str
    dataset: str
    model: str
    varying: str  # "attack" | "defense"
    fixed: str  # the defense label (attacks vary) or the attack label (defenses vary)
    pairs: list[Pair] = field(default_factory=list)
    # per compared label, the flags with a severity mark its cell carries on the board
    # (gradient masking, an attack too weak: musicbench.leaderboard.severity)
    flags: dict[str, list[str]] = field(default_factory=dict)

    @property
    def quantity(self) -> str:
        return QUANTITY[self.varying][0]

    @property
    def comparisons(self) -> int:
        return len(self.pairs)

    @property
    def clustered(self) -> bool:
        return any(p.clustered for p in self.pairs)

    def header(self) -> str:
        other = "defense" if self.varying == "attack" else "attack"
        first = self.pairs[0].a if self.pairs else "?"
        interval, test = (INTERVAL_CLUSTERED, TEST_CLUSTERED) if self.clustered else (INTERVAL,
                                                                                        TEST)
        return (f"{self.source}: {self.dataset} / {self.model} / {other} {self.fixed}; "
                f"{self.varying} {first} against each other. Paired on clips, "
                f"{clustering(self.pairs)}: {QUANTITY[self.varying][1]}; {CONFIDENCE:.0%} "
                f"{interval} interval of the difference; {test} p; {CORRECTION} adjusted over "
                f"{self.comparisons} comparison{'s' if self.comparisons != 1 else ''}.")


def clustering(pairs: Sequence[Pair]) -> str:
    """How the clips of ``pairs`` were treated, in words: "clustered by work: 42 works" (or a
    range of works over the pairs), or why they were taken as independent."""
    clustered = sorted({p.works for p in pairs if p.clustered and p.works is not None})
    if clustered:
        span = (f"{clustered[0]}" if len(clustered) == 1
                else f"{clustered[0]}-{clustered[-1]}")
        return f"clustered by work: {span} works"
    if pairs and all(p.works is None for p in pairs):
        return ("not clustered: the clips carry no work ids (a store written before they were "
                "kept, or a dataset without works), so they are taken as independent")
    return "not clustered: every clip is of a different work"


def methods_sentence(pairs: Sequence[Pair]) -> str:
    """One sentence for an analysis script's table: which interval and test its ``pairs`` got,
    and how their clips were treated."""
    if any(p.clustered for p in pairs):
        return (f"Clips {clustering(pairs)}: 95% Newcombe intervals at Korn-Graubard effective "
                "counts and p of the exact sign-flip test over works (n gives the works; a pair "
                "whose clips are all of different works keeps Newcombe and exact McNemar).")
    return f"95% Newcombe intervals and exact McNemar p; clips {clustering(pairs)}."


def compare_cells(cells: dict[str, Any], labels: Sequence[str], *, source: str, dataset: str,
                  model: str, varying: str, fixed: str) -> Comparison:
    """Compare ``cells[labels[0]]`` with each other labelled cell (finished cell records of
    one dataset and model). Raises :class:`ConfigError` when two cells were drawn on different
    clips or share no clip to compare on."""
    first = labels[0]
    ref = cells[first]
    ref_ids = {s.sample_id for s in ref.samples}
    raw: list[Pair] = []
    for other in labels[1:]:
        ids = {s.sample_id for s in cells[other].samples}
        if ids != ref_ids:
            raise ConfigError(
                f"cells '{first}' and '{other}' ({dataset} / {model}) were run on different clips "
                f"({len(ref_ids)} and {len(ids)} clips, {len(ref_ids & ids)} in common); a "
                "paired comparison needs the cells of one run's draw")
        pair = pair_on_shared_clips(first, other, outcomes(ref, varying),
                                    outcomes(cells[other], varying),
                                    work_ids(ref, cells[other]))
        if pair is None:
            raise ConfigError(
                f"cells '{first}' and '{other}' ({dataset} / {model}) share no clip to compare "
                "on (no clip was attacked by both: the model is wrong on every clip)")
        raw.append(pair)
    adjusted = holm([p.p for p in raw])
    pairs = [Pair(**{**asdict(p), "p_holm": q}) for p, q in zip(raw, adjusted, strict=True)]
    return Comparison(source, dataset, model, varying, fixed, pairs)


def _choose(kind: str, name: str, options: Iterable[str], where: str, note: str = "") -> str:
    options = sorted(set(options))
    if name not in options:
        raise ConfigError(f"no {kind} '{name}' {where} (there: {', '.join(options) or 'none'}"
                          f"{note})." + did_you_mean(name, options))
    return name


def compare(out: Path, labels: Sequence[str], *, model: str, dataset: str | None = None,
            defense: str | None = None, attack: str | None = None) -> Comparison:
    """Load the cells of ``out`` (a run folder or its results.sqlite) that its leaderboard
    shows, and compare.

    ``labels`` are attack labels (defense ``defense``, default ``none``), or, when ``attack``
    is given, defense labels under that attack. The first label is compared with each other.
    Every problem (no store, unknown label, unfinished cell, other clips) is a
    :class:`ConfigError` with one line saying what to do.
    """
    from musicbench.store import Store

    if attack is not None and defense is not None:
        raise ConfigError("name either --defense (the labels are attacks) or --attack (the "
                          "labels are defenses), not both")
    varying = "defense" if attack is not None else "attack"
    fixed = attack if attack is not None else (defense or "none")
    labels = list(labels)
    if len(labels) < 2:
        raise ConfigError(f"name at least two {varying} labels to compare, got {labels}")
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(f"{varying} labels named twice: {', '.join(repeated)}")
    db = out if out.suffix == ".sqlite" else out / "results.sqlite"
    if not db.is_file():
        raise ConfigError(f"no results at {db}; run `musicbench run --out {out}` first")
    from musicbench.leaderboard import plan_keys

    store = Store(db, readonly=True)
    try:
        try:  # the cells the leaderboard shows: the latest full run and --only reruns after it
            plan, _ = plan_keys(store)
        except FileNotFoundError:
            raise ConfigError(f"{db} holds no run yet; start one with `musicbench run`") from None
        records = store.cells(plan)
    finally:
        store.close()
    missing = len(plan) - len(records)
    note = (f"; {missing} planned cell{'s' if missing != 1 else ''} of the run "
            f"{'have' if missing != 1 else 'has'} no result yet" if missing > 0 else "")
    where = f"in the latest run of {out}"
    _choose("model", model, (r.names[1] for r in records), where, note)
    mine = [r for r in records if r.names[1] == model]
    if dataset is None:
        datasets = sorted({r.names[0] for r in mine})
        if len(datasets) > 1:
            raise ConfigError(f"model '{model}' has cells on datasets {', '.join(datasets)}; "
                              "name one with --dataset")
        dataset = datasets[0]
    else:
        _choose("dataset", dataset, (r.names[0] for r in mine), f"for model '{model}' {where}",
                note)
    mine = [r for r in mine if r.names[0] == dataset]
    fixed_pos, vary_pos = (2, 3) if varying == "attack" else (3, 2)
    other = "defense" if varying == "attack" else "attack"
    _choose(other, fixed, (r.names[fixed_pos] for r in mine),
            f"for {dataset} / {model} {where}", note)
    mine = [r for r in mine if r.names[fixed_pos] == fixed]
    cells: dict[str, Any] = {}
    for label in labels:
        _choose(varying, label, (r.names[vary_pos] for r in mine),
                f"for {dataset} / {model} / {other} {fixed} {where}", note)
        record = next(r for r in mine if r.names[vary_pos] == label)
        if record.status != "ok":
            reason = (record.error or "").strip().splitlines()
            raise ConfigError(
                f"cell {' / '.join(record.names)} did not finish (status {record.status}"
                + (f": {reason[0]}" if reason else "") + "); rerun the run to finish it")
        cells[label] = record
    comparison = compare_cells(cells, labels, source=str(out), dataset=dataset, model=model,
                               varying=varying, fixed=fixed)
    return replace(comparison, flags=_marked_flags(records, cells))


def _marked_flags(records: list[Any], cells: dict[str, Any]) -> dict[str, list[str]]:
    """The flags with a severity mark of each compared cell, as the leaderboard raises them
    over the whole board (its paired and sanity-gate flags need the other cells)."""
    from musicbench.leaderboard import _add_flags, cell_row, marked, severity

    rows = [cell_row(r) for r in records]
    _add_flags(records, rows)
    by_key = {r.key: row for r, row in zip(records, rows, strict=True)}
    return {label: [marked(f) for f in by_key[record.key]["flags"] if severity(f)]
            for label, record in cells.items()}


# -- rendering ---------------------------------------------------------------------------------

FIELDS = ("dataset", "model", "varying", "fixed", "quantity", "a", "b", "n", "rate_a", "rate_b",
          "diff", "ci_low", "ci_high", "only_a", "only_b", "p", "p_holm", "works",
          "comparisons")


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


def rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One flat dict per pair with the :data:`FIELDS` (rates as fractions, NaN as None)."""
    c = comparison
    return [{"dataset": c.dataset, "model": c.model, "varying": c.varying, "fixed": c.fixed,
             "quantity": c.quantity, **{k: _finite(v) for k, v in asdict(p).items()},
             "comparisons": c.comparisons} for p in c.pairs]


def render_json(comparison: Comparison) -> str:
    c = comparison
    doc = {"source": c.source, "dataset": c.dataset, "model": c.model, "varying": c.varying,
           "fixed": c.fixed, "quantity": c.quantity, "confidence": CONFIDENCE,
           "interval": INTERVAL_CLUSTERED if c.clustered else INTERVAL,
           "test": TEST_CLUSTERED if c.clustered else TEST, "clustering": clustering(c.pairs),
           "correction": CORRECTION, "comparisons": c.comparisons,
           "pairs": [{k: _finite(v) for k, v in asdict(p).items()} for p in c.pairs],
           "flags": c.flags}
    return json.dumps(doc, indent=2)


def render_csv(comparison: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in rows(comparison):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _diff(p: Pair) -> str:
    return f"{100 * p.diff:+.1f} [{100 * p.ci_low:+.1f}, {100 * p.ci_high:+.1f}]"


def clips_cell(p: Pair) -> str:
    """``n``, with its number of works when the pair is clustered: ``64 (42 works)``."""
    return f"{p.n} ({p.works} works)" if p.clustered else str(p.n)


def difference_cells(p: Pair, p_holm: float, alpha: float = 0.05) -> str:
    """``diff [CI] | p | Holm p`` as markdown table cells (p: exact McNemar, or the sign-flip
    test over works when the pair is clustered), the difference in bold when the Holm-adjusted
    p is below ``alpha`` (the analysis scripts' tables)."""
    mark = "**" if p_holm < alpha else ""
    return f"{mark}{_diff(p)}{mark} | {p.p:.3g} | {p_holm:.3g}"


def cells_of(p: Pair) -> list[str]:
    """The displayed cells of one pair, in :data:`COLUMNS` order (rates and differences in
    percentage points)."""
    return [p.a, p.b, clips_cell(p), _pct(p.rate_a), _pct(p.rate_b), _diff(p), str(p.only_a),
            str(p.only_b), f"{p.p:.3g}", f"{p.p_holm:.3g}"]


def columns(comparison: Comparison) -> list[str]:
    q = "ASR %" if comparison.varying == "attack" else "robust acc %"
    return ["A", "B", "n", f"{q} A", f"{q} B", f"A − B pp [{CONFIDENCE:.0%} CI]", "A only",
            "B only", "p", f"p Holm (m={comparison.comparisons})"]


def render_markdown(comparison: Comparison) -> str:
    lines = [comparison.header(), "", "| " + " | ".join(columns(comparison)) + " |",
             "|" + "---|" * len(columns(comparison))]
    from musicbench.leaderboard import flag_marks

    marks = {label: flag_marks(flags) for label, flags in comparison.flags.items()}
    for p in comparison.pairs:
        cells = cells_of(p)
        cells[:2] = [f"{label} {marks[label]}" if marks.get(label) else label
                     for label in cells[:2]]
        lines.append("| " + " | ".join(cells) + " |")
    flagged = [f"- {label}: {f}" for label, flags in comparison.flags.items() for f in flags]
    if flagged:
        lines += ["", "🔴: the cell's figure overstates robustness; ⚠: its attack was too weak "
                  "for the figure to be evidence (the leaderboard's flags):", *flagged]
    return "\n".join(lines) + "\n"


RENDERERS = {"md": render_markdown, "json": render_json, "csv": render_csv}
