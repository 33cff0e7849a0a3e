"""The SQLite result store (docs/architecture.md, 'Data flow'): runs, cells, per-clip samples, cell metrics.

A cell is written in one transaction when it finishes, so a killed run loses at most the cell
in flight; a sharded cell's finished shards are kept (``shards``) until the cell is written, so
it loses at most the shards in flight. WAL mode lets a leaderboard be read while a run writes.
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musicbench.cells import CellInfo, CellSpec
from musicbench.errors import StorageFullError, StoreDamagedError
from musicbench.files import atomic_write_bytes, storage_full_as_error, storage_full_cause
from musicbench.sample_record import SampleRecord

if TYPE_CHECKING:
    from musicbench.shard_record import ShardResult

SCHEMA_VERSION = 4
"""2: cells keep a typed spec (threat model, weights, metrics) and a typed info record.
3: samples keep the fraction of eval draws wrong (``clean_wrong``, ``adv_wrong``).
4: samples keep the clip's work id (``work_id``), so intervals can resample works.
An older store is migrated in place when opened for writing (the new columns are NULL: one
draw, work unknown) and read as it is when opened read-only (the missing columns read as
None)."""

_MIGRATIONS: dict[int, list[tuple[str, str]]] = {
    2: [("clean_wrong", "REAL"), ("adv_wrong", "REAL")],
    3: [("work_id", "TEXT")],
}
"""Schema version -> the nullable ``samples`` columns the next version adds."""

_SAMPLE_COLUMNS = ("cell_key", "sample_id", "position", "label", "clean_pred", "clean_correct",
                   "attacked", "adv_pred", "success", "queries", "steps", "metrics",
                   "clean_wrong", "adv_wrong", "work_id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT NOT NULL,
    finished TEXT,
    config_source TEXT NOT NULL,
    config_text TEXT NOT NULL,
    argv TEXT NOT NULL,
    settings TEXT NOT NULL,
    environment TEXT NOT NULL,
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    dataset TEXT NOT NULL, model TEXT NOT NULL, defense TEXT NOT NULL, attack TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    started TEXT, finished TEXT,
    seconds REAL, attack_seconds REAL, peak_memory_mb REAL,
    info TEXT NOT NULL,
    error TEXT, traceback TEXT,
    environment TEXT NOT NULL,
    run_id INTEGER
);
CREATE TABLE IF NOT EXISTS samples (
    cell_key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    sample_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    label INTEGER,
    clean_pred INTEGER,
    clean_correct INTEGER NOT NULL,
    attacked INTEGER NOT NULL,
    adv_pred INTEGER,
    success INTEGER NOT NULL,
    queries INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    clean_wrong REAL,
    adv_wrong REAL,
    work_id TEXT,
    PRIMARY KEY (cell_key, sample_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL,
    ci_low REAL, ci_high REAL,
    PRIMARY KEY (cell_key, name)
);
CREATE TABLE IF NOT EXISTS shards (
    cell_key TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    meta TEXT NOT NULL,
    arrays BLOB NOT NULL,
    PRIMARY KEY (cell_key, lo, hi)
);
CREATE TABLE IF NOT EXISTS audio (
    cell_key TEXT NOT NULL REFERENCES cells(key) ON DELETE CASCADE,
    sample_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (cell_key, sample_id, kind)
);
"""


@dataclass
class MetricValue:
    value: float | None
    ci: tuple[float, float] | None = None


@dataclass
class CellRecord:
    """Everything one finished (or failed) cell produced. Plain data: picklable, JSON-able."""

    spec: CellSpec
    status: str  # ok | failed
    started: str
    finished: str
    seconds: float
    attack_seconds: float = 0.0
    peak_memory_mb: float | None = None
    info: CellInfo = field(default_factory=CellInfo)
    error: str | None = None
    traceback: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    samples: list[SampleRecord] = field(default_factory=list)
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    audio: list[tuple[str, str, str]] = field(default_factory=list)  # (sample_id, kind, path)
    # Clips to keep for listening, {(sample_id, "clean"|"adv"): float32[T]}; written as FLAC
    # by the store, never kept in the database.
    audio_data: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    def comparable(self) -> dict[str, Any]:
        """The record as plain data without what differs between two computations of the same
        cell (wall times, seconds per clip, machine load and CPU count) or between store
        schemas (a clip's work id: the dataset's, fingerprinted in the key, and None in stores
        before schema 4): two runs of one cell (local or ray, whole or sharded) must give equal
        dicts."""
        info = self.info.to_dict()
        info.pop("load_average", None)
        info.pop("cpus", None)
        return {"status": self.status, "error": self.error, "info": info,
                "samples": [{k: v for k, v in vars(s).items() if k != "work_id"}
                            for s in self.samples],
                "metrics": {k: (v.value, v.ci) for k, v in self.metrics.items()
                            if k != "seconds_per_clip"},
                "audio": sorted(self.audio)}

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def names(self) -> tuple[str, str, str, str]:
        """(dataset, model, defense, attack) labels, as tables name them."""
        return self.spec.labels


def _num(x: float | None) -> float | None:
    """SQLite stores NaN as NULL; keep inf (it means something: e.g. an SNR of identity)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


NAN_TEXT = "NaN"
"""How a NaN end of an interval is written to the ``metrics`` table: SQLite would turn a NaN
REAL into NULL, and an interval of two NULLs reads as no interval at all (an SNR of inf has the
interval (NaN, NaN), which must read back as it was written)."""


def _interval_end(x: float) -> float | str:
    """One end of an interval as the ``metrics`` table keeps it (NaN as :data:`NAN_TEXT`)."""
    x = float(x)
    return NAN_TEXT if math.isnan(x) else x


def _json_ok(text: Any, kind: str) -> bool:
    """Whether ``text`` is JSON of ``kind`` (``object`` or ``array``)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return False
    return isinstance(value, dict if kind == "object" else list)


def _real(x: float | str | None) -> float:
    """A real read from the ``metrics`` table: NULL (a NaN value) and :data:`NAN_TEXT` as NaN."""
    return math.nan if x is None or isinstance(x, str) else float(x)


_TABLES = ("meta", "runs", "cells", "samples", "metrics", "audio")
"""The tables every readable store has (``shards`` came later, without a schema version of its
own: a store without it has no unfinished shards)."""

_JSON_COLUMNS = (("runs", "id", {"argv": "array", "settings": "object",
                                 "environment": "object", "plan": "array"}),
                 ("cells", "key", {"spec": "object", "info": "object", "environment": "object"}),
                 ("samples", "cell_key", {"metrics": "object"}))
"""(table, the column that names a row, its JSON columns and the JSON type each holds):
checked when a store is opened read-only."""

_DAMAGE_ERRORS = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR_SHORT_READ")
_DAMAGE_MESSAGES = ("no such table", "no such column")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether an SQLite error means the file is damaged (not: locked, read-only, busy)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_DAMAGE_ERRORS) or any(m in str(exc) for m in _DAMAGE_MESSAGES)


class _StoreCursor(sqlite3.Cursor):
    """A cursor whose SQLite errors that mean damage (raised while a statement runs or while
    its rows are read) become :class:`StoreDamagedError` naming the store: a truncated or
    overwritten file fails in any query, not only in the checks made when it is opened. A full
    disk becomes :class:`StorageFullError` naming it (the transaction is rolled back, so a
    rerun resumes from the last finished cell)."""

    store_path: str = "?"

    @contextmanager
    def _damage(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            cause = storage_full_cause(exc, Path(self.store_path).parent)
            if cause is not None:
                raise StorageFullError(self.store_path, cause) from exc
            if _is_damage(exc):
                raise StoreDamagedError(self.store_path, str(exc)) from exc
            raise

    def execute(self, *args: Any, **kwargs: Any) -> _StoreCursor:
        with self._damage():
            return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> _StoreCursor:
        with self._damage():
            return super().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> _StoreCursor:
        with self._damage():
            return super().executescript(*args, **kwargs)

    def fetchone(self) -> Any:
        with self._damage():
            return super().fetchone()

    def fetchmany(self, *args: Any, **kwargs: Any) -> list[Any]:
        with self._damage():
            return super().fetchmany(*args, **kwargs)

    def fetchall(self) -> list[Any]:
        with self._damage():
            return super().fetchall()

    def __next__(self) -> Any:
        with self._damage():
            return super().__next__()


class _StoreConnection(sqlite3.Connection):
    """A connection whose cursors are :class:`_StoreCursor`; ``store_path`` names the store."""

    store_path: str = "?"

    def cursor(self, factory: Any = None) -> Any:  # the factory is always _StoreCursor
        cur = super().cursor(_StoreCursor)
        cur.store_path = self.store_path
        return cur

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executescript(*args, **kwargs)


def _writable(path: Path) -> bool:
    """Whether SQLite could write beside ``path`` (its ``-shm`` and ``-wal``) and to it."""
    import os

    return os.access(path.parent, os.W_OK) and os.access(path, os.W_OK)


_ROW_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, TypeError, AttributeError)
"""What decoding a malformed row raises (``json.JSONDecodeError`` is a ``ValueError``)."""

_SHARD_ERRORS = (*_ROW_ERRORS, zipfile.BadZipFile, EOFError, OSError)
"""...and decoding a shard's ``.npz`` blob: a cut or overwritten archive (``BadZipFile``,
``EOFError``, ``OSError``: numpy's own errors for a short or garbled array)."""


def flac_bytes(audio: Any, rate: int) -> bytes:
    """``audio`` (float32 ``[T]`` in [-1, 1]) as a 24-bit FLAC file, encoded in memory: written
    with Python's own I/O, a full disk is an ``OSError`` naming ``ENOSPC`` (libsndfile says
    only "System error", or fails to initialise its encoder)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, subtype="PCM_24", format="FLAC")
    return buffer.getvalue()


@contextmanager
def _decoding(path: Path, what: str,
              errors: tuple[type[Exception], ...] = _ROW_ERRORS) -> Iterator[None]:
    """Turn a malformed stored row (bad JSON, a missing or mistyped field) into
    :class:`StoreDamagedError` naming ``what`` (the row)."""
    try:
        yield
    except errors as exc:
        kind = type(exc).__name__
        raise StoreDamagedError(path, f"{what}: {kind}: {exc}") from exc


class Store:
    """Opens (creating if needed) ``<out>/results.sqlite``.

    A store that cannot be read (a damaged file, a missing table, a malformed row, a schema of
    a newer musicbench) raises :class:`~musicbench.errors.StoreDamagedError` naming it."""

    def __init__(self, path: Path, *, readonly: bool = False):
        """``readonly``: open an existing store without writing to it (leaderboards,
        comparisons): a published store must not change by being read. On storage this
        process cannot write (a read-only mount, a folder without write permission) the store
        is opened ``immutable``: SQLite then needs no ``-shm`` or ``-wal`` beside it."""
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            resolved = self.path.resolve()
            wal = resolved.with_name(resolved.name + "-wal")
            pending = wal.exists() and wal.stat().st_size > 0  # writes not yet in the file
            # immutable: no locks, no -shm; it would not see a -wal's writes, so only without
            immutable = not pending and not _writable(resolved)
            query = "mode=ro&immutable=1" if immutable else "mode=ro"
            self.conn = self._connect(f"{resolved.as_uri()}?{query}", uri=True)
            try:
                self._check_schema()
            except sqlite3.OperationalError as exc:
                if not pending or _writable(resolved):
                    raise
                raise StoreDamagedError(
                    self.path, f"{exc}: its {wal.name} holds writes not yet in it, which "
                    "SQLite reads only with a -shm beside it on storage it cannot write",
                    "copy the run folder to writable storage and read the copy") from exc
            self._check_readable()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = self._connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(_SCHEMA)
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        version = self._version(row)
        if version is not None and version in _MIGRATIONS:
            self._migrate(version)
        elif row is None:
            with self.conn:
                self.conn.execute(
                    "INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        self._check_schema()
        self._check_shards()

    def _connect(self, target: str | Path, **kwargs: Any) -> sqlite3.Connection:
        conn = sqlite3.connect(target, timeout=30, factory=_StoreConnection, **kwargs)
        conn.store_path = str(self.path)
        return conn

    def _version(self, row: tuple[Any, ...] | None) -> int | None:
        if row is None:
            return None
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise StoreDamagedError(self.path, f"schema version {row[0]!r} is not a number") \
                from None

    def _migrate(self, version: int) -> None:
        with self.conn:
            while version in _MIGRATIONS:
                present = self._sample_columns()
                for column, kind in _MIGRATIONS[version]:
                    if column not in present:
                        self.conn.execute(f"ALTER TABLE samples ADD COLUMN {column} {kind}")
                version += 1
            self.conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),))

    def _sample_columns(self) -> set[str]:
        return {r[1] for r in self.conn.execute("PRAGMA table_info(samples)")}

    def _check_schema(self) -> None:
        tables = {r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            raise StoreDamagedError(self.path, f"table {', '.join(missing)} missing")
        version = self._version(
            self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone())
        readable = {SCHEMA_VERSION, *_MIGRATIONS} if self.readonly else {SCHEMA_VERSION}
        if version is not None and version > SCHEMA_VERSION:
            raise StoreDamagedError(
                self.path, f"schema {version}, written by a newer musicbench; this one reads "
                f"schema {min(readable)} to {SCHEMA_VERSION}",
                "upgrade musicbench (`pip install -U musicbench`) to read it")
        if version is not None and version not in readable:
            raise RuntimeError(
                f"{self.path} has schema {version}; this musicbench writes schema "
                f"{SCHEMA_VERSION}. Use another --out folder."
            )

    def _check_readable(self) -> None:
        """SQLite's structural check, then every JSON field and every cell's spec and info
        decoded: a damaged store fails here, naming what is wrong, not in a traceback later."""
        problems = [r[0] for r in self.conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise StoreDamagedError(self.path, "; ".join(map(str, problems)))
        for table, name, columns in _JSON_COLUMNS:
            # SQLite's JSON is stricter than Python's (no NaN, no Infinity): it only picks the
            # rows that Python's json then judges
            test = " OR ".join(f"CASE WHEN json_valid({c}) THEN json_type({c}) != '{kind}' "
                               "ELSE 1 END" for c, kind in columns.items())
            for row in self.conn.execute(f"SELECT {name}, {', '.join(columns)} FROM {table} "
                                         f"WHERE {test}"):
                for (column, kind), value in zip(columns.items(), row[1:], strict=True):
                    if not _json_ok(value, kind):
                        raise StoreDamagedError(
                            self.path, f"{table} row {row[0]}: {column} is not a JSON {kind}")
        for key, spec, info in self.conn.execute("SELECT key, spec, info FROM cells"):
            with _decoding(self.path, f"cell {key}"):
                CellSpec.from_dict(json.loads(spec))
                CellInfo.from_dict(json.loads(info))
        self._check_shards()

    def _check_shards(self) -> None:
        """Every kept shard's row decodes (its arrays listed, not read): a run resuming into a
        store with a damaged shard stops here, naming it, rather than failing its cell."""
        from musicbench.shard_record import ShardResult

        if not self._has_shards():
            return
        for key, lo, hi, meta, blob in self.conn.execute(
                "SELECT cell_key, lo, hi, meta, arrays FROM shards"):
            with _decoding(self.path, f"cell {key} shard {lo}-{hi}", _SHARD_ERRORS):
                ShardResult.check_payload(meta, bytes(blob))

    def _has_shards(self) -> bool:
        """Whether the store has the ``shards`` table (a store opened read-only from before
        shards were kept has not)."""
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                 "name='shards'").fetchone() is not None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with storage_full_as_error(self.path), self.conn:  # the commit can find the disk full
            yield self.conn

    # -- runs --------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        started: str,
        config_source: str,
        config_text: str,
        argv: list[str],
        settings: dict[str, Any],
        environment: dict[str, Any],
        plan: list[str],
    ) -> int:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO runs (started, config_source, config_text, argv, settings,"
                " environment, plan) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (started, config_source, config_text, json.dumps(argv), json.dumps(settings),
                 json.dumps(environment), json.dumps(plan)),
            )
            return int(cur.lastrowid)

    def finish_run(self, run_id: int, finished: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE runs SET finished=? WHERE id=?", (finished, run_id))

    def runs(self) -> list[dict[str, Any]]:
        """Every run started on this store, oldest first (``plan``: the cell keys it planned)."""
        keys = ["id", "started", "finished", "config_source", "config_text", "argv",
                "settings", "environment", "plan"]
        out = []
        for row in self.conn.execute(
            "SELECT id, started, finished, config_source, config_text, argv, settings,"
            " environment, plan FROM runs ORDER BY id"
        ):
            run = dict(zip(keys, row, strict=True))
            with _decoding(self.path, f"run {run['id']}"):
                for k in ("argv", "settings", "environment", "plan"):
                    run[k] = json.loads(run[k])
            out.append(run)
        return out

    def latest_run(self) -> dict[str, Any] | None:
        runs = self.runs()
        return runs[-1] if runs else None

    # -- cells -------------------------------------------------------------------------------

    def finished_keys(self, *, clean_only: bool = False) -> set[str]:
        """Keys of cells that completed successfully (a rerun skips them); ``clean_only``
        leaves out cells computed from a modified or unknown source tree."""
        rows = self.conn.execute("SELECT key, environment FROM cells WHERE status='ok'")
        if not clean_only:
            return {r[0] for r in rows}
        out = set()
        for key, env in rows:
            with _decoding(self.path, f"cell {key}"):
                rev = str(json.loads(env).get("git_revision", "unknown"))
            if not (rev.endswith("+dirty") or rev == "unknown"):
                out.add(key)
        return out

    def _write_audio(self, record: CellRecord) -> None:
        if not record.audio_data:
            return
        rate = int(record.info.sample_rate)
        folder = self.path.parent / "audio" / record.key
        record.audio = []
        for (sid, kind), data in sorted(record.audio_data.items()):
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in sid)
            path = folder / f"{safe}-{kind}.flac"
            atomic_write_bytes(path, flac_bytes(data, rate))
            record.audio.append((sid, kind, str(path.relative_to(self.path.parent))))

    def write_cell(self, record: CellRecord, run_id: int | None = None) -> None:
        """Replace any earlier record of this cell, all in one transaction.

        FLAC files of kept clips are written first; a crash between them and the commit leaves
        only files that the rerun overwrites.
        """
        self._write_audio(record)
        d, m, df, a = record.names
        with self._tx() as c:
            c.execute("DELETE FROM cells WHERE key=?", (record.key,))
            if record.status == "ok":  # a failed cell keeps its good shards for the rerun
                c.execute("DELETE FROM shards WHERE cell_key=?", (record.key,))
            c.execute(
                "INSERT INTO cells (key, dataset, model, defense, attack, spec, status, started,"
                " finished, seconds, attack_seconds, peak_memory_mb, info, error, traceback,"
                " environment, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.key, d, m, df, a, json.dumps(record.spec.to_dict(), sort_keys=True),
                 record.status, record.started, record.finished, record.seconds,
                 record.attack_seconds, record.peak_memory_mb,
                 json.dumps(record.info.to_dict()),
                 record.error, record.traceback, json.dumps(record.environment), run_id),
            )
            c.executemany(
                f"INSERT INTO samples ({', '.join(_SAMPLE_COLUMNS)}) VALUES "
                f"({','.join('?' * len(_SAMPLE_COLUMNS))})",
                [(record.key, s.sample_id, s.position, s.label, s.clean_pred,
                  int(s.clean_correct), int(s.attacked), s.adv_pred, int(s.success),
                  int(s.queries), int(s.steps),
                  json.dumps({k: _num(v) for k, v in s.metrics.items()}),
                  s.clean_wrong, s.adv_wrong, s.work_id)
                 for s in record.samples],
            )
            c.executemany(
                "INSERT INTO metrics VALUES (?,?,?,?,?)",
                [(record.key, name, _num(mv.value),
                  _interval_end(mv.ci[0]) if mv.ci else None,
                  _interval_end(mv.ci[1]) if mv.ci else None)
                 for name, mv in record.metrics.items()],
            )
            c.executemany(
                "INSERT INTO audio VALUES (?,?,?,?)",
                [(record.key, sid, kind, path) for sid, kind, path in record.audio],
            )

    # -- shards of unfinished cells ----------------------------------------------------------

    def write_shard(self, cell_key: str, shard: ShardResult) -> None:
        """Keep one finished shard of a cell that is still running (replacing an earlier try)."""
        meta, arrays = shard.to_payload()
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO shards VALUES (?,?,?,?,?)",
                      (cell_key, shard.lo, shard.hi, meta, arrays))

    def shards(self, cell_key: str) -> list[ShardResult]:
        """The kept shards of a cell, by first clip."""
        from musicbench.shard_record import ShardResult

        if not self._has_shards():
            return []  # a store from before shards were kept, opened read-only

        rows = self.conn.execute("SELECT lo, hi, meta, arrays FROM shards WHERE cell_key=? "
                                 "ORDER BY lo", (cell_key,)).fetchall()
        out = []
        for lo, hi, meta, blob in rows:
            with _decoding(self.path, f"cell {cell_key} shard {lo}-{hi}", _SHARD_ERRORS):
                out.append(ShardResult.from_payload(meta, bytes(blob)))
        return out

    def labels(self) -> dict[str, tuple[str, str, str, str]]:
        """Every stored cell's (dataset, model, defense, attack) labels by key, without
        loading samples or metrics."""
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in self.conn.execute(
            "SELECT key, dataset, model, defense, attack FROM cells")}

    def cells(self, keys: list[str] | None = None) -> list[CellRecord]:
        """Cell records (with samples and metrics), in ``keys`` order when given. Only the rows
        of ``keys`` are read then (a survivor cascade asks for a few cells of a large store
        once per cell)."""
        # (the keys as one JSON parameter: no limit on how many, one statement each)
        where, args = ("", ()) if keys is None else (
            " WHERE {} IN (SELECT value FROM json_each(?))", (json.dumps(list(keys)),))
        rows = self.conn.execute(
            "SELECT key, spec, status, started, finished, seconds, attack_seconds,"
            " peak_memory_mb, info, error, traceback, environment FROM cells"
            + where.format("key"), args
        ).fetchall()
        by_key: dict[str, CellRecord] = {}
        for r in rows:
            with _decoding(self.path, f"cell {r[0]}"):
                by_key[r[0]] = CellRecord(
                    spec=CellSpec.from_dict(json.loads(r[1])), status=r[2], started=r[3],
                    finished=r[4], seconds=r[5], attack_seconds=r[6] or 0.0,
                    peak_memory_mb=r[7], info=CellInfo.from_dict(json.loads(r[8])),
                    error=r[9], traceback=r[10], environment=json.loads(r[11]),
                )
        present = self._sample_columns()  # an older store opened read-only lacks the newer
        columns = ", ".join(c if c in present else "NULL" for c in _SAMPLE_COLUMNS)
        for r in self.conn.execute(
            f"SELECT {columns} FROM samples{where.format('cell_key')} ORDER BY cell_key, position",
            args,
        ):
            if r[0] in by_key:
                with _decoding(self.path, f"cell {r[0]} clip {r[1]}"):
                    metrics = {k: (math.nan if v is None else v)
                               for k, v in json.loads(r[11]).items()}
                by_key[r[0]].samples.append(SampleRecord(
                    r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6]), r[7], bool(r[8]), r[9],
                    r[10], metrics, r[12], r[13], r[14]))
        for r in self.conn.execute("SELECT cell_key, name, value, ci_low, ci_high FROM metrics"
                                   + where.format("cell_key"), args):
            if r[0] in by_key:
                value = _real(r[2])
                # two NULLs: no interval (or a NaN one written before NAN_TEXT existed)
                ci = None if r[3] is None and r[4] is None else (_real(r[3]), _real(r[4]))
                by_key[r[0]].metrics[r[1]] = MetricValue(value, ci)
        for r in self.conn.execute("SELECT cell_key, sample_id, kind, path FROM audio"
                                   + where.format("cell_key"), args):
            if r[0] in by_key:
                by_key[r[0]].audio.append((r[1], r[2], r[3]))
        if keys is None:
            return list(by_key.values())
        return [by_key[k] for k in keys if k in by_key]


def snapshot(source: Path, target: Path) -> None:
    """A consistent, self-contained copy of the store at ``source`` (SQLite's online backup,
    so a run may be writing), written to ``target`` atomically, without a WAL beside it."""
    import os
    import tempfile

    from musicbench.files import default_file_mode

    target = Path(target)
    with storage_full_as_error(target):  # a full disk: one line naming the copy
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".tmp")
        os.close(fd)
        tmp = Path(name)  # unique: two snapshots at once do not write one temp file
        try:
            src = sqlite3.connect(source, timeout=30)
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
                src.close()
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, target)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
                if leftover.exists():
                    leftover.unlink()
