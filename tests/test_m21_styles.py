"""The embedded ``m21-styles`` dataset: split by work, deterministic, cached, well-formed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from musicbench.api import write_clip_cache
from musicbench.interfaces import Context
from musicbench_plugins.datasets import m21_corpus, m21_styles, synth
from musicbench_plugins.datasets.m21_styles import M21Styles, Params

TINY = Params(works_per_class=3, clips_per_work=1, clip_seconds=2.0)


def _ctx(cache_dir: Path) -> Context:
    return Context(cache_dir=cache_dir, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[M21Styles, Path]:
    cache = tmp_path_factory.mktemp("m21-serial")
    ds = M21Styles(TINY)
    ds.workers = 1
    ds.prepare(_ctx(cache))
    return ds, cache


def _all(ds: M21Styles):
    return [ex for split in m21_styles.SPLITS for ex in ds.examples(split)]


def test_no_work_is_in_two_splits(built) -> None:
    ds, _ = built
    works = {s: {ex.work_id for ex in ds.examples(s)} for s in m21_styles.SPLITS}
    assert not works["train"] & works["valid"]
    assert not works["train"] & works["test"]
    assert not works["valid"] & works["test"]


def test_every_label_is_present_in_every_split(built) -> None:
    ds, _ = built
    assert ds.labels == m21_corpus.CLASSES
    for split in m21_styles.SPLITS:
        assert {ex.label for ex in ds.examples(split)} == set(range(len(ds.labels)))


def test_audio_is_float32_finite_bounded_and_clip_length(built) -> None:
    ds, _ = built
    examples = _all(ds)
    assert len(examples) == 6 * 3 * 1
    for ex in examples:
        assert ex.audio.dtype == torch.float32
        assert ex.audio.shape == (int(TINY.clip_seconds * ds.sample_rate),)
        assert torch.isfinite(ex.audio).all()
        assert ex.audio.abs().max() <= 1.0
        assert ex.audio.abs().max() > 0.1  # not a silent window
        assert ex.meta["timbre"] in synth.TIMBRES
        assert ex.meta["style"] == ds.labels[ex.label]
    assert len({ex.id for ex in examples}) == len(examples)


def test_build_is_deterministic_and_parallel_equals_serial(built, tmp_path: Path) -> None:
    ds, cache = built
    other = M21Styles(TINY)
    other.workers = 2
    other.prepare(_ctx(tmp_path))
    assert other.fingerprint() == ds.fingerprint()
    a = ds.cache_path(cache) / "clips.npy"
    b = other.cache_path(tmp_path) / "clips.npy"
    assert a.read_bytes() == b.read_bytes()
    assert [ex.id for ex in _all(other)] == [ex.id for ex in _all(ds)]


def test_second_prepare_loads_the_cache_without_rendering(built, monkeypatch) -> None:
    ds, cache = built

    def must_not_render(*args, **kwargs):
        raise AssertionError("rendered although a cache exists")

    monkeypatch.setattr(m21_styles, "render_work", must_not_render)
    again = M21Styles(TINY)
    again.prepare(_ctx(cache))
    assert again.fingerprint() == ds.fingerprint()
    for x, y in zip(_all(again), _all(ds)):
        assert x.id == y.id and torch.equal(x.audio, y.audio)


def test_fingerprint_changes_with_the_seed_and_cache_dirs_differ(built, tmp_path: Path) -> None:
    ds, cache = built
    reseeded = M21Styles(dataclasses.replace(TINY, seed=1))
    assert reseeded.cache_path(cache) != ds.cache_path(cache)
    small = Params(works_per_class=1, clips_per_work=1, clip_seconds=1.0, valid_fraction=0.0,
                   test_fraction=0.0, seed=1)
    a, b = M21Styles(small), M21Styles(dataclasses.replace(small, seed=2))
    a.workers = b.workers = 1
    a.prepare(_ctx(tmp_path))
    b.prepare(_ctx(tmp_path))
    assert a.fingerprint() != b.fingerprint()


def test_interrupted_cache_write_leaves_nothing_behind(tmp_path: Path) -> None:
    ds = M21Styles(TINY)
    target = ds.cache_path(tmp_path)
    clips = np.zeros((1, 4), dtype=np.int16)
    with pytest.raises(TypeError):
        write_clip_cache(target, clips, {"not json": object()})
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_examples_before_prepare_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="prepare"):
        M21Styles(TINY).examples("train")


@pytest.mark.parametrize(
    "bad",
    [{"works_per_class": 0}, {"clips_per_work": 0}, {"clip_seconds": 0.0},
     {"test_fraction": 0.6, "valid_fraction": 0.5}],
)
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)


def test_spanning_order_starts_evenly_and_covers_everything() -> None:
    order = m21_corpus.spanning_order(10, 3)
    assert order[:3] == [0, 3, 6]
    assert sorted(order) == list(range(10))


def test_corpus_lists_exclude_analyses_and_variant_files() -> None:
    assert all(r.path.endswith(".mxl") for r in m21_corpus.list_works("monteverdi-madrigal"))
    essen = m21_corpus.list_works("essen-folk")
    assert essen and all(r.number is not None for r in essen)
    assert not any(Path(r.path).name.startswith(("test", "variant")) for r in essen)
