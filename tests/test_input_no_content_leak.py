"""Skipped-input reasons are published in the leaderboard header, so no reason and no input
error may quote what a file holds (issue 26: a manifest row naming ``/etc/shadow`` put
``starts with b'root:*:2'`` in the board). Each test writes a file holding a secret and greps
every message the harness makes of it for the secret and its hex."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicbench.audio import BadAudioError, load_audio
from musicbench.errors import ConfigError
from musicbench.interfaces import Context
from musicbench_plugins.datasets.folder import FolderDataset, Params
from musicbench_plugins.datasets.gtzan import GENRES, GTZAN
from musicbench_plugins.datasets.gtzan import Params as GtzanParams

SECRET = "root:S3CRET-hunter2:19000:0:99999:7:::"
# The ways a decoder could quote the secret's first bytes: as text, as a bytes repr, as hex
# ("root" alone is no trace: pytest's temp paths hold it when run as root).
TRACES = ("S3CRET", "root:", repr(SECRET.encode()[:8]), SECRET.encode()[:4].hex())


def _clean(text: str) -> bool:
    return not any(t.lower() in text.lower() for t in TRACES)


def _quotes_no_byte(reason: str) -> bool:
    """No byte of the secret's first four written as a number (mpg123 quotes the ID3 version
    byte in decimal and the flags in hex: 'major version 114 and flags 0x6fu')."""
    head = SECRET.encode()[:4]
    numbers = "|".join([str(b) for b in head] + [f"0x{b:02x}" for b in head])
    return re.search(rf"(?<![\w.])({numbers})", reason, flags=re.IGNORECASE) is None


def _ctx(tmp: Path) -> Context:
    return Context(cache_dir=tmp / "cache", device=torch.device("cpu"))


def _tone(path: Path, seconds: float = 1.2, rate: int = 22_050) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)


@pytest.mark.parametrize("name", ["shadow", "shadow.wav", "shadow.flac", "shadow.mp3",
                                  "shadow.au", "shadow.ogg"])
def test_the_reason_for_a_non_audio_file_quotes_none_of_its_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_text(SECRET + "\n" + SECRET + "\n")
    with pytest.raises(BadAudioError) as info:
        load_audio(path, 16_000)
    exc = info.value
    if name != "shadow.au":  # libsndfile reads a headerless .au as raw data (then: truncated)
        assert exc.kind == "not-audio" and "not an audio file" in exc.reason, exc.reason
    assert _clean(str(exc)) and _clean(exc.reason), exc.reason


@pytest.mark.parametrize("magic", [b"ID3", b"\xff\xfb", b"fLaC", b"RIFF\x10\x00\x00\x00WAVE"])
def test_a_corrupt_header_reason_quotes_none_of_the_bytes_after_it(tmp_path, magic):
    """A known signature followed by the secret: the decoder's own words are kept, the bytes
    it quotes (mpg123 writes the header it choked on in hex) are not."""
    path = tmp_path / ("x.mp3" if magic in (b"ID3", b"\xff\xfb") else "x.wav")
    path.write_bytes(magic + SECRET.encode() * 4)
    with pytest.raises(BadAudioError) as info:
        load_audio(path, 16_000)
    assert _clean(info.value.reason) and _quotes_no_byte(info.value.reason), info.value.reason


def test_a_manifest_row_naming_a_private_file_stores_no_content(tmp_path):
    """The stored skip reason (what the leaderboard header lists) of a row naming a file
    that holds a secret."""
    _tone(tmp_path / "good.wav")
    (tmp_path / "shadow").write_text(SECRET + "\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\ngood.wav,a\nshadow,b\n")
    ds = FolderDataset(Params(manifest=str(manifest), clip_seconds=1.0))
    ds.name = "folder"
    ds.prepare(_ctx(tmp_path))
    reasons = dict(ds.problems())
    assert "not an audio file" in reasons["shadow"], reasons
    stored = (next((tmp_path / "cache").rglob("index.json"))).read_text()
    assert _clean(str(reasons)) and _clean(stored), reasons


@pytest.mark.parametrize("first_line", [SECRET, "S3CRET,pth,label"])
def test_a_manifest_that_is_a_private_file_is_an_error_that_quotes_none_of_it(tmp_path,
                                                                               first_line):
    """A manifest path pointing at a private file: the error says there is no 'path'
    column, and quotes only a column that is close to 'path' (the likely typo)."""
    private = tmp_path / "shadow"
    private.write_text(first_line + "\n" + SECRET + "\n")
    ds = FolderDataset(Params(manifest=str(private), clip_seconds=1.0))
    ds.name = "folder"
    with pytest.raises(ConfigError, match="no 'path' column") as info:
        ds.prepare(_ctx(tmp_path))
    assert _clean(str(info.value)), str(info.value)
    if "pth" in first_line:
        assert "did you mean 'pth'?" in str(info.value)


def test_a_manifest_that_is_not_utf8_is_an_error_without_the_byte(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"path,label\n" + b"\xd7" + SECRET.encode() + b",a\n")
    ds = FolderDataset(Params(manifest=str(path), clip_seconds=1.0))
    ds.name = "folder"
    with pytest.raises(ConfigError, match="line 2") as info:
        ds.prepare(_ctx(tmp_path))
    assert "0xd7" not in str(info.value) and _clean(str(info.value)), str(info.value)


def _gtzan_tree(root: Path) -> Path:
    for g in GENRES:
        _tone(root / "genres" / g / f"{g}.00000.wav")
    (root / "genres" / "jazz" / "jazz.00054.wav").write_text(SECRET + "\n")
    return root


def test_gtzan_split_files_and_tracks_holding_a_secret_publish_none_of_it(tmp_path):
    """A split list that is a private file (every line a 'bad row') and a track that is a
    private file: problems name them by file and line, not by content."""
    root = _gtzan_tree(tmp_path / "gtzan")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train_filtered.txt").write_text(
        "".join(f"{g}/{g}.00000.wav\n" for g in GENRES) + "jazz/jazz.00054.wav\n")
    (lists / "valid_filtered.txt").write_text(SECRET + "\n")
    (lists / "test_filtered.txt").write_text(SECRET.replace(":", "/") + "\n")
    ds = GTZAN(GtzanParams(root=str(root), split_files=str(lists), clip_seconds=1.0))
    ds.name = "gtzan"
    ds.prepare(_ctx(tmp_path))
    problems = dict(ds.problems())
    assert problems["valid_filtered.txt:1"].startswith("expected '<genre>/<file>'"), problems
    assert "test_filtered.txt:1" in problems and "jazz/jazz.00054.wav" in problems
    stored = (next((tmp_path / "cache").rglob("index.json"))).read_text()
    assert _clean(str(problems)), problems
    # the cache key keeps the lists' text (to notice an edit), but not in the problems list
    assert _clean(str(__import__("json").loads(stored)["problems"]))


def test_a_dataset_cached_with_the_old_reasons_is_built_again(tmp_path, monkeypatch):
    """An entry written before reasons were cleaned may hold a private file's first bytes in
    its problems list: it is not reused (the index format is in the cache key), and the
    rebuild is silent (no 'unreadable cache' warning) with the same fingerprint."""
    import warnings

    from musicbench_plugins.datasets import folder as folder_mod

    _tone(tmp_path / "good.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\ngood.wav,a\n")
    builds = []
    real_build = folder_mod.AudioFileDataset._build
    monkeypatch.setattr(folder_mod.AudioFileDataset, "_build",
                        lambda self, *a: builds.append(1) or real_build(self, *a))

    def prepared() -> FolderDataset:
        ds = FolderDataset(Params(manifest=str(manifest), clip_seconds=1.0))
        ds.name = "folder"
        ds.prepare(_ctx(tmp_path))
        return ds

    with monkeypatch.context() as m:
        m.setattr(folder_mod, "_INDEX_FORMAT", 1)
        old = prepared().fingerprint()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepared().fingerprint() == old
    assert len(builds) == 2
    prepared()
    assert len(builds) == 2  # and the new entry is reused
