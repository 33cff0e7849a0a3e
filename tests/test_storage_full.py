"""A full disk (issue 26): every write of a run (store commits, kept audio, shards, dataset
caches, checkpoints, report media, leaderboard output, store copies) ends in one
:class:`StorageFullError` naming the file, saying the disk is full and that rerunning resumes,
instead of ``sqlite3.OperationalError``/``LibsndfileError`` tracebacks; what was finished is
kept, and the rerun after space is freed gives a clean run's leaderboard.

Most tests make the lowest write primitive fail as a full disk does (``os.fsync`` raising
``ENOSPC``, SQLite's own ``SQLITE_FULL`` through ``PRAGMA max_page_count``); the ``slow`` ones
fill a real 2 MiB tmpfs (root only, skipped where mounting is not permitted)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TESTS, cli, run_toy_config
from test_planning import BASE
from typer.testing import CliRunner

import musicbench.plugins
import musicbench.store
from musicbench.checkpoints import load_module, save_module
from musicbench.cli import app
from musicbench.datacache import load_or_build, write_clip_cache
from musicbench.errors import StorageFullError
from musicbench.files import storage_full_cause
from musicbench.shards import ShardResult
from musicbench.store import Store, snapshot

CONFIG = BASE.format(run="", datasets="")  # fgsm and pgd on toy-model, kept clips
REMEDY = "free space there and rerun the same command: it resumes where it stopped"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A finished toy run's folder (two cells, kept clips), never changed: tests copy it."""
    outcome, out = run_toy_config(tmp_path_factory.mktemp("toy"), CONFIG)
    assert not outcome.failed and any((out / "audio").rglob("*.flac"))
    return out


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_on_fsync(monkeypatch) -> None:
    """Every file flushed to disk finds it full (``fsync`` is where a full disk, NFS above
    all, reports the blocks it could not allocate)."""
    monkeypatch.setattr(os, "fsync", _enospc)


def _records(toy_run: Path) -> list:
    store = Store(toy_run / "results.sqlite", readonly=True)
    try:
        return store.cells()
    finally:
        store.close()


def _assert_full(exc: StorageFullError, path: Path) -> None:
    assert exc.path == str(path)
    message = str(exc)
    assert message.startswith(f"cannot write {path}: the disk is full (") and REMEDY in message
    assert "\n" not in message


def _leftovers(folder: Path) -> list[Path]:
    """Temp files and folders an interrupted atomic write would leave."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]


def _full_store(path: Path) -> Store:
    """A store whose file may not grow any more (SQLite's own ``SQLITE_FULL``)."""
    store = Store(path)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    return store


def test_a_cell_written_to_a_full_store_is_a_storage_error_and_nothing_half_written(
        toy_run, tmp_path):
    first, second = _records(toy_run)
    db = tmp_path / "results.sqlite"
    Store(db).write_cell(first)
    store = _full_store(db)
    with pytest.raises(StorageFullError) as caught:
        store.write_cell(second)
    _assert_full(caught.value, db)
    assert "database or disk is full" in caught.value.cause
    assert [r.key for r in store.cells()] == [first.key]  # the finished cell is kept, whole
    store.close()


def test_a_commit_that_finds_the_disk_full_is_a_storage_error(toy_run, tmp_path, monkeypatch):
    """SQLite may report the full disk only when the transaction commits."""
    (record, _) = _records(toy_run)
    db = tmp_path / "results.sqlite"
    store = Store(db)
    commit = musicbench.store._StoreConnection.__exit__

    def full_commit(self, kind, value, trace):
        if kind is None:
            commit(self, RuntimeError, RuntimeError("rolled back"), None)
            raise sqlite3.OperationalError("database or disk is full")
        return commit(self, kind, value, trace)

    monkeypatch.setattr(musicbench.store._StoreConnection, "__exit__", full_commit)
    with pytest.raises(StorageFullError) as caught:
        store.write_cell(record)
    _assert_full(caught.value, db)
    monkeypatch.undo()
    assert store.cells() == []
    store.close()


def test_a_shard_kept_in_a_full_store_is_a_storage_error(tmp_path):
    db = tmp_path / "results.sqlite"
    store = _full_store(db)
    shard = ShardResult(lo=0, hi=3, adv=torch.zeros(3, 40_000))  # more than a page
    with pytest.raises(StorageFullError) as caught:
        store.write_shard("cell", shard)
    _assert_full(caught.value, db)
    assert store.shards("cell") == []
    store.close()


def test_kept_audio_on_a_full_disk_is_a_storage_error_naming_the_clip(toy_run, tmp_path,
                                                                      full_on_fsync):
    record = _records(toy_run)[0]
    record.audio_data = {("toy-000", "adv"): np.zeros(1600, dtype=np.float32)}
    db = tmp_path / "out" / "results.sqlite"
    store = Store(db)
    with pytest.raises(StorageFullError) as caught:
        store.write_cell(record)
    _assert_full(caught.value, tmp_path / "out" / "audio" / record.key / "toy-000-adv.flac")
    assert caught.value.cause == os.strerror(errno.ENOSPC)
    assert store.cells() == [] and _leftovers(tmp_path) == []
    store.close()


def test_a_cache_build_on_a_full_disk_is_a_storage_error_and_leaves_no_temp(tmp_path,
                                                                           monkeypatch):
    entry = tmp_path / "datasets" / "toy-0123"

    def save(file, array, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(np, "save", save)

    def build(path: Path) -> None:
        write_clip_cache(path, np.zeros((2, 8), np.int16), {"format": 1})

    with pytest.raises(StorageFullError) as caught:
        load_or_build(entry, lambda path: None, build, what="toy")
    assert caught.value.path.startswith(str(entry.parent / f".{entry.name}.tmp-"))
    assert caught.value.path.endswith("clips.npy") and REMEDY in str(caught.value)
    assert not entry.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("free", [0, 1 << 30])
def test_a_short_write_is_a_full_disk_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch,
                                                                        free):
    """numpy reports a full disk as ``N requested and M written``, with no errno: the free
    space decides (judged before the half-written folder is removed)."""
    entry = tmp_path / "datasets" / "toy-0123"

    def save(file, array, *args, **kwargs):
        raise OSError("1600000 requested and 1048512 written")

    monkeypatch.setattr(np, "save", save)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 31, (1 << 31) - free, free))
    error = StorageFullError if free == 0 else OSError
    with pytest.raises(error) as caught:
        write_clip_cache(entry, np.zeros((2, 8), np.int16), {"format": 1})
    if free == 0:
        _assert_full(caught.value, entry)
    else:
        assert not isinstance(caught.value, StorageFullError)


def _sqlite_error(name: str, message: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorname = name
    return exc


def test_which_errors_mean_a_full_disk(tmp_path, monkeypatch):
    assert storage_full_cause(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert storage_full_cause(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert storage_full_cause(OSError(errno.EIO, "Input/output error"), tmp_path) is None
    assert storage_full_cause(PermissionError(errno.EACCES, "denied"), tmp_path) is None
    assert storage_full_cause(_sqlite_error("SQLITE_FULL", "database or disk is full"),
                              tmp_path)
    assert storage_full_cause(_sqlite_error("SQLITE_BUSY", "database is locked"),
                              tmp_path) is None
    # SQLite's "disk I/O error" for a -shm it could not grow: full only where nearly no space
    shm = _sqlite_error("SQLITE_IOERR_SHMSIZE", "disk I/O error")
    assert storage_full_cause(shm, tmp_path) is None  # this disk has space
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(1 << 21, 1 << 21, 4096))
    assert "disk I/O error (4096 bytes free)" in storage_full_cause(shm, tmp_path)
    assert storage_full_cause(_sqlite_error("SQLITE_IOERR_READ", "disk I/O error"),
                              tmp_path) is None


def test_a_checkpoint_on_a_full_disk_is_a_storage_error_and_the_old_one_is_kept(
        tmp_path, monkeypatch):
    path = tmp_path / "weights" / "toy.safetensors"
    module = torch.nn.Linear(3, 2)
    save_module(module, path, {"epoch": 1})
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StorageFullError) as caught:
        save_module(torch.nn.Linear(3, 2), path, {"epoch": 2})
    _assert_full(caught.value, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    assert load_module(torch.nn.Linear(3, 2), path, torch.device("cpu")) == {"epoch": 1}


def test_a_store_copy_on_a_full_disk_is_a_storage_error(toy_run, tmp_path, monkeypatch):
    target = tmp_path / "copy" / "results.sqlite"
    connect = sqlite3.connect

    class FullConnection(sqlite3.Connection):
        def backup(self, *args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

    def full_target(path, *args, **kwargs):
        if Path(path).parent == target.parent:
            return connect(path, *args, **kwargs)
        return connect(path, *args, factory=FullConnection, **kwargs)

    monkeypatch.setattr(musicbench.store.sqlite3, "connect", full_target)
    with pytest.raises(StorageFullError) as caught:
        snapshot(toy_run / "results.sqlite", target)
    _assert_full(caught.value, target)
    monkeypatch.undo()
    assert not target.exists() and _leftovers(tmp_path) == []


def _error_line(code: int, stderr: str) -> str:
    """The one error line a failed command printed last (a run prints its progress before
    it), after checking the exit code and that nothing else is an error or a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
    assert "Traceback" not in stderr
    return lines[-1]


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "1000"})


def _main(capsys, monkeypatch, *args: str) -> str:
    """``musicbench ARGS`` as the console script runs it (``main()``: errors raised outside a
    command's own handling become exit 2 there); returns its error line."""
    from musicbench.cli import main

    monkeypatch.setenv("COLUMNS", "1000")  # rich folds at 80 columns when not on a terminal
    monkeypatch.setattr("sys.argv", ["musicbench", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        main()
    return _error_line(caught.value.code, capsys.readouterr().err)


def test_leaderboard_and_report_on_a_full_disk_are_one_line_exit_2(toy_run, tmp_path,
                                                                  toy_plugins, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    board = tmp_path / "board.md"
    board.write_text("the old leaderboard\n")
    report = tmp_path / "report"
    monkeypatch.setattr(os, "fsync", _enospc)
    line = _main(capsys, monkeypatch, "leaderboard", str(toy_run), "-o", str(board),
                 "--allow-dirty")
    assert line == f"error: cannot write {board}: the disk is full (No space left on device); " \
                   f"{REMEDY} (finished work is kept)"
    assert board.read_text() == "the old leaderboard\n"
    line = _main(capsys, monkeypatch, "report", str(toy_run), "-o", str(report))
    assert line.startswith(f"error: cannot write {report}{os.sep}") and REMEDY in line
    assert _leftovers(tmp_path) == []


def _comparable(board_json: str) -> list[dict]:
    rows = json.loads(board_json)
    for row in rows:  # wall time, and the note on the machine's load beside it, may differ
        row.pop("seconds_per_clip")
        row["flags"] = [f for f in row["flags"] if not f.startswith("timed on a loaded")]
    return rows


def _board(folder: Path) -> list[dict]:
    result = _invoke("leaderboard", str(folder), "--format", "json")
    assert result.exit_code == 0, result.output
    return _comparable(result.stdout)


def test_a_run_that_fills_the_disk_is_one_line_exit_2_and_the_rerun_finishes(
        toy_run, tmp_path, toy_plugins, monkeypatch):
    """The first kept clip finds the disk full: the run stops, one line, exit 2; the rerun
    with space gives an uninterrupted run's leaderboard."""
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    with monkeypatch.context() as full:
        full.setattr(os, "fsync", _enospc)
        result = _invoke("run", str(config), "--out", str(out))
        assert isinstance(result.exception, SystemExit), result.exception
        line = _error_line(result.exit_code, result.stderr)
    assert line.startswith(f"error: cannot write {out / 'audio'}{os.sep}") and REMEDY in line
    assert _leftovers(out) == []
    rerun = _invoke("run", str(config), "--out", str(out))
    assert rerun.exit_code == 0, rerun.output
    assert _board(out) == _board(toy_run)


# -- a real full disk --------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root, where mounting is permitted; skipped elsewhere)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file that leaves ``leave`` bytes of ``disk`` free."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))
    return filler


def _cli_env(site: Path) -> dict[str, str]:
    """conftest's ``cli`` environment, but 1000 columns: rich folds a long error line at 200
    (musicbench.cli prints only a damaged store's error unfolded)."""
    paths = [str(site), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, COLUMNS="1000", PYTHONPATH=os.pathsep.join(paths).rstrip(os.pathsep))


@pytest.mark.slow
@pytest.mark.parametrize("leave", [16 << 10, 256 << 10, 300 << 10])
def test_a_run_on_a_really_full_disk_is_one_line_exit_2_and_resumes(tmp_path, toy_site,
                                                                   tiny_disk, leave):
    """16 KiB: the store cannot even grow its ``-shm`` (SQLite's "disk I/O error"); 256 and
    300 KiB: a kept clip, or the store's commit, of the second cell finds it full."""
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    clean, out = tmp_path / "clean", tiny_disk / "out"
    assert cli("run", str(config), "--out", str(clean), sites=(toy_site,)).returncode == 0
    filler = _fill(tiny_disk, leave)
    full = subprocess.run([sys.executable, "-c", "from musicbench.cli import main; main()",
                           "run", str(config), "--out", str(out)], capture_output=True,
                          text=True, env=_cli_env(toy_site), timeout=600, check=False)
    line = _error_line(full.returncode, full.stderr)
    assert line.startswith(f"error: cannot write {out}{os.sep}"), full.stderr
    assert "the disk is full" in line and REMEDY in line
    assert _leftovers(tiny_disk) == []
    filler.unlink()
    rerun = cli("run", str(config), "--out", str(out), sites=(toy_site,))
    assert rerun.returncode == 0, rerun.stderr
    resumed, uninterrupted = (
        cli("leaderboard", str(folder), "--format", "json", sites=(toy_site,)).stdout
        for folder in (out, clean))
    assert _comparable(resumed) == _comparable(uninterrupted)


@pytest.mark.slow
def test_a_cache_too_big_for_a_really_full_disk_is_a_storage_error(tiny_disk):
    entry = tiny_disk / "datasets" / "toy-0123"
    with pytest.raises(StorageFullError) as caught:
        write_clip_cache(entry, np.zeros((40, 40_000), np.int16), {"format": 1})  # 3.2 MB
    _assert_full(caught.value, entry)
    assert not entry.exists() and list(entry.parent.iterdir()) == []
