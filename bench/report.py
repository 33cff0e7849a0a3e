"""A static HTML report of a run: see and hear the results (docs/report.md).

``write_report(OUT, DIR)`` writes ``DIR/index.html`` and one page per (dataset, model), all
self-contained (inline CSS and JS, no network; opens from ``file://`` or any static host):

- ``index.html``: the run's header, the worst-case robust accuracy per threat model, the
  robust accuracy of each attack, and every cell (one table per threat model, so sorting never
  mixes threat models), with the flags, the contrast and non-adaptive marks of the markdown
  leaderboard (:func:`musicbench.leaderboard.build`). Column heads sort the tables.
- ``<dataset>--<model>.html``: per cell, its figures, a per-clip figure (outcomes, LSD against
  SNR of the fooled clips, fraction fooled within q queries) from
  :func:`musicbench.results.load`, and per kept clip (``<out>/audio/``) players for the clean,
  adversarial and amplified difference audio (FLAC, which current Chrome, Edge, Firefox and
  Safari play; the gain is stated), and their log-mel spectrograms on one colour scale.

Media is copied or written under ``DIR/media/<cell key>/``; the report folder can be moved or
published alone. Needs matplotlib and pandas: ``pip install "musicbench[report]"``.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from musicbench.errors import MusicbenchError
from musicbench.files import atomic_copy, atomic_write_bytes
from musicbench.interfaces.attack import ThreatModel
from musicbench.leaderboard import (
    METRIC_COLUMNS,
    METRIC_TITLES,
    Leaderboard,
    _num,
    _pct_ci,
    build,
    eps_series_key,
    flag_marks,
    plan_keys,
)
from musicbench.store import CellRecord, SampleRecord, Store, flac_bytes

if TYPE_CHECKING:
    import pandas as pd

DIFF_PEAK = 0.5
"""The amplified difference is scaled so that its peak is this fraction of full scale."""

DYNAMIC_RANGE_DB = 80.0
"""Spectrograms show this many dB below the clean clip's loudest bin (one scale per clip)."""

N_MELS = 64


class ReportDependencyError(MusicbenchError):
    """matplotlib or pandas is missing: they are the ``report`` extra."""


def _plotting() -> Any:
    """matplotlib.pyplot on the Agg backend, or an error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas  # noqa: F401 (musicbench.results, for the per-clip figures)
    except ImportError as exc:
        raise ReportDependencyError(
            f"musicbench report needs matplotlib and pandas ({exc.name} is missing): "
            "pip install \"musicbench[report]\"") from exc
    return plt


# -- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One kept clip of a cell: its record and the stored paths of its audio by kind."""

    sample: SampleRecord
    clean: Path
    adv: Path


def _load(out: Path) -> tuple[Leaderboard, dict[str, CellRecord]]:
    """The leaderboard of the run in ``out`` and its cell records by key."""
    db = out if out.suffix == ".sqlite" else out / "results.sqlite"
    if not db.is_file():
        raise FileNotFoundError(f"no results store at {db}; run `musicbench run --out {out}`")
    store = Store(db, readonly=True)
    try:
        board = build(store)
        records = {r.key: r for r in store.cells(plan_keys(store)[0])}
    finally:
        store.close()
    return board, records


def kept_clips(record: CellRecord, root: Path) -> list[Clip]:
    """The clips of ``record`` with both a clean and an adversarial file under ``root``."""
    paths: dict[str, dict[str, Path]] = {}
    for sid, kind, rel in record.audio:
        paths.setdefault(sid, {})[kind] = root / rel
    samples = {s.sample_id: s for s in record.samples}
    return [Clip(samples[sid], p["clean"], p["adv"]) for sid, p in paths.items()
            if {"clean", "adv"} <= p.keys() and sid in samples
            and p["clean"].is_file() and p["adv"].is_file()]


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def model_page(dataset: str, model: str) -> str:
    """The file name of a (dataset, model) page, distinct for distinct pairs, also on a file
    system that ignores case: ``<dataset>--<model>.html`` where both are lower-case ASCII
    letters, digits, ``-_.`` and the split is unambiguous (no ``--`` in the dataset, which
    does not end in ``-``); otherwise their ASCII slugs (40 characters at most) and ``~`` and
    12 hex digits of the SHA-256 of the exact pair (``cnn<a`` and ``cnn>a`` share a slug, not
    a page). A ``~`` never occurs in a plain name, so the two forms never meet."""
    if _PLAIN_PAGE.fullmatch(dataset) and _PLAIN_PAGE.fullmatch(model) \
            and "--" not in dataset and not dataset.endswith("-"):
        return f"{dataset}--{model}.html"
    digest = hashlib.sha256(json.dumps([dataset, model]).encode()).hexdigest()[:12]
    stems = ["".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_"
                     for ch in label[:40]) for label in (dataset, model)]
    return f"{stems[0]}--{stems[1]}~{digest}.html"


_PLAIN_PAGE = re.compile(r"[a-z0-9._-]{1,80}")


# -- audio and pictures --------------------------------------------------------------------


def save_figure(fig: Any, path: Path, **options: Any) -> None:
    """``fig.savefig`` in the format of ``path``'s suffix, written as every output is
    (:func:`musicbench.files.atomic_write_bytes`): a symbolic link planted at ``path`` is
    replaced, never followed, and a full disk is one line naming ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip("."), **options)
    atomic_write_bytes(path, buffer.getvalue())


def write_difference(clean: Path, adv: Path, path: Path) -> float:
    """Write ``adv - clean`` scaled to a peak of :data:`DIFF_PEAK`; returns the gain."""
    import soundfile

    x, rate = soundfile.read(clean, dtype="float32")
    y, _ = soundfile.read(adv, dtype="float32")
    diff = y[: len(x)] - x[: len(y)]
    peak = float(np.max(np.abs(diff))) if diff.size else 0.0
    gain = DIFF_PEAK / peak if peak > 0 else 1.0
    atomic_write_bytes(path, flac_bytes(np.clip(diff * gain, -1.0, 1.0), rate))
    return gain


def mel_filterbank(rate: int, n_fft: int, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular HTK mel filters, ``[n_mels, n_fft // 2 + 1]``."""
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges = 700.0 * (10 ** (np.linspace(0.0, mel(np.array(rate / 2)), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - freqs) / np.maximum(upper - centre, 1e-9)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(audio: np.ndarray, rate: int, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Log-mel power spectrogram in dB, ``[n_mels, frames]``."""
    audio = np.pad(audio.astype(np.float64), (n_fft // 2, n_fft // 2))
    frames = max(1, 1 + (len(audio) - n_fft) // hop)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(audio[idx] * np.hanning(n_fft), axis=1)) ** 2
    return 10.0 * np.log10(mel_filterbank(rate, n_fft) @ spec.T + 1e-12)


def plot_spectrograms(clean: Path, adv: Path, path: Path, plt: Any) -> None:
    """Clean, adversarial and difference log-mel spectrograms on one colour scale."""
    import soundfile

    x, rate = soundfile.read(clean, dtype="float32")
    y, _ = soundfile.read(adv, dtype="float32")
    n = min(len(x), len(y))
    specs = [log_mel(x[:n], rate), log_mel(y[:n], rate), log_mel(y[:n] - x[:n], rate)]
    top = float(specs[0].max())
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.4), sharey=True, constrained_layout=True)
    for ax, spec, title in zip(axes, specs, ("clean", "adversarial", "difference (not amplified)"),
                               strict=True):
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                          vmin=top - DYNAMIC_RANGE_DB, vmax=top,
                          extent=(0.0, n / rate, 0, spec.shape[0]))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("mel band", fontsize=8)
    fig.colorbar(image, ax=axes, label="dB", shrink=0.9)
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def plot_cell_clips(samples: pd.DataFrame, budget: float | None, path: Path, plt: Any) -> None:
    """Per-clip figures of one cell: outcome counts, LSD against SNR of the fooled clips,
    and the fraction of attacked clips fooled within q queries."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.4), constrained_layout=True)
    wrong = int((~samples["clean_correct"].astype(bool)).sum())
    fooled = int(samples["success"].astype(bool).sum())
    robust = int(samples["robust"].astype(bool).sum())
    axes[0].bar(["clean wrong", "fooled", "robust"], [wrong, fooled, robust],
                color=["#999999", "#d62728", "#2ca02c"])
    axes[0].set_title("clips by outcome", fontsize=9)
    ok = samples[samples["success"].astype(bool)]
    if {"lsd", "snr"} <= set(samples.columns) and len(ok):
        axes[1].scatter(ok["snr"].astype(float), ok["lsd"].astype(float), s=10)
        axes[1].set_xlabel("SNR dB", fontsize=8)
        axes[1].set_ylabel("LSD", fontsize=8)
    axes[1].set_title("fooled clips: LSD vs SNR", fontsize=9)
    attacked = samples[samples["attacked"].astype(bool)]
    if len(attacked):
        q = np.sort(attacked.loc[attacked["success"].astype(bool), "queries"].astype(float))
        limit = max(budget or 0.0, float(attacked["queries"].astype(float).max()), 1.0)
        xs = np.concatenate([[0.0], q, [limit]])
        ys = np.concatenate([[0.0], np.arange(1, len(q) + 1), [len(q)]]) / len(attacked)
        axes[2].step(xs, ys, where="post")
        axes[2].set_ylim(0, 1)
        axes[2].set_xlabel("queries", fontsize=8)
    axes[2].set_title("fooled within q queries", fontsize=9)
    for ax in axes:
        ax.tick_params(labelsize=7)
    save_figure(fig, path, dpi=80)
    plt.close(fig)


# -- HTML ----------------------------------------------------------------------------------


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.num{text-align:right;white-space:nowrap}
.badge{display:inline-block;border-radius:3px;padding:0 4px;font-size:11px;margin-left:3px}
.contrast{background:#fde9b6}.nonadaptive{background:#e3e3e3}.failed{background:#f8c9c9}
.flags{color:#a33;font-size:12px}
.clip{border-top:1px solid #ddd;padding:.5em 0}
.players{display:flex;gap:1em;flex-wrap:wrap}.players figure{margin:0}
figcaption{font-size:12px;color:#555}
img{max-width:100%}
.load-error{color:#a00;font-weight:bold}
"""

SCRIPT = """
function mbSort(th){
  var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
  var asc=th.getAttribute('aria-sort')!=='ascending';
  table.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort')});
  th.setAttribute('aria-sort',asc?'ascending':'descending');
  function key(r){var c=r.cells[i];var v=c.getAttribute('data-v');
    return v!==null&&v!==''?parseFloat(v):c.textContent.trim().toLowerCase();}
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){var x=key(a),y=key(b);
    if(typeof x!==typeof y){return (typeof x==='number'?-1:1)*(asc?1:-1);}
    return (x<y?-1:x>y?1:0)*(asc?1:-1);});
  rows.forEach(function(r){body.appendChild(r)});
}
document.querySelectorAll('th').forEach(function(th){
  th.addEventListener('click',function(){mbSort(th)});});
function mbFailed(el,what){var p=document.createElement('span');p.className='load-error';
  p.textContent=' could not load '+what+' '+(el.currentSrc||el.src);el.after(p);}
document.querySelectorAll('audio').forEach(function(a){
  a.addEventListener('loadedmetadata',function(){a.setAttribute('data-loaded','1')});
  a.addEventListener('error',function(){mbFailed(a,'audio')},true);});
document.querySelectorAll('img').forEach(function(im){
  function done(){if(im.naturalWidth>0){im.setAttribute('data-loaded','1')}
    else{mbFailed(im,'image')}}
  if(im.complete){done()}else{im.addEventListener('load',done);
    im.addEventListener('error',function(){mbFailed(im,'image')});}});
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def page(title: str, body: Sequence[str]) -> str:
    """A complete HTML document with the inline style and sorting/loading script."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def td(text: str, value: float | None = None, raw: bool = False) -> str:
    """A table cell; ``value`` (when numeric) is what sorting uses."""
    content = text if raw else esc(text)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"<td>{content}</td>"
    return f"<td class=\"num\" data-v=\"{value:.6g}\">{content}</td>"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A sortable table; ``rows`` are lists of ready ``<td>`` strings."""
    ths = "".join(f"<th>{esc(h)}</th>" for h in head)
    trs = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return (f"<table class=\"{cls}\"><thead><tr>{ths}</tr></thead>"
            f"<tbody>\n{trs}\n</tbody></table>")


def header_html(board: Leaderboard) -> list[str]:
    h = board.header
    items = [f"date: {h['date']}", (f"musicbench {h['musicbench']} (git {h['git_revision']}), "
             f"torch {h['torch']}"), f"device: {h['device']}", f"seed: {h['seed']}; config: "
             f"{h['config']}" + ("; quick run" if h.get("quick") else "")]
    items += [f"command: {c}" for c in h.get("commands") or []]
    if h["stored"] < h["planned"]:
        items.append(f"{h['planned'] - h['stored']} of {h['planned']} planned cells have not "
                     "run yet")
    for name, fp in h["dataset_fingerprints"].items():
        items.append(f"dataset {name}: {h['samples'].get(name, '—')} clips, fingerprint {fp}")
    return ["<ul>"] + [f"<li>{esc(i)}</li>" for i in items] + ["</ul>"]


def marks(row: dict[str, Any], board: Leaderboard) -> str:
    """Badges: failed, contrast (not in the worst case), non-adaptive or oblivious."""
    out = []
    if row["status"] != "ok":
        out.append("<span class=\"badge failed\">failed</span>")
    if row["attack"] in board.contrasts:
        out.append("<span class=\"badge contrast\" title=\"not an evaluation of the defense; "
                   "left out of the worst case\">contrast</span>")
    if row["adaptive"] in ("non-adaptive", "oblivious"):  # the attack ignores the defense
        out.append(f"<span class=\"badge nonadaptive\">{esc(row['adaptive'])}</span>")
    return "".join(out)


def pct_td(x: float | None, ci: Any = None) -> str:
    return td(_pct_ci(x, ci), None if x is None else 100 * x)


def num_td(x: float | None, digits: int = 2) -> str:
    return td("—" if x is None else f"{x:.{digits}f}", x)


def worst_case_tables(board: Leaderboard) -> list[str]:
    """The worst-case table (per threat model) and the robust accuracy of each attack."""
    tms = board.threat_models
    rows = []
    notes: list[str] = []
    for s in board.summary:
        by_tm = {w.threat_model: w for w in s.worst_case}
        link = f"<a href=\"{esc(model_page(s.dataset, s.model))}\">{esc(s.model)}</a>"
        cells = [td(s.dataset), td(link, raw=True), td(s.defense), num_td(s.n, 0),
                 pct_td(s.clean_accuracy, s.clean_accuracy_ci)]
        for tm in tms:
            w = by_tm.get(tm)
            text = "—" if w is None else _pct_ci(w.value, w.ci) + (
                "" if w.complete else " (a cell failed: upper bound)")
            if w is not None and w.marks:  # the gates' and masking flags' severity
                text += f" {w.marks}"
                notes += [f"{w.marks} {s.model} / {s.defense}, {tm.label}: {f}"
                          for f in w.flags]
            cells.append(td(text, None if w is None or w.value is None else 100 * w.value))
        rows.append(cells)
    out = ["<h2>Worst-case robust accuracy by threat model</h2>",
           ("<p>Per model and defense, the clips that survive every attack of a threat model "
           "(per-clip AND), in %, with exact 95% intervals.</p>"),
           table(["dataset", "model", "defense", "n", "clean acc ↑"]
                 + [f"{tm.label} ↑" for tm in tms], rows), "<ul>"]
    for tm in tms:
        names = [a for a, t in board.attacks if t == tm and a not in board.contrasts]
        shown = [a for a, t in board.attacks if t == tm and a in board.contrasts]
        # (gate cells are listed with the others: they join the worst case)
        out.append(f"<li>{esc(tm.label)}: {esc(', '.join(names) or '—')}" + (
            f" (contrasts, not in the worst case: {esc(', '.join(shown))})" if shown else "")
            + "</li>")
    out.append("</ul>")
    if notes:
        out += [("<p>🔴: the figure overstates robustness (gradient masking, an attacker that "
                "does not adapt); ⚠: the attack was too weak for the figure to be evidence of "
                "robustness. Flags on the worst cases:</p>"), "<ul>"]
        out += [f"<li>{esc(note)}</li>" for note in notes] + ["</ul>"]
    out.append("<h2>Robust accuracy by attack</h2>")
    marks = {(r["dataset"], r["model"], r["defense"], r["attack"]): flag_marks(r["flags"])
             for r in board.rows}

    def marked(s: Any, attack: str) -> str:
        x = s.robust_accuracy.get(attack)
        mark = marks.get((s.dataset, s.model, s.defense, attack), "")
        return td((_pct_ci(x, None) + f" {mark}").strip(), None if x is None else 100 * x)

    rows = [[td(s.dataset), td(s.model), td(s.defense)]
            + [marked(s, a) for a, _ in board.attacks]
            for s in board.summary]
    out.append(table(["dataset", "model", "defense"]
                     + [f"{a} ({tm.label}) ↑" for a, tm in board.attacks], rows))
    return out


def cell_row_html(row: dict[str, Any], board: Leaderboard) -> list[str]:
    """One row of the every-cell table."""
    anchor = f"{model_page(row['dataset'], row['model'])}#cell-{row['key']}"
    attack = f"<a href=\"{esc(anchor)}\">{esc(row['attack'])}</a>{marks(row, board)}"
    cells = [td(row["dataset"]), td(row["model"]), td(row["defense"]), td(attack, raw=True)]
    if row["status"] != "ok":
        err = (row["error"] or "").splitlines()[0][:160] if row["error"] else ""
        return cells + [td(f"failed: {err}")] + [td("—")] * (7 + len(board.metrics))
    cells += [num_td(row["n"], 0), num_td(row["n_attacked"], 0), num_td(row["n_success"], 0),
              pct_td(row["asr"], row["asr_ci"]),
              pct_td(row["robust_accuracy"], row["robust_accuracy_ci"]), num_td(row["fad"])]
    cells += [num_td(row["metrics"].get(m, {}).get("value"), 3) for m in board.metrics]
    cells += [num_td(row["mean_queries"], 1), td(row["adaptive"] or "none"),
              f"<td class=\"flags\">{esc('; '.join(row['flags']))}</td>"]
    return cells


def metric_title(metric: str, board: Leaderboard) -> str:
    """A per-clip metric's column head with the better direction for the attack."""
    up = board.higher_is_better.get(METRIC_COLUMNS.get(metric, metric), True)
    return f"{METRIC_TITLES.get(metric, metric)} {'↑' if up else '↓'}"


def every_cell_tables(board: Leaderboard) -> list[str]:
    """Every cell, one sortable table per threat model."""
    head = ["dataset", "model", "defense", "attack", "n", "n att", "n ok", "ASR ↑",
            "robust acc ↑", "FAD ↓"] + [metric_title(m, board) for m in board.metrics] + [
            "queries ↓", "adaptive", "flags"]
    out = ["<h2>Every cell</h2>"]
    # every threat model of the board's cells: the headline's, and those of unbounded attacks
    # and of the large-radius gates, which have no worst case
    every = {ThreatModel.from_dict(r["threat_model"]) for r in board.rows}
    for tm in sorted(every, key=ThreatModel.sort_key):
        rows = [cell_row_html(r, board) for r in board.rows
                if r["threat_model"]["label"] == tm.label]
        out += [f"<h3>{esc(tm.label)}</h3>", table(head, rows, "cells")]
    return out


def eps_series(records: dict[str, CellRecord]) -> dict[tuple[Any, ...], list[CellRecord]]:
    """Cells that differ only in ε (:func:`musicbench.leaderboard.eps_series_key`), contrast
    cells left out: the points of one robustness curve, sorted by ε; only series with at
    least two points."""
    series: dict[tuple[Any, ...], list[CellRecord]] = {}
    for r in records.values():
        key = eps_series_key(r)
        if key is not None and not r.spec.run.contrast:
            series.setdefault(key, []).append(r)
    return {k: sorted(v, key=lambda r: r.spec.threat_model.eps) for k, v in series.items()
            if len({r.spec.threat_model.eps for r in v}) > 1}


def _figure_img(fig: Any, plt: Any, root: Path, name: str, alt: str) -> str:
    """Save ``fig`` as ``root/media/name`` (PNG, for the page) and as SVG beside it (vector,
    for papers), and return the ``<img>`` tag that shows it with a link to the SVG."""
    fig.tight_layout()
    path = root / "media" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=90)
    vector = path.with_suffix(".svg")
    save_figure(fig, vector)
    plt.close(fig)
    src, svg = path.relative_to(root).as_posix(), vector.relative_to(root).as_posix()
    return (f"<figure><img src=\"{esc(src)}\" alt=\"{esc(alt)}\"><figcaption>"
            f"<a href=\"{esc(svg)}\">SVG</a></figcaption></figure>")


def plot_eps_curves(records: dict[str, CellRecord], root: Path, plt: Any) -> list[str]:
    """Robustness curves, one figure per (dataset, model): ASR and robust accuracy against ε
    with exact 95% intervals, one line per (defense, attack) series of a sweep."""
    series = eps_series(records)
    if not series:
        return []
    parts = ["<h2>Robustness against ε</h2>",
             ("<p>Each line is one attack swept over ε (<code>eps = [...]</code>) on one "
             "defense; bars are exact 95% intervals.</p>")]
    by_model: dict[tuple[str, str], list[tuple[tuple[Any, ...], list[CellRecord]]]] = {}
    for key, cells in series.items():
        by_model.setdefault(key[:2], []).append((key, cells))
    for (dataset, model), lines in sorted(by_model.items()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for key, cells in lines:
            eps = [c.spec.threat_model.eps for c in cells]
            label = f"{key[2]} / {key[3]} ({key[4]})"
            for ax, name in zip(axes, ("asr", "robust_accuracy"), strict=True):
                values = [c.metrics[name].value if name in c.metrics else np.nan for c in cells]
                cis = [c.metrics[name].ci if name in c.metrics and c.metrics[name].ci
                       else (v, v) for c, v in zip(cells, values, strict=True)]
                low = [100 * (v - lo) for v, (lo, _) in zip(values, cis, strict=True)]
                high = [100 * (hi - v) for v, (_, hi) in zip(values, cis, strict=True)]
                ax.errorbar(eps, [100 * v for v in values], yerr=[low, high], marker="o",
                            capsize=3, label=label)
        for ax, title in zip(axes, ("ASR % (attacked clips)", "robust accuracy % (all clips)"),
                             strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("ε")
            ax.set_title(title, fontsize=10)
            ax.set_ylim(-2, 102)
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{dataset} / {model}", fontsize=11)
        parts.append(_figure_img(fig, plt, root, f"eps-{slug(dataset)}-{slug(model)}.png",
                                 f"robustness curves, {dataset} / {model}"))
    return parts


def plot_query_curves(records: dict[str, CellRecord], root: Path, plt: Any) -> list[str]:
    """Black-box success against query budget, the standard figure of that literature: per
    (dataset, model, defense), for each black-box attack the fraction of its attacked clips
    fooled within q queries (from the per-clip query counts), q up to the largest spent."""
    groups: dict[tuple[str, str, str], list[CellRecord]] = {}
    for r in records.values():
        if r.status == "ok" and r.spec.threat == "black-box" and r.info.n_attacked:
            groups.setdefault(r.names[:3], []).append(r)
    if not groups:
        return []
    parts = ["<h2>Black-box success against queries</h2>",
             ("<p>Fraction of the attacked clips fooled within q queries (a clip counts from "
             "the query on which it was fooled; the harness's judgement over draws decides "
             "whether it was).</p>")]
    for (dataset, model, defense), cells in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for r in sorted(cells, key=lambda c: c.names[3]):
            attacked = [s for s in r.samples if s.attacked]
            fooled = sorted(s.queries for s in attacked if s.success)
            top = max([s.queries for s in attacked] + [1])
            q = np.linspace(0, top, 200)
            frac = [sum(1 for f in fooled if f <= x) / len(attacked) for x in q]
            ax.step(q, [100 * f for f in frac], where="post", label=r.names[3])
        ax.set_xlabel("queries")
        ax.set_ylabel("fooled % of attacked clips")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{dataset} / {model} / {defense}", fontsize=10)
        ax.legend(fontsize=7)
        parts.append(_figure_img(
            fig, plt, root, f"queries-{slug(dataset)}-{slug(model)}-{slug(defense)}.png",
            f"queries, {dataset} / {model} / {defense}"))
    return parts


def plot_defense_bars(board: Leaderboard, root: Path, plt: Any) -> list[str]:
    """Per (dataset, model) with more than one defense: clean accuracy and the worst-case
    robust accuracy of every threat model, one group of bars per defense, exact 95%
    intervals (the leaderboard's worst-case table as a picture)."""
    by_model: dict[tuple[str, str], list[Any]] = {}
    for summary in board.summary:
        by_model.setdefault((summary.dataset, summary.model), []).append(summary)
    parts: list[str] = []
    for (dataset, model), rows in sorted(by_model.items()):
        if len(rows) < 2:
            continue
        columns = ["clean"] + [tm.label for tm in board.threat_models]
        fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(rows) * len(columns) / 2), 3.6))
        width = 0.8 / len(columns)
        for j, column in enumerate(columns):
            values, low, high = [], [], []
            for summary in rows:
                if column == "clean":
                    v, ci = summary.clean_accuracy, summary.clean_accuracy_ci
                else:
                    wc = next((w for w in summary.worst_case if w.threat_model.label == column),
                              None)
                    v, ci = (wc.value, wc.ci) if wc is not None else (None, None)
                v = np.nan if v is None else v
                lo, hi = (ci if ci and ci[0] is not None else (v, v))
                values.append(100 * v)
                low.append(100 * (v - lo) if not np.isnan(v) else 0)
                high.append(100 * (hi - v) if not np.isnan(v) else 0)
            xs = np.arange(len(rows)) + (j - (len(columns) - 1) / 2) * width
            ax.bar(xs, values, width, yerr=[low, high], capsize=2, label=column)
        ax.set_xticks(np.arange(len(rows)), [r.defense for r in rows], rotation=30,
                      ha="right", fontsize=8)
        ax.set_ylabel("%")
        ax.set_ylim(0, 102)
        ax.set_title(f"{dataset} / {model}: clean and worst-case robust accuracy", fontsize=10)
        ax.legend(fontsize=7)
        parts.append(_figure_img(fig, plt, root, f"defenses-{slug(dataset)}-{slug(model)}.png",
                                 f"defenses, {dataset} / {model}"))
    if parts:
        parts = ["<h2>Defenses: clean and worst-case robust accuracy</h2>",
                 ("<p>One group of bars per defense: clean accuracy and, per threat model, the "
                 "clips that survive every (adaptive) attack of it; bars are exact 95% "
                 "intervals.</p>")] + parts
    return parts


COST_AXES = (("lsd", "LSD (successful clips)"), ("snr_db", "SNR dB (successful clips)"),
             ("fad", "FAD (attacked clips)"))


def cost_groups(board: Leaderboard) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Leaderboard rows by (dataset, model, defense): the finished, non-contrast cells with an
    ASR, the points of one cost-against-success figure."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    contrasts = set(board.contrasts)
    for row in board.rows:
        # contrasts and the harness's sanity gates are not attacks a reader would ship
        if row["status"] == "ok" and row["asr"] is not None and row["attack"] not in contrasts \
                and not row["role"]:
            groups.setdefault((row["dataset"], row["model"], row["defense"]), []).append(row)
    return groups


def plot_cost_vs_success(board: Leaderboard, root: Path, plt: Any) -> list[str]:
    """Perceptual cost against success, one figure per (dataset, model, defense) with at least
    two attacks: each attack a point at its ASR (exact 95% interval as a horizontal bar) and
    its LSD, SNR and FAD; the marker says the threat model (points of different threat models
    share axes, never a worst case). Contrast cells and sanity gates are left out."""
    groups = cost_groups(board)
    markers = "osD^vP*Xh"
    threat_marker = {tm.label: markers[i % len(markers)]
                     for i, tm in enumerate(board.threat_models)}
    parts: list[str] = []
    for (dataset, model, defense), rows in sorted(groups.items()):
        if len(rows) < 2:
            continue
        fig, axes = plt.subplots(1, len(COST_AXES), figsize=(12, 3.6))
        for i, row in enumerate(rows):
            asr = 100 * row["asr"]
            lo, hi = row["asr_ci"] or (row["asr"], row["asr"])
            label = f"{row['attack']} ({row['threat_model']['label']})"
            for ax, (key, _) in zip(axes, COST_AXES, strict=True):
                value = row[key]
                if value is None or not np.isfinite(value):
                    continue
                ax.errorbar([asr], [value], xerr=[[asr - 100 * lo], [100 * hi - asr]],
                            marker=threat_marker.get(row["threat_model"]["label"], "o"),
                            color=f"C{i % 10}", capsize=2, linestyle="none", label=label)
        for ax, (key, title) in zip(axes, COST_AXES, strict=True):
            ax.set_xlabel("ASR % (attacked clips)")
            ax.set_xlim(-2, 102)
            ax.set_title(title, fontsize=10)
            if key == "fad":
                ax.set_yscale("symlog")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, fontsize=7, loc="center right")
            fig.subplots_adjust(right=0.75)
        fig.suptitle(f"{dataset} / {model} / {defense}: perceptual cost against success",
                     fontsize=11)
        parts.append(_figure_img(
            fig, plt, root, f"cost-{slug(dataset)}-{slug(model)}-{slug(defense)}.png",
            f"cost against success, {dataset} / {model} / {defense}"))
    if parts:
        parts = ["<h2>Perceptual cost against success</h2>",
                 ("<p>Each attack is a point: its ASR (exact 95% interval) against the LSD and SNR "
                 "of its successful clips and the FAD of its attacked clips (log scale). Lower "
                 "right is better for the attacker on LSD and FAD, upper right on SNR. The marker "
                 "is the threat model: compare points within one.</p>")] + parts
    return parts


def index_html(board: Leaderboard, curves: Sequence[str] = ()) -> str:
    models = sorted({(s.dataset, s.model) for s in board.summary})
    nav = ["<h2>Models: clips and spectrograms</h2>", "<ul>"] + [
        f"<li><a href=\"{esc(model_page(d, m))}\">{esc(d)} / {esc(m)}</a></li>"
        for d, m in models] + ["</ul>"]
    body = (["<h1>musicbench report</h1>"] + header_html(board) + nav
            + worst_case_tables(board) + list(curves) + every_cell_tables(board))
    return page("musicbench report", body)


def clip_html(clip: Clip, media: Path, root: Path, plt: Any) -> list[str]:
    """Players and spectrograms of one kept clip; writes its media under ``media``."""
    name = slug(clip.sample.sample_id)
    clean, adv = media / f"{name}-clean.flac", media / f"{name}-adv.flac"
    atomic_copy(clip.clean, clean)  # a symbolic link planted at clean is replaced, not followed
    atomic_copy(clip.adv, adv)
    gain = write_difference(clip.clean, clip.adv, media / f"{name}-diff.flac")
    plot_spectrograms(clip.clean, clip.adv, media / f"{name}-spec.png", plt)
    s = clip.sample
    facts = (f"label {s.label}, clean prediction {s.clean_pred}, adversarial prediction "
             f"{s.adv_pred}; {'fooled' if s.success else 'not fooled'}"
             + "".join(f", {k.upper() if k == 'lsd' else k.upper() + ' dB' if k == 'snr' else k}"
                       f" {v:.3g}" for k, v in s.metrics.items() if k in ("lsd", "snr"))
             + f", {s.queries} queries")

    def player(path: Path, caption: str) -> str:
        rel = path.relative_to(root).as_posix()
        return (f"<figure><audio controls preload=\"metadata\" src=\"{esc(rel)}\"></audio>"
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    spec = (media / f"{name}-spec.png").relative_to(root).as_posix()
    return [f"<div class=\"clip\"><h4>{esc(s.sample_id)}</h4><p>{esc(facts)}</p>",
            "<div class=\"players\">", player(clean, "clean"), player(adv, "adversarial"),
            player(media / f"{name}-diff.flac",
                   f"difference × {gain:.0f} ({20 * math.log10(gain):+.1f} dB)"),
            "</div>", (f"<img src=\"{esc(spec)}\" alt=\"log-mel spectrograms of "
            f"{esc(s.sample_id)}\" loading=\"lazy\">"), "</div>"]


def cell_section(row: dict[str, Any], record: CellRecord, board: Leaderboard,
                 samples: pd.DataFrame, out: Path, root: Path, plt: Any) -> list[str]:
    """A cell's figures, its per-clip figure and its kept clips."""
    title = f"{row['defense']} / {row['attack']} ({row['threat_model']['label']})"
    parts = [f"<section id=\"cell-{esc(row['key'])}\"><h2>{esc(title)}{marks(row, board)}</h2>"]
    if row["status"] != "ok":
        return parts + [f"<pre>{esc(row['error'] or '')}</pre></section>"]
    facts = [f"n {row['n']}", f"attacked {row['n_attacked']}", f"fooled {row['n_success']}",
             f"ASR {_pct_ci(row['asr'], row['asr_ci'])}%",
             f"robust accuracy {_pct_ci(row['robust_accuracy'], row['robust_accuracy_ci'])}%",
             f"mean queries {_num(row['mean_queries'], 1)}",
             f"adaptive: {row['adaptive'] or 'none'}"]
    parts.append(f"<p>{esc('; '.join(facts))}</p>")
    if row["flags"]:
        parts.append(f"<p class=\"flags\">{esc('; '.join(row['flags']))}</p>")
    media = root / "media" / slug(row["key"])
    media.mkdir(parents=True, exist_ok=True)
    mine = samples[samples["key"] == row["key"]]
    if len(mine):
        budget = record.spec.attack.params.get("budget")  # black-box query budget, if any
        plot_cell_clips(mine, float(budget) if isinstance(budget, int | float) else None,
                        media / "clips.png", plt)
        rel = (media / "clips.png").relative_to(root).as_posix()
        parts.append(f"<img src=\"{esc(rel)}\" alt=\"per-clip figures\" loading=\"lazy\">")
    clips = kept_clips(record, out)
    if not clips:
        why = ("<code>keep_audio = 0</code>" if record.spec.run.keep_audio == 0 else
               "no clip was fooled, and a run keeps fooled clips only"
               if record.info.n_success == 0 else "their files are missing")
        parts.append(f"<p>No clips kept for this cell ({why}).</p>")
    for clip in clips:
        parts += clip_html(clip, media, root, plt)
    return parts + ["</section>"]


def model_html(dataset: str, model: str, board: Leaderboard, records: dict[str, CellRecord],
               samples: pd.DataFrame, out: Path, root: Path, plt: Any) -> str:
    rows = [r for r in board.rows if (r["dataset"], r["model"]) == (dataset, model)]
    toc = ["<ul>"] + [f"<li><a href=\"#cell-{esc(r['key'])}\">{esc(r['defense'])} / "
                      f"{esc(r['attack'])}</a></li>" for r in rows] + ["</ul>"]
    body = [(f"<p><a href=\"index.html\">← all results</a></p><h1>{esc(dataset)} / "
            f"{esc(model)}</h1>"), ("<p>Players: clean, adversarial, and the difference "
            "amplified by the stated gain. Spectrograms: log-mel power, one colour scale "
            f"per clip ({DYNAMIC_RANGE_DB:.0f} dB below the clean clip's loudest bin); the "
            "difference panel is not amplified.</p>"), *toc]
    for r in rows:
        body += cell_section(r, records[r["key"]], board, samples, out, root, plt)
    return page(f"{dataset} / {model} — musicbench report", body)


def write_report(out: str | Path, directory: str | Path | None = None) -> Path:
    """Write the report of the run in ``out`` to ``directory`` (default ``out/report``);
    returns the index page's path."""
    plt = _plotting()
    from musicbench.files import atomic_write_text, check_output_folder, check_stored_audio
    from musicbench.results import load

    out = Path(out)
    run_dir = out.parent if out.suffix == ".sqlite" else out
    root = check_output_folder(Path(directory) if directory is not None else run_dir / "report",
                               "the report folder")
    board, records = _load(out)
    # a stored path leading out of run_dir/audio (an edited store) is refused, nothing written
    check_stored_audio([(key, *a) for key, r in records.items() for a in r.audio], run_dir)
    samples = load(out).samples
    root.mkdir(parents=True, exist_ok=True)
    for dataset, model in sorted({(r["dataset"], r["model"]) for r in board.rows}):
        atomic_write_text(root / model_page(dataset, model),
                          model_html(dataset, model, board, records, samples, run_dir, root,
                                     plt))
    curves = (plot_defense_bars(board, root, plt) + plot_eps_curves(records, root, plt)
              + plot_query_curves(records, root, plt) + plot_cost_vs_success(board, root, plt))
    return atomic_write_text(root / "index.html", index_html(board, curves))
