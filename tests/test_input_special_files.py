"""Manifests and split lists that are no ordinary small file (issue 26, items 2 and 3): a FIFO
hung the run, ``/dev/zero`` filled the memory, a folder or a huge file gave no clear reason;
each is now a :class:`ConfigError` saying what the path is. And a manifest is read as CSV
reads it: a quoted file name may hold a line break, and messages name the line a row starts
on."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicbench.errors import ConfigError
from musicbench.interfaces import Context
from musicbench_plugins.datasets import folder as folder_mod
from musicbench_plugins.datasets import gtzan as gtzan_mod
from musicbench_plugins.datasets.folder import FolderDataset, Params
from musicbench_plugins.datasets.gtzan import GENRES, GTZAN

# What the message says for each kind of path (bench/files.py names them so).
KINDS = {"fifo": "is a named pipe", "device": "is a character device", "folder": "is a folder",
         "huge": "bytes; "}
DEADLINE_S = 60.0  # far beyond the milliseconds these take; only a hang reaches it


def _ctx(tmp: Path) -> Context:
    return Context(cache_dir=tmp / "cache", device=torch.device("cpu"))


def _tone(path: Path, hz: float = 330.0, seconds: float = 1.2, rate: int = 22_050) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)


def _special(path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` a FIFO, a link to /dev/zero, a folder, or a file over the (lowered)
    size limits of manifests and split lists."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        monkeypatch.setattr(folder_mod, "MAX_MANIFEST_BYTES", 1000)
        monkeypatch.setattr(gtzan_mod, "MAX_SPLIT_FILE_BYTES", 1000)
        path.write_text("path,label\n" + "a.wav,x\n" * 200)


def _raises_without_hanging(call: Callable[[], object], fifo: Path) -> BaseException | None:
    """Run ``call`` in a thread; if it is still blocked at the deadline (the old code, stuck
    opening the FIFO) open the FIFO's write end so it returns, and fail."""
    caught: list[BaseException | None] = [None]

    def body() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            caught[0] = exc

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(DEADLINE_S)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(DEADLINE_S)
        pytest.fail(f"reading {fifo} blocked")
    return caught[0]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_manifest_that_is_no_regular_small_file_is_a_config_error(tmp_path, monkeypatch,
                                                                     kind):
    manifest = tmp_path / "m.csv"
    _special(manifest, kind, monkeypatch)
    ds = FolderDataset(Params(manifest=str(manifest), clip_seconds=1.0))
    ds.name = "folder"
    exc = _raises_without_hanging(lambda: ds.prepare(_ctx(tmp_path)), manifest)
    assert isinstance(exc, ConfigError), repr(exc)
    assert KINDS[kind] in str(exc) and "[datasets.folder] key 'manifest'" in str(exc), str(exc)


@pytest.fixture(scope="module")
def genres(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gtzan")
    for i, g in enumerate(GENRES):
        _tone(root / "genres" / g / f"{g}.00000.wav", hz=200 + 40 * i)
    return root


@pytest.mark.parametrize("which", ["train", "test"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_gtzan_split_file_that_is_no_regular_small_file_is_a_config_error(
        genres, tmp_path, monkeypatch, kind, which):
    lists = tmp_path / "lists"
    lists.mkdir()
    for split in ("train", "valid", "test"):
        if split != which:
            (lists / f"{split}_filtered.txt").write_text("blues/blues.00000.wav\n"
                                                         if split == "train" else "")
    target = lists / f"{which}_filtered.txt"
    _special(target, kind, monkeypatch)
    ds = GTZAN(gtzan_mod.Params(root=str(genres), split_files=str(lists), clip_seconds=1.0))
    ds.name = "gtzan"
    exc = _raises_without_hanging(lambda: ds.prepare(_ctx(tmp_path)), target)
    assert isinstance(exc, ConfigError), repr(exc)
    text = str(exc)
    assert KINDS[kind] in text and "[datasets.gtzan] key 'split_files'" in text, text
    assert f"{which}_filtered.txt" in text, text


def test_a_quoted_line_break_in_a_file_name_loads_that_clip(tmp_path):
    """CSV allows a line break inside a quoted field; the file with that name is used (it was
    read as 'ab.wav', a missing file). A name with a character str.splitlines breaks at
    (form feed, U+2028) needs no quotes at all."""
    names = ["a\nb.wav", "c\r\nd.wav", "e\x0cf.wav", "g\u2028h.wav"]
    for i, name in enumerate(names):
        _tone(tmp_path / name, hz=300 + 50 * i)
    rows = [f'"{names[0]}",x,test', f'"{names[1]}",y,test', f"{names[2]},x,test",
            f"{names[3]},y,test"]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(("path,label,split\n" + "\n".join(rows) + "\n").encode())
    ds = FolderDataset(Params(manifest=str(manifest), clip_seconds=1.0))
    ds.name = "folder"
    ds.prepare(_ctx(tmp_path))
    assert ds.problems() == []
    assert sorted(e.id for e in ds.examples("test")) == sorted(names)


def test_an_error_after_a_row_spanning_lines_names_the_line_it_is_on(tmp_path):
    _tone(tmp_path / "a\nb.wav")
    _tone(tmp_path / "c.wav", hz=500)
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,label,split\n"a\nb.wav",x,test\n\nc.wav,y,tset\n'
                        '"missing\n\nfile.wav",y,test\nc.wav,y,test\n')
    ds = FolderDataset(Params(manifest=str(manifest), clip_seconds=1.0))
    ds.name = "folder"
    ds.prepare(_ctx(tmp_path))
    reasons = dict(ds.problems())
    assert reasons["c.wav"].startswith("line 5: unknown split 'tset'"), reasons
    assert reasons["missing\n\nfile.wav"].startswith("line 6: no such file"), reasons
    assert [(e.id, e.meta["line"]) for e in ds.examples("test")] == [("a\nb.wav", 2),
                                                                     ("c.wav", 9)]
