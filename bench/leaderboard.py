"""Leaderboards are data rendered from the store: markdown, CSV or JSON (DESIGN.md section 7).

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

from musicbench.compare import Pair, pair_on_shared_clips, success_outcomes
from musicbench.files import atomic_write_text
from musicbench.interfaces.attack import ThreatModel
from musicbench.metrics import clopper_pearson
from musicbench.stats import holm
from musicbench.store import CellRecord, Store

JSON_FIELDS = (
    "dataset", "model", "defense", "attack", "status", "threat", "threat_model", "n",
    "n_attacked", "n_success", "clean_accuracy", "clean_accuracy_ci", "asr", "asr_ci",
    "robust_accuracy", "robust_accuracy_ci", "lsd", "snr_db", "metrics", "fad", "fad_encoder",
    "fad_clips", "mean_queries", "seconds_per_clip", "adaptive", "eot_samples", "eval_draws",
    "clean_accuracy_undefended", "input_gradient_median", "flags", "error", "map_clean",
    "map_adv", "mr1_clean", "mr1_adv", "revision", "key",
)
"""Field names scripts rely on; change only with a version bump (additions are compatible)."""

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
    if mv is None or mv.ci is None:
        return None
    return [_f(mv.ci[0]), _f(mv.ci[1])]


def cell_row(record: CellRecord) -> dict[str, Any]:
    """One JSON row (contract field names) from a stored cell."""
    m, info, spec = record.metrics, record.info, record.spec
    d, model, defense, attack = record.names

    def val(name: str) -> float | None:
        return _f(m[name].value) if name in m else None

    ok = record.status == "ok"
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
        "robust_accuracy": val("robust_accuracy"),
        "robust_accuracy_ci": _ci(m.get("robust_accuracy")),
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
    }


@dataclass
class WorstCase:
    """Per-sample worst case over the attacks of one threat model on one (dataset, model,
    defense): the clips that survive every one of them (AutoAttack's practice for one ε)."""

    threat_model: ThreatModel
    survivors: int
    n: int
    attacks: list[str]
    complete: bool  # False when a cell of the group failed: the value is then an upper bound

    @property
    def value(self) -> float | None:
        return self.survivors / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float]:
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
    return Leaderboard(header, rows, summary, attacks, threat_models, higher, metrics, contrasts)


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
    """Sanity flags, each comparing cells of one threat model only (DESIGN.md section 6)."""
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
                f"{paired.only_b} that it does not, exact McNemar p {paired.p:.2g}, Holm p "
                f"{p_holm:.2g} over the board's {len(pairs)} black-box vs white-box "
                f"comparison(s): {verdict}): gradient masking?")
    _flag_eps_monotonic(records, rows)
    for rec, row in zip(records, rows, strict=True):
        load, cpus = rec.info.load_average, rec.info.cpus
        if load and cpus and max(load) > LOADED * cpus:
            row["flags"].append(f"timed on a loaded machine (load average {max(load):.1f} on "
                                f"{cpus} CPUs): s/clip is inflated")
    for rec, row in zip(records, rows, strict=True):
        # The runner scored the same clips without the defense: no defense is told by name.
        base, clean = rec.info.clean_accuracy_undefended, row["clean_accuracy"]
        if base is not None and clean is not None and base - clean > DEFENSE_COST_POINTS:
            row["flags"].append(f"defense costs {100 * (base - clean):.1f} points of clean "
                                f"accuracy ({100 * base:.1f}% undefended)")


_NO_SHARED_CLIP = Pair("", "", 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 1.0, 1.0)


def _fooled_pair(a: CellRecord, b: CellRecord) -> Pair:
    """``a`` against ``b`` on the clips both attacked: who fooled which (``only_a``,
    ``only_b``) and the exact McNemar p (:func:`musicbench.compare.pair_on_shared_clips`);
    p = 1 with no clip in common."""
    pair = pair_on_shared_clips(a.spec.labels[3], b.spec.labels[3], success_outcomes(a),
                                success_outcomes(b))
    return pair if pair is not None else _NO_SHARED_CLIP


def eps_series_key(record: CellRecord) -> tuple[Any, ...] | None:
    """What cells that differ only in ε share (dataset, model, defense, attack, its other
    parameters, the norm, how the defense was attacked): one robustness curve; None for a
    cell that is on no such curve (failed, not norm-bounded)."""
    tm = record.spec.threat_model
    if record.status != "ok" or tm.kind != "norm":
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
        if rows[b]["robust_accuracy"] > rows[a]["robust_accuracy"] + EPS_TOLERANCE:
            rows[b]["flags"].append(
                f"robust accuracy rises with ε ({rows[a]['attack']}: "
                f"{100 * rows[a]['robust_accuracy']:.1f}% → "
                f"{100 * rows[b]['robust_accuracy']:.1f}%; {paired.only_a} clip(s) kept only "
                f"at the larger ε, {paired.only_b} only at the smaller, Holm p {p_holm:.2g} "
                f"over the board's {len(steps)} ε step(s): {verdict})")


def _paired_tests(pairs: list[Pair]) -> list[tuple[float, str]]:
    """Per pair: its McNemar p Holm-adjusted over all ``pairs`` (one flag's family on one
    board), and "beyond chance" or "within chance" at :data:`FLAG_ALPHA`."""
    adjusted = holm([p.p for p in pairs])
    return [(p, "beyond chance" if p <= FLAG_ALPHA else "within chance") for p in adjusted]


def _summaries(
    records: list[CellRecord], rows: list[dict[str, Any]]
) -> tuple[list[Summary], list[ThreatModel], list[tuple[str, ThreatModel]]]:
    """Per (dataset, model, defense): clean accuracy, robust accuracy per attack, and per
    threat model the worst case: the fraction of clips that survive every attack of it."""
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.names[:3]].append(i)
    threat_models = sorted({r.spec.threat_model for r in records}, key=ThreatModel.sort_key)
    attacks: dict[str, ThreatModel] = {}
    for r in records:
        attacks.setdefault(r.names[3], r.spec.threat_model)
    attack_order = sorted(attacks.items(), key=lambda a: a[1].sort_key())
    out = []
    for (d, m, df), idxs in groups.items():
        ok = [i for i in idxs if records[i].status == "ok"]
        worst = []
        for tm in threat_models:
            # contrast cells (non-adaptive, oblivious) are not evaluations of the defense
            cells = [i for i in idxs if records[i].spec.threat_model == tm
                     and not records[i].spec.run.contrast]
            if not cells:
                continue
            survive: dict[str, bool] = {}
            for i in cells:
                if records[i].status != "ok":
                    continue
                for s in records[i].samples:
                    alive = s.clean_correct and not s.success
                    survive[s.sample_id] = survive.get(s.sample_id, True) and alive
            worst.append(WorstCase(tm, sum(survive.values()), len(survive),
                                   [rows[i]["attack"] for i in cells],
                                   all(records[i].status == "ok" for i in cells)))
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
    }


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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return lines


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
    if h["stored"] < h["planned"]:
        lines.append(f"- **{h['planned'] - h['stored']} of {h['planned']} planned cells have "
                     "not run yet**")
    for name, fp in h["dataset_fingerprints"].items():
        asked = (h.get("samples_short") or {}).get(name)
        lines.append(f"- dataset `{name}`: {h['samples'].get(name, '—')} clips"
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
    lines += ["", "Accuracies and rates in %, with exact (Clopper–Pearson) 95% intervals in "
              "brackets; perceptual metrics are means over the successful clips (`n ok`), with a "
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
    listed = {tm: [a for a, t in board.attacks if t == tm and a not in board.contrasts]
              for tm in tms}
    body = []
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
            cells.append(text)
        body.append(cells)
    lines += _table(head, body)
    lines.append("")
    for tm in tms:
        names = [a for a, t in board.attacks if t == tm and a not in board.contrasts]
        shown = [a for a, t in board.attacks if t == tm and a in board.contrasts]
        lines.append(f"- {tm.label}: {', '.join(names) or '—'}" + (
            f" (contrasts, not in the worst case: {', '.join(shown)})" if shown else ""))
    lines += ["", "## Robust accuracy by attack", ""]
    head = ["dataset", "model", "defense"] + [f"{a} ({tm.label}) ↑" for a, tm in board.attacks]
    body = [[s.dataset, s.model, s.defense] + [_pct(s.robust_accuracy.get(a))
                                               for a, _ in board.attacks]
            for s in board.summary]
    lines += _table(head, body)
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


def render_json(board: Leaderboard) -> str:
    return json.dumps([{k: r[k] for k in JSON_FIELDS} for r in board.rows], indent=2)


def render_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(JSON_FIELDS), lineterminator="\n")
    writer.writeheader()
    for r in board.rows:
        flat = {k: r[k] for k in JSON_FIELDS}
        for k in ("clean_accuracy_ci", "asr_ci", "robust_accuracy_ci", "flags"):
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
