"""Leaderboards are data rendered from the store: markdown, CSV or JSON (DESIGN.md section 7).

JSON rows carry exactly the field names of the contract; markdown adds a header that lets a
reader rerun the result, a model x defense table with the worst case over attacks, and a table
of every cell with confidence intervals and sanity flags.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicbench.store import CellRecord, Store

JSON_FIELDS = (
    "dataset", "model", "defense", "attack", "status", "n", "clean_accuracy", "asr", "asr_ci",
    "robust_accuracy", "robust_accuracy_ci", "lsd", "snr_db", "fad", "fad_encoder",
    "mean_queries", "seconds_per_clip", "adaptive", "flags", "error", "map_clean", "map_adv",
    "mr1_adv",
)
"""Field names scripts rely on; change only with a version bump."""

DEFENSE_COST_POINTS = 0.10
"""A defense losing more clean accuracy than this (vs ``none``) is flagged."""

LOADED = 1.5
"""A cell whose 1-minute load average went above this many times the CPU count shared the
machine with other work (the run itself accounts for about its torch threads): its s/clip is
flagged."""

HIGHER_IS_BETTER = {
    "clean_accuracy": True, "robust_accuracy": True, "worst_case": True, "asr": True,
    "fad": False, "mean_queries": False, "seconds_per_clip": False,
}
"""Directions of the harness's own columns; per-sample metrics declare theirs (the plugin's
``higher_is_better``, stored with each cell)."""

METRIC_COLUMNS = {"lsd": "lsd", "snr": "snr_db"}


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
    m = record.metrics
    d, model, defense, attack = record.names

    def val(name: str) -> float | None:
        return _f(m[name].value) if name in m else None

    return {
        "dataset": d, "model": model, "defense": defense, "attack": attack,
        "status": record.status,
        "n": record.info.get("n"),
        "clean_accuracy": val("clean_accuracy"),
        "asr": val("asr"), "asr_ci": _ci(m.get("asr")),
        "robust_accuracy": val("robust_accuracy"),
        "robust_accuracy_ci": _ci(m.get("robust_accuracy")),
        "lsd": val("lsd"), "snr_db": val("snr"),
        "fad": val("fad"), "fad_encoder": record.info.get("fad_encoder"),
        "mean_queries": val("mean_queries"), "seconds_per_clip": val("seconds_per_clip"),
        "adaptive": record.info.get("adaptive", "none") if record.status == "ok" else None,
        "flags": list(record.info.get("flags", [])) + (
            [(f"FAD not computed: {record.info['fad_note']}" if val("fad") is None
              else f"FAD: {record.info['fad_note']}")]
            if record.info.get("fad_note") else []),
        "error": record.error,
        "map_clean": val("map_clean"), "map_adv": val("map_adv"), "mr1_adv": val("mr1_adv"),
    }


@dataclass
class Leaderboard:
    header: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]  # per (dataset, model, defense)
    attacks: list[str]
    higher_is_better: dict[str, bool]


def build(store: Store) -> Leaderboard:
    """Collect the latest run's planned cells (finished ones) and derive tables and flags."""
    run = store.latest_run()
    if run is None:
        raise FileNotFoundError(f"{store.path} holds no run yet; start one with `musicbench run`")
    records = store.cells(run["plan"])
    rows = [cell_row(r) for r in records]
    _add_flags(records, rows)
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    summary = _summaries(records, rows, attacks)
    header = _header(run, records)
    higher = dict(HIGHER_IS_BETTER)
    for r in records:
        for metric, better in r.info.get("higher_is_better", {}).items():
            higher[METRIC_COLUMNS.get(metric, metric)] = better
    return Leaderboard(header, rows, summary, attacks, higher)


def _add_flags(records: list[CellRecord], rows: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r["dataset"], r["model"], r["defense"])].append(i)
    for idxs in groups.values():
        ok = [i for i in idxs if rows[i]["status"] == "ok" and rows[i]["asr"] is not None]
        wb = [rows[i]["asr"] for i in ok if records[i].info.get("threat") == "white-box"]
        if wb:
            for i in ok:
                if records[i].info.get("threat") == "black-box" and rows[i]["asr"] > max(wb):
                    rows[i]["flags"].append("black-box beats white-box (gradient masking?)")
    for rec, row in zip(records, rows, strict=True):
        load, cpus = rec.info.get("load_average"), rec.info.get("cpus")
        if load and cpus and max(load) > LOADED * cpus:
            row["flags"].append(f"timed on a loaded machine (load average {max(load):.1f} on "
                                f"{cpus} CPUs): s/clip is inflated")
    none_clean = {(r["dataset"], r["model"]): r["clean_accuracy"] for r in rows
                  if r["defense"] == "none" and r["clean_accuracy"] is not None}
    for r in rows:
        base = none_clean.get((r["dataset"], r["model"]))
        if r["defense"] != "none" and base is not None and r["clean_accuracy"] is not None:
            if base - r["clean_accuracy"] > DEFENSE_COST_POINTS:
                r["flags"].append(
                    f"defense costs {100 * (base - r['clean_accuracy']):.1f} points of clean "
                    "accuracy")


def _summaries(
    records: list[CellRecord], rows: list[dict[str, Any]], attacks: list[str]
) -> list[dict[str, Any]]:
    """Per (dataset, model, defense): clean accuracy, robust accuracy per attack, and the
    worst case: the fraction of clips that survive every attack (per-sample AND)."""
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r["dataset"], r["model"], r["defense"])].append(i)
    out = []
    for (d, m, df), idxs in groups.items():
        per_attack = {rows[i]["attack"]: rows[i]["robust_accuracy"] for i in idxs}
        ok = [i for i in idxs if records[i].status == "ok"]
        survive: dict[str, bool] = {}
        for i in ok:
            for s in records[i].samples:
                alive = s.clean_correct and not s.success
                survive[s.sample_id] = survive.get(s.sample_id, True) and alive
        worst = (sum(survive.values()) / len(survive)) if survive else None
        clean = [rows[i]["clean_accuracy"] for i in ok if rows[i]["clean_accuracy"] is not None]
        out.append({
            "dataset": d, "model": m, "defense": df,
            "clean_accuracy": clean[0] if clean else None,
            "robust_accuracy": per_attack,
            "worst_case_robust_accuracy": worst,
            "complete": len(ok) == len(idxs),
        })
    return out


def _header(run: dict[str, Any], records: list[CellRecord]) -> dict[str, Any]:
    env = run["environment"]
    settings = run["settings"]
    fingerprints = {}
    samples: dict[str, int | str] = {}
    counts: dict[str, set[int]] = {}
    for r in records:
        ds = r.spec["dataset"]
        fingerprints[ds["name"]] = ds["fingerprint"]
        counts.setdefault(ds["name"], set()).add(r.info.get("n", r.spec["run"]["samples"]))
    for name, ns in counts.items():
        # models may evaluate different numbers of clips ([[models]] samples = N)
        samples[name] = (next(iter(ns)) if len(ns) == 1
                         else f"{min(ns)}–{max(ns)} (by model, see n)")
    return {
        "date": run["finished"] or run["started"],
        "musicbench": env.get("musicbench"),
        "git_revision": env.get("git_revision"),
        "torch": env.get("torch"),
        "device": settings.get("device"),
        "gpu": env.get("gpu"),
        "seed": settings.get("seed"),
        "config": run["config_source"],
        "quick": settings.get("quick"),
        "dataset_fingerprints": fingerprints,
        "samples": samples,
        "command": " ".join(["musicbench", *run["argv"][1:]]) if run["argv"] else None,
        "skipped": {name: meta.get("skipped", [])
                    for name, meta in settings.get("datasets", {}).items()},
    }


# -- rendering -----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pct_ci(x: float | None, ci: list[float | None] | None) -> str:
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


def render_markdown(board: Leaderboard) -> str:
    def _arrow(col: str) -> str:
        return "↑" if board.higher_is_better.get(col, True) else "↓"

    h = board.header
    lines = ["# musicbench leaderboard", ""]
    lines.append(f"- date: {h['date']}")
    lines.append(f"- musicbench {h['musicbench']} (git {h['git_revision']}), torch {h['torch']}")
    device = h["device"] + (f" ({h['gpu']})" if h.get("gpu") else "")
    if str(h["device"]).startswith("cuda"):
        device += " — GPU run: results may differ from CPU in the last digits"
    lines.append(f"- device: {device}")
    lines.append(f"- seed: {h['seed']}; config: `{h['config']}`" +
                 ("; quick run" if h.get("quick") else ""))
    if h.get("command"):
        lines.append(f"- command: `{h['command']}`")
    for name, fp in h["dataset_fingerprints"].items():
        lines.append(f"- dataset `{name}`: {h['samples'].get(name)} clips, fingerprint `{fp}`")
        skipped = h.get("skipped", {}).get(name) or []
        if skipped:
            lines.append(f"  - {len(skipped)} input(s) skipped:")
            lines += [f"    - `{src}`: {reason}" for src, reason in skipped[:20]]
            if len(skipped) > 20:
                lines.append(f"    - ... and {len(skipped) - 20} more (results.sqlite, "
                             "runs.settings)")
    lines += ["", "Accuracies in %, 95% bootstrap CI in brackets. ↑/↓: the better direction for "
              "the column's subject (accuracy: the model; ASR, LSD, SNR, FAD: the attack). "
              "Retrieval: a query is right when its nearest reference is of its work (top-1); "
              "mAP over the reference set, MR1 = mean rank of the first correct reference.", ""]
    lines += ["## Robustness by model and defense", ""]
    head = (["dataset", "model", "defense", f"clean acc {_arrow('clean_accuracy')}"]
            + [f"robust acc: {a} ↑" for a in board.attacks]
            + [f"worst-case robust acc {_arrow('worst_case')}"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for s in board.summary:
        worst = _pct(s["worst_case_robust_accuracy"])
        if not s["complete"]:
            worst += " (incomplete: a cell failed)"
        cells = ([s["dataset"], s["model"], s["defense"], _pct(s["clean_accuracy"])]
                 + [_pct(s["robust_accuracy"].get(a)) for a in board.attacks] + [worst])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Every cell", ""]
    retrieval = any(r["map_clean"] is not None for r in board.rows)
    head = ["dataset", "model", "defense", "attack", "n", f"ASR {_arrow('asr')}",
            f"robust acc {_arrow('robust_accuracy')}"]
    if retrieval:
        head += ["mAP clean → adv", "MR1 adv ↓"]
    encoders = {r["fad_encoder"] for r in board.rows if r["fad_encoder"]}
    fad_head = f"FAD ({encoders.pop()}) {_arrow('fad')}" if len(encoders) == 1 else \
        f"FAD {_arrow('fad')}"
    head += [fad_head, f"LSD {_arrow('lsd')}", f"SNR dB {_arrow('snr_db')}",
             f"queries {_arrow('mean_queries')}", f"s/clip {_arrow('seconds_per_clip')}",
             "adaptive", "flags"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in board.rows:
        if r["status"] != "ok":
            err = (r["error"] or "").replace("|", "\\|").splitlines()[0][:120]
            cells = [r["dataset"], r["model"], r["defense"], r["attack"], "—",
                     f"**failed**: {err}"] + ["—"] * (len(head) - 6)
        else:
            fad = _num(r["fad"])
            if r["fad"] is not None and r["fad_encoder"] and "(" not in fad_head:
                fad += f" ({r['fad_encoder']})"  # several encoders: name each value
            cells = [r["dataset"], r["model"], r["defense"], r["attack"], str(r["n"]),
                     _pct_ci(r["asr"], r["asr_ci"]),
                     _pct_ci(r["robust_accuracy"], r["robust_accuracy_ci"])]
            if retrieval:
                cells += [f"{_num(r['map_clean'], 3)} → {_num(r['map_adv'], 3)}"
                          if r["map_clean"] is not None else "—", _num(r["mr1_adv"], 2)]
            cells += [fad, _num(r["lsd"], 3), _num(r["snr_db"], 1), _num(r["mean_queries"], 1),
                     _num(r["seconds_per_clip"], 3), r["adaptive"] or "none",
                     "; ".join(r["flags"]) or ""]
        lines.append("| " + " | ".join(cells) + " |")
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
        for k in ("asr_ci", "robust_accuracy_ci", "flags"):
            flat[k] = "" if flat[k] is None else ";".join(str(v) for v in flat[k])
        writer.writerow({k: "" if v is None else v for k, v in flat.items()})
    return buf.getvalue()


RENDERERS = {"md": render_markdown, "json": render_json, "csv": render_csv}


def render(store: Store, fmt: str = "md") -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"format must be one of {', '.join(RENDERERS)}, got '{fmt}'")
    return RENDERERS[fmt](build(store))


def write_leaderboard(store: Store, path: Path, fmt: str = "md") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(store, fmt), encoding="utf-8")
    return path
