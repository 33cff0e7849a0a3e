"""The store keeps each clip's work id (schema 4), and older stores still open."""

from __future__ import annotations

import sqlite3

import pytest

from musicbench.cells import CELL_KINDS, CellRun, CellSpec, ComponentRef
from musicbench.interfaces.attack import ThreatModel
from musicbench.store import SCHEMA_VERSION, CellRecord, SampleRecord, Store


def _record(works: list[str | None]) -> CellRecord:
    refs = {kind: ComponentRef(kind, kind, kind, "1", {}, "test") for kind in CELL_KINDS}
    spec = CellSpec(**refs, run=CellRun(0, len(works), 8, 0, "none", ()),
                    threat="white-box", threat_model=ThreatModel("unbounded"), musicbench="0")
    samples = [SampleRecord(f"c{i}", i, 0, 0, True, True, 1, True, 1, 1, work_id=w)
               for i, w in enumerate(works)]
    return CellRecord(spec, "ok", "", "", 1.0, samples=samples)


def _write(path, record: CellRecord) -> None:
    store = Store(path)
    store.write_cell(record)
    store.close()


def _read(path, **kwargs) -> list[str | None]:
    store = Store(path, **kwargs)
    try:
        (record,) = store.cells()
        return [s.work_id for s in record.samples]
    finally:
        store.close()


def _make_old(path, version: int) -> None:
    """Make a store look written by ``version``: drop the columns added since."""
    dropped = {3: ["work_id"], 2: ["work_id", "clean_wrong", "adv_wrong"]}[version]
    with sqlite3.connect(path) as conn:
        for column in dropped:
            conn.execute(f"ALTER TABLE samples DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),))
    conn.close()


def test_work_ids_round_trip_through_the_store(tmp_path):
    works = ["bach-1", "bach-1", None, "ives-3"]
    _write(tmp_path / "r.sqlite", _record(works))
    assert _read(tmp_path / "r.sqlite") == works
    assert _read(tmp_path / "r.sqlite", readonly=True) == works


@pytest.mark.parametrize("version", [2, 3])
def test_an_older_store_reads_work_ids_as_none_and_is_migrated_for_writing(tmp_path, version):
    path = tmp_path / "r.sqlite"
    _write(path, _record(["w0", "w0", "w1"]))
    _make_old(path, version)
    assert _read(path, readonly=True) == [None, None, None]  # read as it is, not changed
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(
            version)
    conn.close()
    assert _read(path) == [None, None, None]  # opened for writing: migrated in place
    store = Store(path)
    columns = [r[1] for r in store.conn.execute("PRAGMA table_info(samples)")]
    schema = store.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
    store.write_cell(_record(["w0", None, "w1"]))
    store.close()
    assert "work_id" in columns and schema == str(SCHEMA_VERSION) == "4"
    assert _read(path) == ["w0", None, "w1"]


def test_a_record_without_work_ids_compares_equal_to_one_with_them():
    # `musicbench verify` recomputes a cell of an older store: its clips now carry work ids
    old, fresh = _record([None, None]), _record(["w0", "w0"])
    assert old.comparable() == fresh.comparable()
