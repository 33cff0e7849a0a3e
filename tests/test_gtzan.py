"""``gtzan`` on a small GTZAN-layout folder made here: good tracks are used, every broken one is
listed with its reason, split files are honoured, the fingerprint is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicbench.errors import ConfigError
from musicbench.interfaces import Context
from musicbench_plugins.datasets import folder as folder_mod
from musicbench_plugins.datasets.gtzan import GENRES, GTZAN, Params

RATE = 22_050
SPLITS = ("train", "valid", "test")


def _ctx(cache_dir: Path) -> Context:
    return Context(cache_dir=cache_dir, device=torch.device("cpu"))


def _tone(genre_i: int, k: int, seconds: float = 1.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * (200 + 40 * genre_i + 7 * k) * t)).astype(np.float32)


def _layout(root: Path) -> dict[str, str]:
    """Three good tracks per genre (blues.00001 as .au), plus broken files; returns
    ``{source: expected reason fragment}`` of the broken ones."""
    genres = root / "genres"
    for gi, g in enumerate(GENRES):
        (genres / g).mkdir(parents=True)
        for k in range(3):
            fmt = "AU" if (g, k) == ("blues", 1) else "WAV"
            ext = ".au" if fmt == "AU" else ".wav"
            sf.write(str(genres / g / f"{g}.{k:05d}{ext}"), _tone(gi, k), RATE, format=fmt,
                     subtype="PCM_16")
    (genres / "blues" / "blues.mf").write_text("a marsyas list, not a track\n")
    # Broken files.
    (genres / "jazz" / "jazz.00054.wav").write_text("not audio at all\n")
    sf.write(str(genres / "rock" / "rock.00050.wav"), _tone(9, 50, seconds=0.5), RATE)
    data = (genres / "pop" / "pop.00000.wav").read_bytes()
    (genres / "pop" / "pop.00051.wav").write_bytes(data[: len(data) // 2])
    nan = _tone(3, 52)
    nan[100] = np.nan
    sf.write(str(genres / "disco" / "disco.00052.wav"), nan, RATE, subtype="FLOAT")
    sf.write(str(genres / "metal" / "metal.00000.au"), _tone(6, 0), RATE, format="AU",
             subtype="PCM_16")  # same track as metal.00000.wav
    return {
        "jazz/jazz.00054.wav": "not an audio file",
        "rock/rock.00050.wav": "too short",
        "pop/pop.00051.wav": "truncated",
        "disco/disco.00052.wav": "non-finite",
        "metal/metal.00000.au": "same track as metal/metal.00000.wav",
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("gtzan")
    return root, _layout(root)


def _make(root: Path, **kw) -> GTZAN:
    ds = GTZAN(Params(root=str(root), clip_seconds=1.0, **kw))
    ds.name = "gtzan"
    return ds


def _all(ds: GTZAN):
    return [e for s in SPLITS for e in ds.examples(s)]


def test_good_tracks_are_used_and_every_broken_one_is_listed(tree, tmp_path: Path) -> None:
    root, broken = tree
    ds = _make(root)
    ds.prepare(_ctx(tmp_path))
    examples = _all(ds)
    assert sorted(e.id for e in examples) == sorted(
        f"{g}/{g}.{k:05d}" for g in GENRES for k in range(3))
    assert ds.labels == GENRES
    for e in examples:
        assert GENRES[e.label] == e.id.split("/")[0] == e.meta["genre"]
        assert e.audio.dtype == torch.float32 and e.audio.shape == (16_000,)
        assert e.work_id is None
    blues_au = next(e for e in examples if e.id == "blues/blues.00001")
    assert blues_au.meta["file"] == "blues/blues.00001.au"
    problems = dict(ds.problems())
    assert set(problems) == set(broken)
    for source, fragment in broken.items():
        assert fragment in problems[source], (source, problems[source])
    assert sum(ds.problem_counts().values()) == len(broken)


def test_without_split_files_the_split_is_seeded_stratified_by_file(tree, tmp_path) -> None:
    root, broken = tree
    ds = _make(root)
    ds.prepare(_ctx(tmp_path))
    clean_genres = {GENRES.index(g) for g in GENRES} - {
        GENRES.index(src.split("/")[0]) for src in broken}
    for s in SPLITS:  # genres with 3 good tracks (and no broken one): one in each split
        labels = [e.label for e in ds.examples(s)]
        assert all(labels.count(g) == 1 for g in clean_genres)
    other = _make(root, seed=1)
    other.prepare(_ctx(tmp_path))
    assert [e.id for e in ds.examples("test")] != [e.id for e in other.examples("test")]


def test_repairing_a_broken_file_moves_no_other_file_to_another_split(tree, tmp_path) -> None:
    import shutil

    root, _ = tree
    ds = _make(root)
    ds.prepare(_ctx(tmp_path))
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    sf.write(str(copy / "genres" / "jazz" / "jazz.00054.wav"), _tone(5, 54), RATE)
    fixed = _make(copy)
    fixed.prepare(_ctx(tmp_path))
    split_of = {e.id: s for s in SPLITS for e in ds.examples(s)}
    now = {e.id: s for s in SPLITS for e in fixed.examples(s)}
    assert now.pop("jazz/jazz.00054") in SPLITS
    assert now == split_of


def test_split_files_are_honoured(tree, tmp_path: Path) -> None:
    root, _ = tree
    lists = tmp_path / "splits"
    lists.mkdir()
    (lists / "train_filtered.txt").write_text(
        "# fault-filtered\nblues/blues.00000.wav\n./genres/blues/blues.00001.wav\n"
        "rock\\rock.00000.wav\n\n")
    (lists / "valid_filtered.txt").write_text("jazz/jazz.00000.au\n")
    (lists / "test_filtered.txt").write_text("pop/pop.00002.wav\nclassical/classical.00099.wav\n"
                                             "polka/polka.00000.wav\n")
    ds = _make(root, split_files=str(lists))
    ds.prepare(_ctx(tmp_path / "cache"))
    ids = {s: [e.id for e in ds.examples(s)] for s in SPLITS}
    assert ids == {"train": ["blues/blues.00000", "blues/blues.00001", "rock/rock.00000"],
                   "valid": ["jazz/jazz.00000"], "test": ["pop/pop.00002"]}
    problems = dict(ds.problems())
    assert "not found" in problems["classical/classical.00099.wav"]
    # named by file and line: a line that is no track may be anything (issue 26)
    assert "genre one of" in problems["test_filtered.txt:3"]
    assert ds.info["unlisted"] == 30 + 4 - 5  # tracks on disk (broken ones too) not listed


def test_a_track_listed_twice_is_a_config_error(tree, tmp_path: Path) -> None:
    root, _ = tree
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}_filtered.txt").write_text("blues/blues.00000.wav\n")
    with pytest.raises(ConfigError, match="twice"):
        _make(root, split_files=str(tmp_path)).prepare(_ctx(tmp_path))


def test_fingerprint_is_deterministic_and_the_cache_is_used(tree, tmp_path, monkeypatch) -> None:
    root, _ = tree
    a = _make(root)
    a.prepare(_ctx(tmp_path / "one"))
    b = _make(root)
    b.prepare(_ctx(tmp_path / "two"))
    assert a.fingerprint() == b.fingerprint()

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded although a cache exists")

    monkeypatch.setattr(folder_mod, "load_audio", must_not_decode)
    c = _make(root)
    c.prepare(_ctx(tmp_path / "one"))
    assert c.fingerprint() == a.fingerprint()
    assert c.problems() == a.problems()
    assert torch.equal(c.examples("test")[0].audio, a.examples("test")[0].audio)


def test_a_changed_file_is_decoded_again(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _layout(root)
    a = _make(root)
    a.prepare(_ctx(tmp_path))
    sf.write(str(root / "genres" / "blues" / "blues.00000.wav"), _tone(0, 9, seconds=1.4), RATE,
             subtype="PCM_16")
    b = _make(root)
    b.prepare(_ctx(tmp_path))
    assert b.fingerprint() != a.fingerprint()


def test_missing_root_and_missing_parameter_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no GTZAN genre folders"):
        _make(tmp_path).prepare(_ctx(tmp_path))
    with pytest.raises(ValueError, match="root is required"):
        Params()
