"""``musicbench export-adv OUT DIR``: a run's kept adversarial clips in the layout the
``external`` attack reads (plugins/attacks/external.py), one folder per cell, so that one
board's attacks can be replayed on another revision, model or defense.

Each cell with kept clips (``[run] keep_audio``: only successful clips are kept) becomes
``DIR/<dataset>--<model>--<defense>--<attack>[-<n>]/`` holding

- ``<n>.flac``: the adversarial clip, the stored file copied byte for byte (24-bit FLAC at the
  dataset's rate), numbered in clip order: clip ids may hold characters no file name may;
- ``manifest.csv``: ``clip_id,path``, what ``external`` reads to match files to clips;
- ``export.json``: the cell's key, labels, threat model, source revision and the parameters
  an ``external`` entry needs to claim the same threat model (``norm``, ``eps``,
  ``snr_db``), so a replay is one config entry away.

Region threat models (MAIA) cannot be checked from a file (the region is the attack's own),
so their cells are exported for listening but ``export.json`` says ``"replayable": false``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicbench.errors import ConfigError
from musicbench.files import (
    atomic_copy,
    atomic_write_text,
    check_output_folder,
    stored_audio_path,
)
from musicbench.leaderboard import planned_run
from musicbench.store import CellRecord


@dataclass(frozen=True)
class ExportedCell:
    """One exported cell: its folder and how many clips it holds."""

    key: str
    folder: Path
    clips: int
    replayable: bool
    attack: str = ""
    revision: str = ""
    params: dict[str, Any] | None = None  # the external parameters claiming its threat model


def external_params(record: CellRecord) -> dict[str, Any] | None:
    """The ``external`` attack parameters claiming ``record``'s threat model, or None for a
    region threat model (not checkable from a file)."""
    tm = record.spec.threat_model
    if tm.kind == "unbounded":
        return {"norm": "none"}
    if tm.kind == "norm":
        return {"norm": tm.norm, "eps": tm.eps}
    if tm.kind == "snr":
        return {"norm": tm.norm, "snr_db": tm.snr_db}
    return None


def _folder_name(record: CellRecord, taken: set[str]) -> str:
    name = "--".join(_safe(label) for label in record.names)
    stem, n = name, 2
    while name.lower() in taken:  # distinct also where the file system ignores case
        name, n = f"{stem}-{n}", n + 1
    taken.add(name.lower())
    return name


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in label) or "_"


def export_adversarial(out: Path | str, target: Path | str, *, attack: str | None = None,
                       model: str | None = None, defense: str | None = None
                       ) -> list[ExportedCell]:
    """Write the kept adversarial clips of run folder (or store) ``out`` under ``target``,
    one folder per planned cell matching the given labels; returns what was written.

    Raises ConfigError when ``target`` is not a folder one may write, or nothing matches."""
    out = Path(out)
    target = check_output_folder(target, "the export folder")
    try:
        records, _ = planned_run(out)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    root = out.parent if out.suffix == ".sqlite" else out
    wanted = [r for r in records if r.status == "ok"
              and (attack is None or r.names[3] == attack)
              and (model is None or r.names[1] == model)
              and (defense is None or r.names[2] == defense)]
    kept = [r for r in wanted if any(kind == "adv" for _, kind, _ in r.audio)]
    if not kept:
        raise ConfigError(f"no cell of {out} matching the selection kept adversarial clips "
                          f"({len(wanted)} cells matched; clips are kept with "
                          "[run] keep_audio = N, successful clips only)")
    target.mkdir(parents=True, exist_ok=True)
    taken = {p.name.lower() for p in target.iterdir()} if target.is_dir() else set()
    exported = []
    for record in kept:
        exported.append(_export_cell(record, root, target / _folder_name(record, taken)))
    return exported


def _export_cell(record: CellRecord, root: Path, folder: Path) -> ExportedCell:
    advs = sorted((sid, rel) for sid, kind, rel in record.audio if kind == "adv")
    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(["clip_id", "path"])
    for n, (sid, rel) in enumerate(advs):
        source = stored_audio_path(root, rel, cell=record.key)
        name = f"{n:05d}.flac"
        atomic_copy(source, folder / name)
        writer.writerow([sid, name])
    atomic_write_text(folder / "manifest.csv", manifest.getvalue())
    params = external_params(record)
    dataset, model, defense, attack = record.names
    meta = {
        "cell_key": record.key,
        "dataset": dataset, "model": model, "defense": defense, "attack": attack,
        "threat_model": record.spec.threat_model.to_dict(),
        "threat_model_label": record.spec.threat_model.label,
        "source_revision": str(record.environment.get("git_revision") or ""),
        "clips": len(advs),
        "replayable": params is not None,
        "external_params": params,
    }
    atomic_write_text(folder / "export.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return ExportedCell(record.key, folder, len(advs), params is not None, attack,
                        meta["source_revision"], params)


def replay_entry(cell: ExportedCell) -> str:
    """The ``[[attacks]]`` TOML entry that replays ``cell`` (for the command's output)."""
    lines = ["[[attacks]]", 'name = "external"', f"folder = {json.dumps(str(cell.folder))}",
             f"source = {json.dumps(cell.attack + ' @ ' + (cell.revision or '?'))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (cell.params or {}).items()]
    return "\n".join(lines)
