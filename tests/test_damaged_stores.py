"""Damaged, read-only and newer stores (issue 26): `leaderboard`, `verify`, `merge` and `report`
on a store cut short, with flipped bytes, a dropped table, a newer schema or a malformed row
end in one line naming the store, what is wrong and what to do (exit 2), never a traceback;
a run folder on storage this process cannot write is read without a ``-shm`` or ``-wal``."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_toy_config
from test_planning import BASE
from typer.testing import CliRunner

import musicbench.plugins
from musicbench.cli import app
from musicbench.errors import StoreDamagedError
from musicbench.shards import ShardResult
from musicbench.store import SampleRecord, Store

CONFIG = BASE.format(run="", datasets="")  # fgsm and pgd on toy-model


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A finished toy run's folder, never damaged itself: tests damage copies."""
    outcome, out = run_toy_config(tmp_path_factory.mktemp("toy"), CONFIG)
    assert not outcome.failed
    return out


def _sql(statement: str) -> Callable[[Path], None]:
    def damage(db: Path) -> None:
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(statement)
        conn.close()
    return damage


def _truncate(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _flip(db: Path) -> None:
    """Every b-tree page header after the first page inverted (the bytes a disk error or a
    stray write would hit)."""
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):
        data[start:start + 12] = bytes(b ^ 0xFF for b in data[start:start + 12])
    db.write_bytes(bytes(data))


def _good_shard() -> tuple[str, bytes]:
    """The payload of a sound shard of one clip (what a sharded run keeps until its cell is
    written)."""
    return ShardResult(lo=0, hi=3, samples=[SampleRecord("toy-000", 0, 0, 0, True, True, 1,
                                                         True, 1, 1)]).to_payload()


def _shard(meta: str | None = None, arrays: bytes | None = None) -> Callable[[Path], None]:
    """A kept shard of the first cell whose meta or arrays are replaced."""
    def damage(db: Path) -> None:
        good_meta, good_arrays = _good_shard()
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("INSERT INTO shards VALUES ((SELECT min(key) FROM cells), 0, 3, ?, ?)",
                         (good_meta if meta is None else meta,
                          good_arrays if arrays is None else arrays))
        conn.close()
    return damage


def _shard_without_audio_array() -> bytes:
    """An archive that lists every tensor but not the kept clip its meta names."""
    shard = ShardResult(lo=0, hi=3)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: getattr(shard, name).numpy() for name in shard._TENSORS})
    return buffer.getvalue()


_KEPT_CLIP_META = json.dumps(json.loads(_good_shard()[0]) | {"audio_keys": [["toy-000", "adv"]]})

DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "flipped bytes": _flip,
    "dropped table": _sql("DROP TABLE samples"),
    "schema 99": _sql("UPDATE meta SET value = '99' WHERE key = 'schema'"),
    "corrupted JSON": _sql("UPDATE cells SET info = '{\"seconds\": 1' "
                           "WHERE key = (SELECT min(key) FROM cells)"),
    "spec without fields": _sql("UPDATE cells SET spec = '{}' "
                                "WHERE key = (SELECT min(key) FROM cells)"),
    "clip metrics not a table": _sql("UPDATE samples SET metrics = '[1, 2]' "
                                     "WHERE rowid = (SELECT min(rowid) FROM samples)"),
    "shard meta cut short": _shard(meta=_good_shard()[0][:40]),
    "shard meta without samples": _shard(meta='{"lo": 0, "hi": 3}'),
    "shard meta a list": _shard(meta="[1, 2]"),
    "shard arrays not an archive": _shard(arrays=b"\x00garbage" * 10),
    "shard arrays cut short": _shard(arrays=_good_shard()[1][:100]),
    "shard kept clip missing": _shard(meta=_KEPT_CLIP_META, arrays=_shard_without_audio_array()),
}
SHARD_DAMAGES = [name for name in DAMAGES if name.startswith("shard ")]


def _damaged_copy(toy_run: Path, tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(toy_run, folder)
    # every write is in the file itself (a reader may have left an empty -wal and a -shm)
    wal = folder / "results.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    DAMAGES[damage](folder / "results.sqlite")
    return folder


def _command(name: str, folder: Path, tmp_path: Path) -> list[str]:
    return {"leaderboard": ["leaderboard", str(folder)],
            "verify": ["verify", str(folder)],
            "merge": ["merge", str(tmp_path / "merged"), str(folder)],
            "report": ["report", str(folder), "-o", str(tmp_path / "report")]}[name]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_store_is_one_line_naming_it_with_exit_2(toy_run, tmp_path, toy_plugins,
                                                          monkeypatch, damage):
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    folder = _damaged_copy(toy_run, tmp_path, damage)
    db = folder / "results.sqlite"
    for command in ("leaderboard", "verify", "merge", "report"):
        result = CliRunner().invoke(app, _command(command, folder, tmp_path))
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, (command, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (command, result.exception)
        assert len(lines) == 1, (command, result.stderr)
        if damage == "schema 99":
            assert f"store {db} " in lines[0] and "written by a newer musicbench" in lines[0]
            assert "upgrade musicbench" in lines[0]
        else:
            assert lines[0].startswith(f"error: store {db} is damaged ("), (command, lines)
            assert "restore it from a copy" in lines[0]
        assert not (tmp_path / "merged" / "results.sqlite").exists()


@pytest.mark.parametrize("damage", ["corrupted JSON", "spec without fields", "dropped table"])
def test_the_error_names_what_is_damaged(toy_run, tmp_path, damage):
    folder = _damaged_copy(toy_run, tmp_path, damage)
    with pytest.raises(StoreDamagedError) as caught:
        Store(folder / "results.sqlite", readonly=True)
    what = {"corrupted JSON": "info is not a JSON object", "spec without fields": "KeyError",
            "dropped table": "table samples missing"}[damage]
    assert what in caught.value.what and caught.value.path == str(folder / "results.sqlite")


def test_a_damaged_store_is_named_when_a_run_resumes_into_it(toy_run, tmp_path):
    folder = _damaged_copy(toy_run, tmp_path, "truncated")
    with pytest.raises(StoreDamagedError, match="is damaged"):
        Store(folder / "results.sqlite")


def test_a_run_folder_on_read_only_storage_renders_its_leaderboard(toy_run, tmp_path,
                                                                   monkeypatch):
    """Root ignores permission bits, so storage this process cannot write is what
    ``os.access`` says: the store must then be opened without a ``-shm`` or ``-wal``."""
    folder = tmp_path / "readonly"
    shutil.copytree(toy_run, folder)
    sqlite3.connect(folder / "results.sqlite").execute("PRAGMA journal_mode").fetchone()
    writable = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and str(folder) in os.fspath(path):
            return False
        return writable(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    expected = CliRunner().invoke(app, ["leaderboard", str(toy_run)])
    before = sorted(p.name for p in folder.iterdir())
    result = CliRunner().invoke(app, ["leaderboard", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout == expected.stdout
    assert sorted(p.name for p in folder.iterdir()) == before  # no -shm, no -wal written


def test_writes_still_in_the_wal_are_read_on_read_only_storage(toy_run, tmp_path, monkeypatch):
    """A store whose writer is still open (or was killed) keeps cells in its ``-wal``: read-
    only storage must not open it ``immutable``, which would not see them."""
    folder = tmp_path / "live"
    shutil.copytree(toy_run, folder)
    writer = sqlite3.connect(folder / "results.sqlite")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    with writer:
        writer.execute("UPDATE cells SET model = 'written-to-the-wal'")
    assert (folder / "results.sqlite-wal").stat().st_size > 0
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if mode & os.W_OK
                        and str(folder) in os.fspath(path) else writable(path, mode, *a, **k))
    try:
        store = Store(folder / "results.sqlite", readonly=True)
        assert {labels[1] for labels in store.labels().values()} == {"written-to-the-wal"}
        store.close()
    finally:
        writer.close()


def test_every_published_store_opens_read_only():
    """The checks made on opening find nothing wrong in a sound store of any schema, including
    those written before the ``shards`` table existed."""
    published = sorted((Path(__file__).parents[1] / "leaderboards" / "runs").glob("*.sqlite"))
    assert published
    for db in published:
        store = Store(db, readonly=True)
        try:
            assert store.cells()
        finally:
            store.close()


@pytest.mark.parametrize("damage", SHARD_DAMAGES)
def test_a_damaged_shard_is_named_when_its_store_is_read(toy_run, tmp_path, damage):
    """``Store.shards`` (what a resuming run reads) names the shard row, whether the damage
    was there when the store was opened or came after."""
    folder = _damaged_copy(toy_run, tmp_path, damage)
    db = folder / "results.sqlite"
    for readonly in (True, False):
        with pytest.raises(StoreDamagedError, match=r"shard 0-3") as caught:
            Store(db, readonly=readonly)
        assert caught.value.path == str(db)
    clean = tmp_path / "clean"
    shutil.copytree(toy_run, clean)
    store = Store(clean / "results.sqlite")  # sound when opened, damaged while open
    try:
        DAMAGES[damage](clean / "results.sqlite")
        key = min(store.labels())
        with pytest.raises(StoreDamagedError, match=rf"cell {key} shard 0-3: "):
            store.shards(key)
    finally:
        store.close()


def test_a_sound_shard_opens_and_reads_back(toy_run, tmp_path):
    folder = tmp_path / "sound"
    shutil.copytree(toy_run, folder)
    _shard()(folder / "results.sqlite")
    store = Store(folder / "results.sqlite")
    try:
        (shard,) = store.shards(min(store.labels()))
        assert (shard.lo, shard.hi, shard.samples[0].sample_id) == (0, 3, "toy-000")
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["shard meta cut short", "shard arrays not an archive"])
def test_a_run_resuming_into_a_store_with_a_damaged_shard_is_one_line_exit_2(
        toy_run, tmp_path, toy_plugins, monkeypatch, damage):
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    folder = _damaged_copy(toy_run, tmp_path, damage)
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(folder)],
                                env={"COLUMNS": "1000"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1, result.stderr
    db = folder / "results.sqlite"
    assert lines[0].startswith(f"error: store {db} is damaged (cell "), lines
    assert "shard 0-3" in lines[0]
