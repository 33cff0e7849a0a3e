"""``musicbench merge INTO FROM...``: gather the cells of runs split across folders or machines.

A long config is often run as several ``--only`` runs at once, each with its own ``--out`` (one
per model on two machines, say: one output folder admits one run at a time). Merging copies
every finished cell, its clips, metrics and kept audio, and the runs that produced them (their
environment and command line: the provenance a leaderboard header reports) into one store, so
that ``musicbench leaderboard``, ``compare`` and ``report`` see one run.

Nothing is recomputed and nothing is lost: a cell already finished in the destination stays as
it is (its key names everything that decides its result, so a second copy is the same
experiment), a failed one is replaced by a finished copy, and stores of different configs are
refused, because a leaderboard's header describes one config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musicbench.cells import CellSpec
from musicbench.errors import ConfigError
from musicbench.files import (
    atomic_copy,
    check_output_file,
    check_output_folder,
    check_stored_audio,
    stored_audio_path,
)
from musicbench.store import Store


@dataclass
class MergeReport:
    """What a merge did, per source folder."""

    copied: dict[str, int] = field(default_factory=dict)  # source -> cells copied
    replaced_failed: dict[str, int] = field(default_factory=dict)  # failed cells replaced
    already_there: dict[str, int] = field(default_factory=dict)  # finished in the destination
    failed_skipped: dict[str, int] = field(default_factory=dict)  # failed in the source
    runs: dict[str, int] = field(default_factory=dict)  # run records copied
    audio_files: int = 0


def store_path(folder_or_db: Path) -> Path:
    """A run folder's ``results.sqlite`` (or the ``.sqlite`` file itself)."""
    path = Path(folder_or_db)
    return path if path.suffix == ".sqlite" else path / "results.sqlite"


def merge(into: Path, sources: list[Path]) -> MergeReport:
    """Copy the cells and runs of every store in ``sources`` into the run folder ``into``
    (created if needed). Holds ``into``'s run lock, so no run writes it meanwhile; sources are
    only read (one may still be running: its cell in flight is simply not there yet).

    Raises :class:`ConfigError` (nothing written) for a missing source, a source that is the
    destination, stores of different configs, a destination that is not a folder (or whose
    store or leaderboard is not a regular file), or a stored audio path that leads out of its
    run folder's ``audio/`` (:func:`musicbench.files.stored_audio_path`)."""
    from musicbench.leaderboard import write_leaderboard
    from musicbench.session import run_lock

    into = Path(into)
    check_output_folder(into, "the merge destination")
    for name in ("results.sqlite", "leaderboard.md"):
        check_output_file(into / name, "the merged store" if name.endswith("sqlite")
                          else "the merged leaderboard")
    dbs = [store_path(s) for s in sources]
    for db in dbs:
        if not db.exists():
            raise ConfigError(f"no results at {db}; a source is a run's --out folder or its "
                              "results.sqlite")
        if into.exists() and (into / "results.sqlite").exists() and \
                db.resolve() == (into / "results.sqlite").resolve():
            raise ConfigError(f"{db} is the destination itself")
    readers = [Store(db, readonly=True) for db in dbs]
    try:
        for db, reader in zip(dbs, readers, strict=True):
            _check_audio_paths(reader, db.parent, into)
        configs = {_latest_config(r) for r in readers}
        if into.joinpath("results.sqlite").exists():
            existing = Store(into / "results.sqlite", readonly=True)
            try:
                configs.add(_latest_config(existing))
            finally:
                existing.close()
        configs.discard(None)
        if len(configs) > 1:
            raise ConfigError(
                "these stores were run from different configs; a leaderboard describes one "
                "config, so merge only the folders of one config's --only runs")
        report = MergeReport()
        with run_lock(into):
            target = Store(into / "results.sqlite")
            try:
                for db, reader in zip(dbs, readers, strict=True):
                    _merge_one(target, reader, db, into, report)
                write_leaderboard(target, into / "leaderboard.md", fmt="md")
            finally:
                target.close()
        return report
    finally:
        for r in readers:
            r.close()


def _check_audio_paths(reader: Store, source: Path, into: Path) -> None:
    """Every audio path ``reader`` stores is inside ``source/audio`` and would be copied to a
    regular file (or a new one) inside ``into/audio``; else :class:`UnsafePathError` naming
    the cell and the path, before anything is written (a stored ``../important.txt`` would
    otherwise overwrite a file beside the destination)."""
    entries = reader.conn.execute("SELECT cell_key, sample_id, kind, path FROM audio").fetchall()
    check_stored_audio(entries, source)
    for cell, _, _, rel in entries:
        check_output_file(stored_audio_path(into, rel, cell=cell), f"cell {cell}'s audio")


def _run_identity(run: dict[str, Any]) -> str:
    """What makes two run records the same run: when it started, its config, command and
    plan (``settings`` differ once merged: they name the source)."""
    return json.dumps([run["started"], run["config_source"], run["config_text"], run["argv"],
                       run["plan"]], sort_keys=True)


def _latest_config(store: Store) -> str | None:
    runs = store.runs()
    return runs[-1]["config_text"] if runs else None


def _merge_one(target: Store, reader: Store, db: Path, into: Path, report: MergeReport) -> None:
    name = str(db)
    status = {key: s for key, s in target.conn.execute("SELECT key, status FROM cells")}
    run_ids: dict[int, int] = {}
    # a run merged before (the same source merged twice) keeps its one record
    known = {_run_identity(r): r["id"] for r in target.runs()}
    for run in reader.runs():
        if _run_identity(run) in known:
            run_ids[run["id"]] = known[_run_identity(run)]
            continue
        settings = run["settings"] | {"merged_from": name}
        run_ids[run["id"]] = target.start_run(
            started=run["started"], config_source=run["config_source"],
            config_text=run["config_text"], argv=run["argv"], settings=settings,
            environment=run["environment"], plan=run["plan"])
        if run["finished"] is not None:
            target.finish_run(run_ids[run["id"]], run["finished"])
    report.runs[name] = len(set(run_ids.values()) - set(known.values()))
    source_run = dict(reader.conn.execute("SELECT key, run_id FROM cells"))
    for key, stored in reader.conn.execute("SELECT key, spec FROM cells"):
        # the record's key is recomputed from its spec: a store edited by hand (or written by a
        # musicbench that keyed cells differently) must not be merged under a wrong key
        if CellSpec.from_dict(json.loads(stored)).key != key:
            raise ConfigError(f"{db}: cell {key} does not match its own spec (a store of "
                              "another musicbench version?); nothing more merged from it")
    copied = replaced = there = skipped = 0
    for record in reader.cells():
        if record.status != "ok":
            skipped += 1
            continue
        if status.get(record.key) == "ok":
            there += 1
            continue
        for _, _, rel in record.audio:  # each checked by _check_audio_paths
            source_file = stored_audio_path(db.parent, rel, cell=record.key)
            if source_file.exists():
                atomic_copy(source_file, stored_audio_path(into, rel, cell=record.key))
                report.audio_files += 1
        replaced += status.get(record.key) is not None
        copied += 1
        target.write_cell(record, run_ids.get(source_run.get(record.key)))
        status[record.key] = "ok"
    report.copied[name] = copied
    report.replaced_failed[name] = replaced
    report.already_there[name] = there
    report.failed_skipped[name] = skipped
