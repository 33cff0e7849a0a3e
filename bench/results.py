"""A run's results as pandas DataFrames, for analysis without touching SQLite.

``load(OUT)`` reads the store of a run folder (or a ``results.sqlite`` path) read-only and
returns :class:`Results`: ``cells`` (one row per cell of the leaderboard's grid, with exactly
the figures the leaderboard shows, intervals split into ``*_low``/``*_high`` columns) and
``samples`` (one row per (cell, clip)). Column names and types are documented in
docs/analysis.md; pandas is an optional dependency (``pip install "musicbench[analysis]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from musicbench.leaderboard import _add_flags, cell_row, plan_keys
from musicbench.store import CellRecord, Store

if TYPE_CHECKING:
    import pandas as pd

CELL_COLUMNS: dict[str, str] = {
    "key": "string", "dataset": "string", "model": "string", "defense": "string",
    "attack": "string", "dataset_name": "string", "model_name": "string",
    "defense_name": "string", "attack_name": "string", "status": "string", "threat": "string",
    "threat_model": "string", "threat_kind": "string", "norm": "string", "eps": "Float64",
    "n": "Int64", "n_attacked": "Int64", "n_success": "Int64",
    "clean_accuracy": "Float64", "clean_accuracy_low": "Float64", "clean_accuracy_high": "Float64",
    "asr": "Float64", "asr_low": "Float64", "asr_high": "Float64",
    "robust_accuracy": "Float64", "robust_accuracy_low": "Float64",
    "robust_accuracy_high": "Float64",
    "fad": "Float64", "fad_clips": "Int64", "map_clean": "Float64", "map_adv": "Float64",
    "mean_queries": "Float64", "seconds_per_clip": "Float64", "adaptive": "string",
    "contrast": "boolean", "role": "string", "eot_samples": "Int64", "eval_draws": "Int64",
    "clean_accuracy_undefended": "Float64", "revision": "string", "error": "string",
}
"""The fixed columns of :attr:`Results.cells` and their pandas dtypes; every per-clip metric
of the run adds a ``Float64`` column of its name (its mean over the successful clips), and
``flags`` (a list of strings) and ``attack_params`` (a dict) are object columns."""

SAMPLE_COLUMNS: dict[str, str] = {
    "key": "string", "dataset": "string", "model": "string", "defense": "string",
    "attack": "string", "sample_id": "string", "position": "Int64", "label": "Int64",
    "clean_pred": "Int64", "clean_correct": "boolean", "attacked": "boolean",
    "adv_pred": "Int64", "success": "boolean", "robust": "boolean", "queries": "Int64",
    "steps": "Int64", "clean_wrong": "Float64", "adv_wrong": "Float64", "work_id": "string",
}
"""The fixed columns of :attr:`Results.samples`; per-clip metrics add ``Float64`` columns
(NaN on clips that were not attacked). ``robust`` = right after the attack (clean-wrong
clips are not robust); ``clean_wrong``/``adv_wrong``: the fraction of judging draws wrong under
a randomized defense (NA when one draw decides)."""


@dataclass(frozen=True)
class Results:
    """``cells`` and ``samples`` of one run, and the store's runs (``runs``: list of dicts)."""

    cells: pd.DataFrame
    samples: pd.DataFrame
    runs: list[dict[str, Any]]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # an optional dependency: say how to get it
        raise ImportError("musicbench.results needs pandas: pip install "
                          "\"musicbench[analysis]\" (or pandas>=2)") from exc
    return pandas


def load(out: str | Path, *, cells: Literal["grid", "all"] = "grid") -> Results:
    """Read the results of run folder ``out`` (or a ``.sqlite`` store).

    ``cells = "grid"`` (default): the cells the leaderboard shows (the latest full run's grid
    and later ``--only`` reruns); ``"all"``: every cell in the store, older ones included.
    """
    pd = _pandas()
    path = Path(out)
    db = path if path.suffix == ".sqlite" else path / "results.sqlite"
    if not db.is_file():
        raise FileNotFoundError(f"no results store at {db}")
    store = Store(db, readonly=True)
    try:
        keys = plan_keys(store)[0] if cells == "grid" else None
        records = store.cells(keys)
        runs = store.runs()
    finally:
        store.close()
    rows = [cell_row(r) for r in records]
    _add_flags(records, rows)
    cell_frame = _typed(pd, [_cell(r, row) for r, row in zip(records, rows, strict=True)],
                        CELL_COLUMNS)
    sample_frame = _typed(pd, [s for r in records for s in _samples(r)], SAMPLE_COLUMNS)
    return Results(cell_frame, sample_frame, runs)


def _typed(pd: Any, rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for name in columns:
        if name not in frame:
            frame[name] = None
    extra = [c for c in frame.columns if c not in columns]
    frame = frame[list(columns) + extra]
    for name, dtype in columns.items():
        frame[name] = frame[name].astype(dtype)
    for name in extra:  # per-clip metrics: numbers, or object columns (flags, params)
        if name not in ("flags", "attack_params"):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Float64")
    return frame


def _split(out: dict[str, Any], name: str, ci: Any) -> None:
    out[f"{name}_low"], out[f"{name}_high"] = (ci[0], ci[1]) if ci else (None, None)


def _cell(record: CellRecord, row: dict[str, Any]) -> dict[str, Any]:
    spec = record.spec
    tm = spec.threat_model
    out: dict[str, Any] = {
        "key": record.key, "dataset": row["dataset"], "model": row["model"],
        "defense": row["defense"], "attack": row["attack"],
        "dataset_name": spec.dataset.name, "model_name": spec.model.name,
        "defense_name": spec.defense.name, "attack_name": spec.attack.name,
        "status": row["status"], "threat": spec.threat, "threat_model": tm.label,
        "threat_kind": tm.kind, "norm": getattr(tm, "norm", None),
        "eps": getattr(tm, "eps", None),
        "contrast": spec.run.contrast, "role": spec.run.role,
    }
    for name in ("n", "n_attacked", "n_success", "clean_accuracy", "asr", "robust_accuracy",
                 "fad", "fad_clips", "map_clean", "map_adv", "mean_queries",
                 "seconds_per_clip", "adaptive", "eot_samples", "eval_draws",
                 "clean_accuracy_undefended", "revision", "error", "flags"):
        out[name] = row.get(name)
    for name in ("clean_accuracy", "asr", "robust_accuracy"):
        _split(out, name, row.get(f"{name}_ci"))
    for name, metric in row["metrics"].items():
        out[name] = metric["value"]
    out["attack_params"] = dict(spec.attack.params)
    return out


def _samples(record: CellRecord) -> list[dict[str, Any]]:
    d, m, df, a = record.names
    rows = []
    for s in record.samples:
        row = {"key": record.key, "dataset": d, "model": m, "defense": df, "attack": a,
               "sample_id": s.sample_id, "position": s.position, "label": s.label,
               "clean_pred": s.clean_pred, "clean_correct": s.clean_correct,
               "attacked": s.attacked, "adv_pred": s.adv_pred, "success": s.success,
               # a clip a survivor cascade did not attack again was fooled before it
               "robust": s.attacked and not s.success, "queries": s.queries,
               "steps": s.steps, "clean_wrong": s.clean_wrong, "adv_wrong": s.adv_wrong,
               "work_id": s.work_id}
        row.update(s.metrics)
        rows.append(row)
    return rows
