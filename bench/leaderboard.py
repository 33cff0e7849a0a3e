"""Leaderboards are data rendered from the store: markdown, CSV or JSON (docs/architecture.md, 'Data flow').

JSON rows carry exactly the field names of the contract; markdown adds a header that lets a
reader rerun the result, a model x defense table with the worst case **per threat model**
(never pooled across threat models), the robust accuracy of each attack, and a table of every
cell with exact intervals, the clip counts each figure stands on, and sanity flags.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from musicbench.files import atomic_write_text
from musicbench.interfaces.attack import ThreatModel
from musicbench.metrics import clopper_pearson, proportion_interval
from musicbench.pairing import Pair, pair_on_shared_clips, success_outcomes, work_ids
from musicbench.stats import holm
from musicbench.store import CellRecord, Store

JSON_FIELDS = (
    "dataset", "model", "defense", "attack", "status", "threat", "threat_model", "n",
    "n_attacked", "n_success", "clean_accuracy", "clean_accuracy_ci", "asr", "asr_ci",
    "robust_accuracy", "robust_accuracy_ci", "lsd", "snr_db", "metrics", "fad", "fad_encoder",
    "fad_clips", "mean_queries", "seconds_per_clip", "adaptive", "eot_samples", "eval_draws",
    "clean_accuracy_undefended", "input_gradient_median", "flags", "error", "map_clean",
    "map_adv", "mr1_clean", "mr1_adv", "revision", "key", "role", "after",
    "median_l2", "median_snr_db", "surrogate_fidelity",
)
"""Field names scripts rely on; change only with a version bump (additions are compatible)."""

LARGE_RADIUS_ASR = 0.99
"""The large-radius gate (:mod:`musicbench.protocol`): below this ASR on its attacked clips
at 10x the radius, the attack is too weak for the row's figure to be evidence of robustness
(an unbounded attack must reach 100 %; at 10x a budget that keeps music intact, every
undefended model here is fooled on every clip)."""

WEAK = "⚠"
"""Severity mark of a flag that says the attack was too weak for the figure to stand."""

MASKED = "🔴"
"""Severity mark of a flag that says the figure overstates robustness (gradient masking, a
non-adaptive or defense-oblivious attacker)."""

MASKING_SIGNS = ("vanishing gradients", "gradient masking:", "shattered",
                 "robustness overstated", "beyond chance): gradient masking")
WEAKNESS_SIGNS = ("attack too weak", "not converged", "attack failed", "does not fall with ε",
                  "rises with ε", "accounts for little of what the defense does")


def severity(flag: str) -> str:
    """:data:`MASKED`, :data:`WEAK` or "" for a flag's text (the marks headline tables
    carry, so a reader of the worst case sees what the per-cell table says)."""
    if flag.startswith(MASKED) or any(sign in flag for sign in MASKING_SIGNS):
        return MASKED
    if flag.startswith(WEAK) or any(sign in flag for sign in WEAKNESS_SIGNS):
        return WEAK
    return ""


def marked(flag: str) -> str:
    """``flag`` led by its severity mark (once), for outputs that list flags one by one."""
    mark = severity(flag)
    return f"{mark} {flag}" if mark and not flag.startswith(mark) else flag


DEFENSE_COST_POINTS = 0.10
"""A defense losing more clean accuracy than this (vs the undefended twin) is flagged."""

EPS_TOLERANCE = 1 / 64
"""Robust accuracy may rise with ε by sampling noise; flag only above this fraction of clips."""

FLAG_ALPHA = 0.05
"""A flag's paired test says "beyond chance" at or below this Holm-adjusted p."""

LOADED = 1.5
"""A cell whose 1-minute load average went above this many times the CPU count shared the
machine with other work (the run itself accounts for about its torch threads): its s/clip is
flagged."""

HIGHER_IS_BETTER = {
    "clean_accuracy": True, "robust_accuracy": True, "worst_case": True, "asr": True,
    "fad": False, "mean_queries": False, "seconds_per_clip": False,
}
"""Directions of the harness's own columns; metrics declare theirs (stored with each cell)."""

METRIC_COLUMNS = {"lsd": "lsd", "snr": "snr_db"}
"""Per-sample metrics with a top-level JSON field of their own (the rest are in ``metrics``)."""

METRIC_TITLES = {"lsd": "LSD", "snr": "SNR dB", "linf": "L∞", "l2": "L2"}

"""The defense label a defended row is compared with for the clean-accuracy cost flag."""


def _f(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _ci(mv: Any) -> list[float | None] | None:
    """A figure's interval for JSON: None where it has none (an interval of NaNs, stored as
    such since the store keeps NaN, included)."""
    if mv is None or mv.ci is None:
        return None
    ends = [_f(mv.ci[0]), _f(mv.ci[1])]
    return None if ends == [None, None] else ends


def cell_row(record: CellRecord) -> dict[str, Any]:
    """One JSON row (contract field names) from a stored cell."""
    m, info, spec = record.metrics, record.info, record.spec
    d, model, defense, attack = record.names

    def val(name: str) -> float | None:
        return _f(m[name].value) if name in m else None

    ok = record.status == "ok"
    unbounded = spec.threat_model.kind == "unbounded"
    fad_meta = info.set_metrics.get("fad", {})
    sample_metrics = [k for k in spec.run.metrics
                      if k in m and k in info.higher_is_better and k not in info.set_metrics]
    flags = list(info.flags)
    if fad_meta.get("note"):
        flags.append(f"FAD not computed: {fad_meta['note']}" if val("fad") is None
                     else f"FAD: {fad_meta['note']}")
    return {
        "dataset": d, "model": model, "defense": defense, "attack": attack,
        "status": record.status,
        "threat": spec.threat,
        "threat_model": spec.threat_model.to_dict(),
        "n": info.n if ok else None,
        "n_attacked": info.n_attacked if ok else None,
        "n_success": info.n_success if ok else None,
        "clean_accuracy": val("clean_accuracy"),
        "clean_accuracy_ci": _ci(m.get("clean_accuracy")),
        "asr": val("asr"), "asr_ci": _ci(m.get("asr")),
        # an unbounded attack can always succeed: what it leaves is its own failure, never
        # robustness, so it has no robust accuracy (its ASR and perturbation size instead)
        "robust_accuracy": None if unbounded else val("robust_accuracy"),
        "robust_accuracy_ci": None if unbounded else _ci(m.get("robust_accuracy")),
        "lsd": val("lsd"), "snr_db": val("snr"),
        "metrics": {k: {"value": val(k), "ci": _ci(m.get(k)), "n": info.n_success}
                    for k in sample_metrics},
        "fad": val("fad"), "fad_encoder": fad_meta.get("encoder"),
        "fad_clips": fad_meta.get("n"),
        "mean_queries": val("mean_queries"), "seconds_per_clip": val("seconds_per_clip"),
        "adaptive": info.adaptive if ok else None,
        "eot_samples": record.spec.run.eot_samples, "eval_draws": record.spec.run.eval_draws,
        "clean_accuracy_undefended": info.clean_accuracy_undefended if ok else None,
        "input_gradient_median": info.input_gradient_median if ok else None,
        "flags": flags,
        "error": record.error,
        "map_clean": val("map_clean"), "map_adv": val("map_adv"),
        "mr1_clean": val("mr1_clean"), "mr1_adv": val("mr1_adv"),
        "revision": record.environment.get("git_revision"),
        "key": record.key,
        "role": spec.run.role,
        "after": list(spec.run.after),
        "median_l2": _median_of_successes(record, "l2"),
        "median_snr_db": _median_of_successes(record, "snr"),
        # BPDA's fidelity, ‖f(x) − g(x)‖ / ‖f(x) − x‖ (defense f, surrogate g), where the cell
        # attacked through the surrogate (docs/defenses.md)
        "surrogate_fidelity": ((info.defense_behaviour or {}).get("surrogate_fidelity")
                               if spec.run.bpda else None),
    }


def _median_of_successes(record: CellRecord, metric: str) -> float | None:
    """The median of a per-clip metric over the clips the attack fooled (None when the
    metric was not computed or nothing was fooled): the size of what an unbounded attack
    needed."""
    values = sorted(s.metrics[metric] for s in record.samples
                    if s.success and metric in s.metrics and not math.isnan(s.metrics[metric]))
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


@dataclass
class WorstCase:
    """Per-sample worst case over the attacks of one threat model on one (dataset, model,
    defense): the clips that survive every one of them (AutoAttack's practice for one ε)."""

    threat_model: ThreatModel
    survivors: int
    n: int
    attacks: list[str]
    complete: bool  # False when a cell of the group failed: the value is then an upper bound
    # flags with a severity mark (:func:`severity`) of the cells this figure rests on, the
    # sanity gates of its threat model included, as "attack: flag"
    flags: list[str] = field(default_factory=list)
    # per clip (in one order): survived every attack, and its work (None where unknown); the
    # interval is clustered by work where clips share one
    alive: list[bool] = field(default_factory=list)
    works: list[str | None] = field(default_factory=list)

    @property
    def marks(self) -> str:
        """The severity marks of :attr:`flags`, worst first (what headline tables show)."""
        return flag_marks([f.partition(": ")[2] for f in self.flags])

    @property
    def value(self) -> float | None:
        return self.survivors / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float]:
        if len(self.alive) == self.n:
            return proportion_interval(np.array(self.alive, dtype=bool), self.works)
        return clopper_pearson(self.survivors, self.n)


@dataclass
class Summary:
    dataset: str
    model: str
    defense: str
    n: int | None
    clean_accuracy: float | None
    clean_accuracy_ci: list[float | None] | None
    robust_accuracy: dict[str, float | None]  # by attack label
    worst_case: list[WorstCase]  # in threat-model order


@dataclass
class Leaderboard:
    header: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: list[Summary]
    attacks: list[tuple[str, ThreatModel]]  # attack labels with their threat model
    threat_models: list[ThreatModel]
    higher_is_better: dict[str, bool]
    metrics: list[str]  # configured per-sample metrics, in order
    contrasts: list[str] = field(default_factory=list)  # attack labels of contrast cells
    # attack labels of the cells the harness planned (sanity gates, docs/protocol.md)
    gates: list[str] = field(default_factory=list)


def plan_keys(store: Store) -> tuple[list[str], list[dict[str, Any]]]:
    """The cells a leaderboard shows and the runs its header describes (the first of them
    sets the environment and settings; all of them give the commands).

    The latest run planned without ``--only`` sets the grid; runs after it (``--only`` subsets
    of the same config) replace the cells they reran, matched by label, and add any new ones.
    A store with only ``--only`` runs shows all of them.
    """
    runs = store.runs()
    if not runs:
        raise FileNotFoundError(f"{store.path} holds no run yet; start one with `musicbench run`")
    full = [i for i, r in enumerate(runs) if not r["settings"].get("only")]
    first = full[-1] if full else 0
    keys_by_label: dict[tuple[str, ...], str] = {}
    labels_of = store.labels()
    for run in runs[first:]:
        for key in run["plan"]:
            keys_by_label[labels_of.get(key, (key,))] = key
    return list(keys_by_label.values()), runs[first:]


def planned_records(out: Path) -> list[CellRecord]:
    """The cells a leaderboard of ``out`` (a run folder or a ``.sqlite`` store) shows, read
    without writing: what the benchmark scripts that check claims on a published store read.
    Raises :class:`FileNotFoundError` when there is no store."""
    return planned_run(out)[0]


def planned_run(out: Path) -> tuple[list[CellRecord], list[dict[str, Any]]]:
    """:func:`planned_records` and the runs the leaderboard's header describes (the first
    holds the config text), read without writing."""
    db = out if out.suffix == ".sqlite" else out / "results.sqlite"
    if not db.is_file():
        raise FileNotFoundError(f"no store at {db}")
    store = Store(db, readonly=True)
    try:
        keys, runs = plan_keys(store)
        return store.cells(keys), runs
    finally:
        store.close()


def build(store: Store) -> Leaderboard:
    """Collect the planned cells (finished ones) and derive tables and flags."""
    keys, runs = plan_keys(store)
    records = _grouped(store.cells(keys))
    rows = [cell_row(r) for r in records]
    _add_flags(records, rows)
    summary, threat_models, attacks = _summaries(records, rows)
    header = _header(runs, records, len(keys))
    higher = dict(HIGHER_IS_BETTER)
    metrics: list[str] = []
    for r in records:
        for metric, better in r.info.higher_is_better.items():
            higher[METRIC_COLUMNS.get(metric, metric)] = better
        for name in cell_row(r)["metrics"]:  # the per-clip ones, in config order
            if name not in metrics:
                metrics.append(name)
    contrasts = sorted({r.names[3] for r in records if r.spec.run.contrast})
    gates = sorted({r.names[3] for r in records if r.spec.run.role})
    return Leaderboard(header, rows, summary, attacks, threat_models, higher, metrics, contrasts,
                       gates)


def _grouped(records: list[CellRecord]) -> list[CellRecord]:
    """Plan order, but the cells of one (dataset, model, defense) together and, within it,
    grouped by threat model (default first), so that what is compared sits together."""
    first: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(records):
        first.setdefault(r.names[:3], i)
    order = sorted(range(len(records)), key=lambda i: (
        first[records[i].names[:3]], records[i].spec.threat_model.sort_key(), i))
    return [records[i] for i in order]


def _add_flags(records: list[CellRecord], rows: list[dict[str, Any]]) -> None:
    """Sanity flags, each comparing cells of one threat model only (docs/architecture.md, 'Evaluation protocol')."""
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.status == "ok" and rows[i]["asr"] is not None and not r.spec.run.contrast:
            groups[(*r.names[:3], r.spec.threat_model)].append(i)
    # Every black-box cell against the strongest white-box attack of its threat model, paired
    # on the clips both attacked; flagged where the black-box one is stronger, with the paired
    # evidence Holm-adjusted over all these comparisons on the board (at 16 clips two ASRs
    # differ by chance more often than not).
    pairs: list[tuple[int, int, Pair]] = []
    for idxs in groups.values():
        white = [i for i in idxs if records[i].spec.threat == "white-box"]
        if not white:
            continue
        best = max(white, key=lambda i: rows[i]["asr"])
        pairs += [(i, best, _fooled_pair(records[i], records[best])) for i in idxs
                  if records[i].spec.threat == "black-box"]
    tests = _paired_tests([paired for *_, paired in pairs])
    for (i, best, paired), (p_holm, verdict) in zip(pairs, tests, strict=True):
        if rows[i]["asr"] > rows[best]["asr"]:
            white_name = rows[best]["attack"]
            rows[i]["flags"].append(
                f"black-box beats every white-box attack of its threat model "
                f"({rows[i]['n_success']}/{rows[i]['n_attacked']} vs "
                f"{rows[best]['n_success']}/{rows[best]['n_attacked']}; here "
                f"{white_name}, {100 * rows[best]['asr']:.1f}%; on the {paired.n} clips both "
                f"attacked it fools {paired.only_a} that {white_name} does not, {white_name} "
                f"{paired.only_b} that it does not, {_test_name(paired)} p {paired.p:.2g}, Holm p "
                f"{p_holm:.2g} over the board's {len(pairs)} black-box vs white-box "
                f"comparison(s): {verdict}): gradient masking?")
    _flag_eps_monotonic(records, rows)
    _flag_gates(records, rows)
    for rec, row in zip(records, rows, strict=True):
        # The runner scored the same clips without the defense: no defense is told by name.
        base, clean = rec.info.clean_accuracy_undefended, row["clean_accuracy"]
        if base is not None and clean is not None and base - clean > DEFENSE_COST_POINTS:
            row["flags"].append(f"defense costs {100 * (base - clean):.1f} points of clean "
                                f"accuracy ({100 * base:.1f}% undefended)")


def loaded(record: CellRecord) -> float | None:
    """The highest 1-minute load average of a cell timed on a loaded machine (above
    :data:`LOADED` times its CPUs; its s/clip is inflated), else None."""
    load, cpus = record.info.load_average, record.info.cpus
    return max(load) if load and cpus and max(load) > LOADED * cpus else None


def _flag_gates(records: list[CellRecord], rows: list[dict[str, Any]]) -> None:
    """What the sanity gates of :mod:`musicbench.protocol` found, on the cells that found it:
    unbounded attacks that left clips correct, attacks too weak at 10x the radius, survivors
    a stronger run fooled, and BPDA through the identity beating exact gradients."""
    by_label = {(*r.names, r.spec.run.role): i for i, r in enumerate(records)}
    for i, rec in enumerate(records):
        row = rows[i]
        if rec.status != "ok" or rec.spec.run.contrast or not row["n_attacked"]:
            continue
        role, n, k = rec.spec.run.role, row["n_attacked"], row["n_success"]
        if rec.spec.threat_model.kind == "unbounded" and k < n:
            row["flags"].append(
                f"{WEAK} attack failed on {n - k} of {n} clips: an unbounded attack can fool "
                "every clip, so what it leaves is its own failure, not robustness")
        elif role == "large-radius" and k < LARGE_RADIUS_ASR * n:
            row["flags"].append(
                f"{WEAK} attack too weak at 10× the radius ({k}/{n} fooled, below "
                f"{100 * LARGE_RADIUS_ASR:g}%): the row's figure for its radius is not "
                "evidence of robustness")
        elif role == "convergence" and k:
            row["flags"].append(
                f"{WEAK} {k} of {n} survivors fell to a stronger run (5 restarts, 2× steps, "
                "2× EOT draws): not converged; the worst case includes them")
        elif role == "identity-bpda":
            first = by_label.get((*rec.names[:3], rec.names[3].rsplit(", ", 1)[0], ""))
            if rec.spec.run.after or first is None:  # a cascade: all it fools, no one did
                extra, versus = k, "no earlier attack"
            else:
                paired = _fooled_pair(rec, records[first])
                extra, versus = paired.only_a, f"{records[first].names[3]} with exact gradients"
            if extra:
                row["flags"].append(
                    f"{MASKED} gradient masking: BPDA through the identity beats exact "
                    f"gradients ({extra} clip(s) fooled that {versus} fooled); they join the "
                    "worst case")


def _test_name(pair: Pair) -> str:
    """What a paired p is: the exact McNemar test, or its sign-flip version over works."""
    return (f"sign-flip test over {pair.works} works" if pair.clustered
            else "exact McNemar")


_NO_SHARED_CLIP = Pair("", "", 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 1.0, 1.0)


def _fooled_pair(a: CellRecord, b: CellRecord) -> Pair:
    """``a`` against ``b`` on the clips both attacked: who fooled which (``only_a``,
    ``only_b``) and the paired p (:func:`musicbench.pairing.pair_on_shared_clips`: exact
    McNemar, or its sign-flip test over works where clips share one); p = 1 with no clip in
    common."""
    pair = pair_on_shared_clips(a.spec.labels[3], b.spec.labels[3], success_outcomes(a),
                                success_outcomes(b), work_ids(a, b))
    return pair if pair is not None else _NO_SHARED_CLIP


def eps_series_key(record: CellRecord) -> tuple[Any, ...] | None:
    """What cells that differ only in ε share (dataset, model, defense, attack, its other
    parameters, the norm, how the defense was attacked): one robustness curve; None for a
    cell that is on no such curve (failed, not norm-bounded)."""
    tm = record.spec.threat_model
    if record.status != "ok" or tm.kind != "norm" or record.spec.run.role:
        return None
    others = json.dumps({k: v for k, v in record.spec.attack.params.items() if k != "eps"},
                        sort_keys=True)
    return (*record.names[:3], record.spec.attack.name, tm.norm, others,
            record.spec.run.adaptive_label)


def _flag_eps_monotonic(records: list[CellRecord], rows: list[dict[str, Any]]) -> None:
    """Robust accuracy should not rise as ε grows: same attack, same parameters but ε, same
    norm, same (dataset, model, defense). A rise beyond sampling noise hints at a broken
    attack or gradient masking."""
    series: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        key = eps_series_key(r)
        if key is not None and rows[i]["robust_accuracy"] is not None:
            series[key].append(i)
    # (smaller ε, larger ε, paired): a clip the smaller ε fools and the larger does not is
    # one the larger ε "keeps" (attacked = right clean, in both cells)
    steps: list[tuple[int, int, Pair]] = []
    for idxs in series.values():
        idxs.sort(key=lambda i: records[i].spec.threat_model.eps)
        steps += [(a, b, _fooled_pair(records[a], records[b]))
                  for a, b in zip(idxs, idxs[1:], strict=False)]
    tests = _paired_tests([paired for *_, paired in steps])
    for (a, b, paired), (p_holm, verdict) in zip(steps, tests, strict=True):
        low, high = rows[a]["robust_accuracy"], rows[b]["robust_accuracy"]
        evidence = (f"{rows[a]['attack']}: {100 * low:.1f}% → {100 * high:.1f}%; "
                    f"{paired.only_a} clip(s) kept only at the larger ε, {paired.only_b} only "
                    f"at the smaller, Holm p {p_holm:.2g} over the board's {len(steps)} ε "
                    f"step(s): {verdict}")
        if high > low + EPS_TOLERANCE:
            rows[b]["flags"].append(f"robust accuracy rises with ε ({evidence})")
        elif high >= low > 0:  # a plateau: a larger ball that fools nothing more
            rows[b]["flags"].append(f"robust accuracy does not fall with ε ({evidence}): "
                                    "the attack has stopped gaining, or gradients are masked")


def _paired_tests(pairs: list[Pair]) -> list[tuple[float, str]]:
    """Per pair: its McNemar p Holm-adjusted over all ``pairs`` (one flag's family on one
    board), and "beyond chance" or "within chance" at :data:`FLAG_ALPHA`."""
    adjusted = holm([p.p for p in pairs])
    return [(p, "beyond chance" if p <= FLAG_ALPHA else "within chance") for p in adjusted]


def _summaries(
    records: list[CellRecord], rows: list[dict[str, Any]]
) -> tuple[list[Summary], list[ThreatModel], list[tuple[str, ThreatModel]]]:
    """Per (dataset, model, defense): clean accuracy, robust accuracy per attack, and per
    bounded or region threat model the worst case: the fraction of clips that survive every
    attack of it (the harness's gates included), with the marked flags it rests on.

    Left out of both: the large-radius gate's cells (they check the attack, at another
    radius) and unbounded attacks (they have no robust accuracy: :func:`cell_row`)."""
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.names[:3]].append(i)
    headline = [i for i, r in enumerate(records)
                if not r.spec.run.sanity and r.spec.threat_model.kind != "unbounded"]
    threat_models = sorted({records[i].spec.threat_model for i in headline},
                           key=ThreatModel.sort_key)
    attacks: dict[str, ThreatModel] = {}
    for i in headline:
        attacks.setdefault(records[i].names[3], records[i].spec.threat_model)
    attack_order = sorted(attacks.items(), key=lambda a: a[1].sort_key())
    out = []
    for (d, m, df), idxs in groups.items():
        ok = [i for i in idxs if records[i].status == "ok"]
        checks = _gate_threat_models(records, idxs)
        worst = []
        for tm in threat_models:
            # contrast cells (non-adaptive, oblivious) are not evaluations of the defense
            cells = [i for i in idxs if records[i].spec.threat_model == tm
                     and not records[i].spec.run.contrast and not records[i].spec.run.sanity]
            if not cells:
                continue
            done = [records[i] for i in cells if records[i].status == "ok"]
            survive = _survivors(done)
            works = work_ids(*done)
            flagged = [f"{rows[i]['attack']}: {f}" for i in cells + checks.get(tm, [])
                       for f in rows[i]["flags"] if severity(f)]
            worst.append(WorstCase(tm, sum(survive.values()), len(survive),
                                   [rows[i]["attack"] for i in cells
                                    if not records[i].spec.run.role],
                                   all(records[i].status == "ok" for i in cells), flagged,
                                   list(survive.values()), [works.get(c) for c in survive]))
        clean = next((rows[i] for i in ok if rows[i]["clean_accuracy"] is not None), None)
        out.append(Summary(
            dataset=d, model=m, defense=df,
            n=rows[ok[0]]["n"] if ok else None,
            clean_accuracy=clean["clean_accuracy"] if clean else None,
            clean_accuracy_ci=clean["clean_accuracy_ci"] if clean else None,
            robust_accuracy={rows[i]["attack"]: rows[i]["robust_accuracy"] for i in idxs},
            worst_case=worst,
        ))
    return out, threat_models, attack_order


def _survivors(records: list[CellRecord]) -> dict[str, bool]:
    """Per clip id: right on the clean clip and fooled by none of ``records``. A clip a
    survivor cascade did not attack (an earlier cell fooled it) is decided by that cell."""
    survive: dict[str, bool] = {}
    for record in records:
        for s in record.samples:
            if not s.clean_correct:
                survive[s.sample_id] = False
            elif s.attacked:
                survive[s.sample_id] = survive.get(s.sample_id, True) and not s.success
            else:
                survive.setdefault(s.sample_id, True)
    return survive


def _gate_threat_models(records: list[CellRecord], idxs: list[int]
                        ) -> dict[ThreatModel, list[int]]:
    """The large-radius cells of one row by the threat model they check (that of the cell
    they enlarge, whose label they extend)."""
    by_label = {records[i].names[3]: records[i].spec.threat_model for i in idxs
                if not records[i].spec.run.role}
    out: dict[ThreatModel, list[int]] = defaultdict(list)
    for i in idxs:
        if records[i].spec.run.sanity:
            tm = by_label.get(records[i].names[3].rsplit(", ", 1)[0])
            if tm is not None:
                out[tm].append(i)
    return out


def _commands(runs: list[dict[str, Any]]) -> list[str]:
    """Each distinct command of ``runs``, in order: one for a run (and its resumes), several
    for a config run as ``--only`` parts and merged."""
    out: list[str] = []
    for run in runs:
        if run["argv"]:
            command = " ".join(["musicbench", *run["argv"][1:]])
            if command not in out:
                out.append(command)
    return out


def _header(runs: list[dict[str, Any]], records: list[CellRecord], planned: int
            ) -> dict[str, Any]:
    run, commands = runs[0], _commands(runs)
    env = run["environment"]
    settings = run["settings"]
    fingerprints = {}
    counts: dict[str, set[int]] = {}
    short: dict[str, int] = {}  # dataset -> clips asked where cells got fewer
    for r in records:
        fingerprints[r.spec.dataset.label] = r.spec.dataset.fingerprint
        if r.status == "ok":
            counts.setdefault(r.spec.dataset.label, set()).add(r.info.n)
            if 0 < r.info.n < r.spec.run.samples:  # the test split holds fewer than asked
                short[r.spec.dataset.label] = max(short.get(r.spec.dataset.label, 0),
                                                  r.spec.run.samples)
    samples: dict[str, int | str] = {}
    for name, ns in counts.items():
        # models may evaluate different numbers of clips ([[models]] samples = N)
        samples[name] = (next(iter(ns)) if len(ns) == 1
                         else f"{min(ns)}–{max(ns)} (by model, see n)")
    revisions: dict[str, int] = {}
    for r in records:
        rev = str(r.environment.get("git_revision", "unknown"))
        revisions[rev] = revisions.get(rev, 0) + 1
    return {
        "date": run["finished"] or run["started"],
        "musicbench": env.get("musicbench"),
        "git_revision": env.get("git_revision"),
        "revisions": revisions,
        "torch": env.get("torch"),
        "device": settings.get("device"),
        "gpu": env.get("gpu"),
        "cudnn": {k: env[k] for k in ("cudnn_deterministic", "cudnn_benchmark",
                                      "deterministic_algorithms") if k in env},
        "amp_cells": sum(1 for r in records if r.spec.run.amp),
        "seed": settings.get("seed"),
        "config": run["config_source"],
        "quick": settings.get("quick"),
        "dataset_fingerprints": fingerprints,
        "samples": samples,
        "samples_short": short,
        "planned": planned,
        "stored": len(records),
        "command": next(iter(commands), None),  # the first; kept for readers of the JSON
        "commands": commands,
        "skipped": {name: meta.get("skipped", [])
                    for name, meta in settings.get("datasets", {}).items()},
        "plugins_failed": {name: p for name, p in (env.get("plugins") or {}).items()
                           if p.get("status") == "failed"},
        # None: a run from before the setting existed
        "sanity": settings.get("sanity"),
        "cascade": settings.get("cascade"),
        "loaded": {" / ".join(r.names): load for r in records
                   if (load := loaded(r)) is not None},
        "cpus": next((r.info.cpus for r in records if r.info.cpus), None),
        "surrogates": {r.spec.defense.label: fidelity for r in records
                       if r.spec.run.bpda and (fidelity := (r.info.defense_behaviour or {})
                                               .get("surrogate_fidelity")) is not None},
        "external": _external_sources(records),
    }


def _external_sources(records: list[CellRecord]) -> dict[str, dict[str, Any]]:
    """Every ``external`` attack of the board (adversarial audio made elsewhere): its label,
    the source it names, the folder and the digest of its files, and its threat model, so a
    reader sees which figures rest on submitted files."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        attack = r.spec.attack
        if attack.name != "external" or attack.label in out:
            continue
        params = attack.params
        out[attack.label] = {"source": params.get("source") or Path(str(params.get(
            "folder", ""))).name, "folder": params.get("folder"), "digest": attack.weights,
            "threat_model": r.spec.threat_model.label}
    return out


def dirty_revisions(board: Leaderboard) -> list[str]:
    """Revisions of cells computed from a modified tree (``...+dirty``) or an unknown one."""
    return [rev for rev in board.header["revisions"]
            if rev.endswith("+dirty") or rev == "unknown"]


# -- rendering -----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pct_ci(x: float | None, ci: Any) -> str:
    if x is None:
        return "—"
    if not ci or ci[0] is None or ci[1] is None:
        return _pct(x)
    return f"{100 * x:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞"
    return f"{x:.{digits}f}"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    """A markdown table; every header and cell goes through :func:`escape_cell`, so a label
    (any user's string) can neither add a column, split a row nor inject HTML."""
    return (["| " + " | ".join(escape_cell(h) for h in head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(escape_cell(c) for c in row) + " |" for row in body])


_CELL_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;"})


def escape_cell(text: str) -> str:
    """``text`` as one markdown table cell: ``&``, ``<``, ``>`` and ``|`` as HTML entities
    (``&`` too, so the escaping is injective: a label spelt ``&lt;`` stays itself), every
    line break (``\\n``, ``\\r``, and whatever else :meth:`str.splitlines` splits at) as one
    space. An entity rather than ``\\|`` for the pipe: a cell ending in a backslash would turn
    ``\\|`` back into a column separator."""
    return " ".join(str(text).translate(_CELL_ENTITIES).splitlines())


def _header_lines(h: dict[str, Any]) -> list[str]:
    lines = ["# musicbench leaderboard", "", f"- date: {h['date']}"]
    revs = h.get("revisions") or {}
    if len(revs) <= 1:
        rev = next(iter(revs), h["git_revision"])
        lines.append(f"- musicbench {h['musicbench']} (git {rev}), torch {h['torch']}")
    else:
        lines.append(f"- musicbench {h['musicbench']}, torch {h['torch']}; cells computed at "
                     + ", ".join(f"git {r} ({n} cells)" for r, n in revs.items()))
    device = h["device"] + (f" ({h['gpu']})" if h.get("gpu") else "")
    if str(h["device"]).startswith("cuda"):
        device += " — GPU run: results may differ from CPU in the last digits"
    lines.append(f"- device: {device}")
    if h.get("cudnn"):
        lines.append("- GPU determinism: " + ", ".join(f"{k} {v}" for k, v in h["cudnn"].items()))
    if h.get("amp_cells"):
        lines.append(f"- forward passes under bfloat16 autocast (`amp = \"bf16\"`) in "
                     f"{h['amp_cells']} cell(s): their figures differ slightly from float32 ones")
    lines.append(f"- seed: {h['seed']}; config: `{h['config']}`" +
                 ("; quick run" if h.get("quick") else ""))
    commands = h.get("commands") or []
    if len(commands) == 1:
        lines.append(f"- command: `{commands[0]}`")
    elif commands:
        lines.append(f"- commands ({len(commands)} runs: `--only` parts, merged or rerun):")
        lines += [f"  - `{c}`" for c in commands]
    for name, p in (h.get("plugins_failed") or {}).items():
        lines.append(f"- **plugin `{name}` ({p.get('provider')}) failed to load**: "
                     f"{' '.join(str(p.get('error', '')).split())}")
    if h.get("cascade"):
        lines.append("- survivor cascade (`[run] cascade = true`): within a row and threat model "
                     "each attack ran only on the clips every earlier one left correct, so its "
                     "`n att` is the survivors it received and `n ok` the clips it added")
    if h.get("sanity") is False:
        lines.append("- **sanity gates off** (`[run] sanity = false`): no attack was checked at "
                     "10× its radius, through the identity with BPDA or on its survivors; "
                     "a demonstration, not an evaluation")
    if h.get("loaded"):
        busy = h["loaded"]
        which = ("every cell" if len(busy) == h["stored"] else
                 f"{len(busy)} of {h['stored']} cells (" + "; ".join(list(busy)[:5])
                 + ("; ..." if len(busy) > 5 else "") + ")")
        lines.append(f"- timed on a loaded machine (1-minute load average up to "
                     f"{max(busy.values()):.1f} on {h.get('cpus')} CPUs): {which}; their "
                     "s/clip is inflated")
    if h.get("surrogates"):
        lines.append("- BPDA surrogates' fidelity, ‖f(x) − g(x)‖ / ‖f(x) − x‖ (0: the "
                     "defense itself, 1: no better than the identity; docs/defenses.md): "
                     + ", ".join(f"`{name}` {value:.2f}"
                                 for name, value in h["surrogates"].items()))
    if h.get("external"):
        lines.append("- External adversarial audio (`external` attack: files made elsewhere, "
                     "checked against their bound and judged here):")
        lines += [f"  - `{escape_cell(label)}`: {escape_cell(str(e['source']))} "
                  f"({escape_cell(str(e['threat_model']))}; files `{e['digest']}`)"
                  for label, e in h["external"].items()]
    if h["stored"] < h["planned"]:
        lines.append(f"- **{h['planned'] - h['stored']} of {h['planned']} planned cells have "
                     "not run yet**")
    for name, fp in h["dataset_fingerprints"].items():
        asked = (h.get("samples_short") or {}).get(name)
        lines.append(f"- dataset `{escape_cell(name)}`: {h['samples'].get(name, '—')} clips"
                     + (f" (**fewer than the {asked} asked**: its test split holds no more)"
                        if asked else "") + f", fingerprint `{fp}`")
        skipped = h.get("skipped", {}).get(name) or []
        if skipped:
            lines.append(f"  - {len(skipped)} input(s) skipped:")
            lines += [f"    - `{src}`: {reason}" for src, reason in skipped[:20]]
            if len(skipped) > 20:
                lines.append(f"    - ... and {len(skipped) - 20} more (results.sqlite, "
                             "runs.settings)")
    return lines


def render_markdown(board: Leaderboard) -> str:
    def arrow(col: str) -> str:
        return "↑" if board.higher_is_better.get(col, True) else "↓"

    lines = _header_lines(board.header)
    lines += ["", "Accuracies and rates in %, with 95% intervals in brackets: exact "
              "(Clopper–Pearson) where every clip is of its own work, clustered by work "
              "(Korn–Graubard, docs/metrics.md) where clips share one; perceptual metrics are means over the successful clips (`n ok`), with a "
              "bootstrap interval in the JSON. FAD is over every attacked clip (`n att`), so it "
              "compares across the attacks of one model and defense. A **threat model** is what "
              "an attack may change (an L∞/L2 radius, an SNR budget, a region, or nothing bounds "
              "it); worst cases and flags never mix threat models. ↑/↓: the better direction "
              "for the column's subject (accuracy: the model; ASR, LSD, SNR, FAD: the attack).",
              ""]
    lines += ["## Worst-case robust accuracy by threat model", "",
              "Per model and defense, the clips that survive every attack of a threat model "
              "(per-clip AND); the attacks each stands on are listed below the table.", ""]
    tms = board.threat_models
    head = (["dataset", "model", "defense", "n", f"clean acc {arrow('clean_accuracy')}"]
            + [f"{tm.label} {arrow('worst_case')}" for tm in tms])
    listed = {tm: [a for a, t in board.attacks if t == tm
                   and a not in board.contrasts and a not in board.gates] for tm in tms}
    body = []
    notes: list[str] = []
    for s in board.summary:
        by_tm = {w.threat_model: w for w in s.worst_case}
        cells = [s.dataset, s.model, s.defense, "—" if s.n is None else str(s.n),
                 _pct_ci(s.clean_accuracy, s.clean_accuracy_ci)]
        for tm in tms:
            w = by_tm.get(tm)
            if w is None:
                cells.append("—")
                continue
            text = _pct_ci(w.value, w.ci)
            if set(w.attacks) != set(listed[tm]):  # a model entry that ran fewer attacks
                text += f" ({', '.join(w.attacks)} only)"
            if not w.complete:
                text += " (a cell failed: upper bound)"
            if w.marks:
                text += f" {w.marks}"
                notes += [escape_cell(f"- {w.marks} {s.model} / {s.defense}, {tm.label}: {f}")
                          for f in w.flags]
            cells.append(text)
        body.append(cells)
    lines += _table(head, body)
    lines.append("")
    if notes:
        lines += [f"{MASKED}: the figure overstates robustness (gradient masking, an attacker "
                  f"that does not adapt); {WEAK}: the attack was too weak for the figure to be "
                  "evidence of robustness. Flags on the worst cases:", ""] + notes + [""]
    for tm in tms:
        names = listed[tm]
        shown = [a for a, t in board.attacks if t == tm and a in board.contrasts]
        gates = [a for a, t in board.attacks if t == tm and a in board.gates]
        # labels are the config's text: escaped like table cells outside the tables too
        names, shown, gates = ([escape_cell(a) for a in group] for group in (names, shown, gates))
        lines.append(f"- {tm.label}: {', '.join(names) or '—'}" + (
            f"; the harness's gates on defended rows: {'; '.join(gates)}" if gates else "") + (
            f" (contrasts, not in the worst case: {', '.join(shown)})" if shown else ""))
    lines += ["", "## Robust accuracy by attack", ""]
    head = ["dataset", "model", "defense"] + [f"{a} ({tm.label}) ↑" for a, tm in board.attacks]
    marks = {(r["dataset"], r["model"], r["defense"], r["attack"]): flag_marks(r["flags"])
             for r in board.rows}
    body = [[s.dataset, s.model, s.defense]
            + [(_pct(s.robust_accuracy.get(a)) + " " + marks.get((s.dataset, s.model,
                                                                   s.defense, a), "")).strip()
               for a, _ in board.attacks]
            for s in board.summary]
    lines += _table(head, body)
    unbounded = [r for r in board.rows if r["threat_model"]["kind"] == "unbounded"
                 and r["status"] == "ok"]
    if unbounded:
        lines += ["", "## Unbounded attacks", "",
                  "An unbounded attack can fool every clip, so it has no robust accuracy: what "
                  "it leaves correct is its own failure. Its figures are its ASR and the size of "
                  "what it needed (medians over the fooled clips).", ""]
        lines += _table(["dataset", "model", "defense", "attack", "n att", "n ok", "ASR ↑",
                         "failed on", "median L2 ↓", "median SNR dB ↑"],
                        [[r["dataset"], r["model"], r["defense"], r["attack"],
                          str(r["n_attacked"]), str(r["n_success"]),
                          _pct_ci(r["asr"], r["asr_ci"]),
                          (f"{r['n_attacked'] - r['n_success']} {WEAK}"
                           if r["n_success"] < r["n_attacked"] else "0"),
                          _num(r["median_l2"], 4), _num(r["median_snr_db"], 1)]
                         for r in unbounded])
    lines += ["", "## Every cell", ""]
    retrieval = any(r["map_clean"] is not None for r in board.rows)
    encoders = {r["fad_encoder"] for r in board.rows if r["fad_encoder"]}
    one_encoder = encoders.pop() if len(encoders) == 1 else None
    head = ["dataset", "model", "defense", "attack", "threat model", "n", "n att", "n ok",
            f"ASR {arrow('asr')}", f"robust acc {arrow('robust_accuracy')}"]
    if retrieval:
        head += ["mAP clean → adv", "MR1 adv ↓"]
    head += [f"FAD ({one_encoder}) {arrow('fad')}" if one_encoder else f"FAD {arrow('fad')}"]
    head += [f"{METRIC_TITLES.get(m, m)} {arrow(METRIC_COLUMNS.get(m, m))}"
             for m in board.metrics]
    head += [f"queries {arrow('mean_queries')}", f"s/clip {arrow('seconds_per_clip')}",
             "adaptive", "flags"]
    body = []
    for r in board.rows:
        names = [r["dataset"], r["model"], r["defense"], r["attack"], r["threat_model"]["label"]]
        if r["status"] != "ok":
            err = (r["error"] or "").splitlines()[0][:120] if r["error"] else ""
            body.append(names + [f"**failed**: {err}"] + ["—"] * (len(head) - 6))
            continue
        cells = names + [str(r["n"]), str(r["n_attacked"]), str(r["n_success"]),
                         _pct_ci(r["asr"], r["asr_ci"]),
                         _pct_ci(r["robust_accuracy"], r["robust_accuracy_ci"])]
        if retrieval:
            cells += [f"{_num(r['map_clean'], 3)} → {_num(r['map_adv'], 3)}"
                      if r["map_clean"] is not None else "—", _num(r["mr1_adv"], 2)]
        fad = _num(r["fad"])
        if r["fad"] is not None and r["fad_encoder"] and not one_encoder:
            fad += f" ({r['fad_encoder']})"  # several encoders: name each value
        cells.append(fad)
        for m in board.metrics:
            value = r["metrics"].get(m, {}).get("value")
            cells.append(_num(value, 3 if m == "lsd" else 1 if m == "snr" else 4))
        cells += [_num(r["mean_queries"], 1), _num(r["seconds_per_clip"], 3),
                  r["adaptive"] or "none", "; ".join(r["flags"])]
        body.append(cells)
    lines += _table(head, body)
    lines.append("")
    return "\n".join(lines)


def flag_marks(flags: list[str]) -> str:
    """The severity marks of a cell's flags, worst first ("" when none is marked)."""
    found = {severity(f) for f in flags}
    return "".join(m for m in (MASKED, WEAK) if m in found)


def render_json(board: Leaderboard) -> str:
    return json.dumps([{k: r[k] for k in JSON_FIELDS} for r in board.rows], indent=2)


def render_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(JSON_FIELDS), lineterminator="\n")
    writer.writeheader()
    for r in board.rows:
        flat = {k: r[k] for k in JSON_FIELDS}
        for k in ("clean_accuracy_ci", "asr_ci", "robust_accuracy_ci", "flags", "after"):
            flat[k] = "" if flat[k] is None else ";".join(str(v) for v in flat[k])
        flat["threat_model"] = r["threat_model"]["label"]
        flat["metrics"] = json.dumps(r["metrics"], sort_keys=True)
        writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    return buf.getvalue()


RENDERERS = {"md": render_markdown, "json": render_json, "csv": render_csv}


def render(store: Store, fmt: str = "md") -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"format must be one of {', '.join(RENDERERS)}, got '{fmt}'")
    return RENDERERS[fmt](build(store))


def write_leaderboard(store: Store, path: Path, fmt: str = "md") -> Path:
    """Render and write ``path`` atomically: a kill mid-write leaves the old file whole."""
    return atomic_write_text(path, render(store, fmt))
