"""The embedded ``m21-covers`` retrieval dataset: split by work, one reference per work, versions
that really differ, deterministic and cached."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from musicbench.interfaces import Context
from musicbench_plugins.datasets import m21_corpus, m21_covers, synth
from musicbench_plugins.datasets.m21_covers import M21Covers, Params

SPLITS = ("train", "valid", "test")
# Three works per class so that every split gets one work of every class.
TINY = Params(works=18, versions_per_work=3, clip_seconds=2.0, max_shift_seconds=0.5,
              valid_fraction=0.2, test_fraction=0.2)


def _ctx(cache_dir: Path) -> Context:
    return Context(cache_dir=cache_dir, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[M21Covers, Path]:
    cache = tmp_path_factory.mktemp("covers")
    ds = M21Covers(TINY)
    ds.workers = 2  # the default path; the determinism test re-renders works in-process
    ds.prepare(_ctx(cache))
    return ds, cache


def _all(ds: M21Covers):
    return [ex for split in SPLITS for ex in ds.examples(split)]


def test_is_a_retrieval_dataset_without_labels() -> None:
    assert M21Covers.task == "retrieval"  # read on the class by the planner
    assert M21Covers.labels == ()


def test_no_work_is_in_two_splits_and_every_split_has_every_class(built) -> None:
    ds, _ = built
    works = {s: {ex.work_id for ex in ds.examples(s)} for s in SPLITS}
    assert not works["train"] & works["valid"]
    assert not works["train"] & works["test"]
    assert not works["valid"] & works["test"]
    for s in SPLITS:
        assert {ex.meta["style"] for ex in ds.examples(s)} == set(m21_corpus.CLASSES)


def test_version_0_is_the_one_reference_and_every_query_work_has_it(built) -> None:
    ds, _ = built
    for s in SPLITS:
        refs, queries = ds.references(s), ds.queries(s)
        assert [e.meta["version"] for e in refs] == [0] * len(refs)
        assert all(e.meta["version"] > 0 for e in queries)
        ref_works = [e.work_id for e in refs]
        assert len(ref_works) == len(set(ref_works))  # one reference per work
        assert {e.work_id for e in queries} <= set(ref_works)
        assert len(queries) == (TINY.versions_per_work - 1) * len(refs)
        assert len(ds.examples(s)) == len(refs) + len(queries)
        assert all(e.label is None for e in ds.examples(s))
    assert ds.counts()["test"] == {"works": 6, "queries": 12, "references": 6}


def test_audio_is_float32_finite_bounded_clip_length_and_audible(built) -> None:
    ds, _ = built
    examples = _all(ds)
    assert len(examples) == 18 * 3
    assert len({ex.id for ex in examples}) == len(examples)
    for ex in examples:
        assert ex.audio.dtype == torch.float32
        assert ex.audio.shape == (int(TINY.clip_seconds * ds.sample_rate),)
        assert torch.isfinite(ex.audio).all()
        assert 0.1 < ex.audio.abs().max() <= 1.0


def test_versions_of_a_work_differ_but_share_the_music(built) -> None:
    ds, _ = built
    by_work: dict[str, list] = {}
    for ex in _all(ds):
        by_work.setdefault(ex.work_id, []).append(ex)
    shifts = []
    for versions in by_work.values():
        metas = [v.meta for v in versions]
        assert len({m["transpose"] for m in metas}) == len(metas)  # all in different keys
        assert len({m["timbre"] for m in metas}) == len(metas)
        assert len({m["tempo_bpm"] for m in metas}) == len(metas)
        assert metas[0]["arrangement"] == "full"
        for m in metas:
            assert m["timbre"] in synth.TIMBRES
        # Same music: with shifts of at most +-clip/4, the score windows of any two versions
        # overlap (each window is clip_seconds of its version's own tempo).
        windows = [(m["score_offset_q"], m["score_offset_q"] + TINY.clip_seconds
                    * m["tempo_bpm"] / 60.0) for m in metas]
        for lo_a, hi_a in windows:
            for lo_b, hi_b in windows:
                assert min(hi_a, hi_b) - max(lo_a, lo_b) > 0
        shifts += [m["shift_s"] for m in metas]
        a = versions[0].audio.numpy()
        for other in versions[1:]:
            b = other.audio.numpy()
            corr = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert abs(corr) < 0.5
    # Offsets are genuinely drawn, not all the same.
    assert np.std(shifts) > 0.15


def test_rendering_is_deterministic_and_in_process_equals_the_pool(built) -> None:
    ds, _ = built
    by_work: dict[str, list] = {}
    for ex in _all(ds):
        by_work.setdefault(ex.work_id, []).append(ex)
    for style in ("bach-chorale", "essen-folk"):  # the cheap ones: one work each
        wid = next(w for w, v in by_work.items() if v[0].meta["style"] == style)
        ref = next(r for r in m21_corpus.list_works(style) if r.work_id == wid)
        job = m21_covers._CoverJob(ref, TINY.seed, TINY.clip_seconds, TINY.versions_per_work,
                                   TINY.max_shift_seconds, ds.sample_rate)
        again = m21_covers.render_covers(job)
        assert again.reason is None
        stored = np.stack([(ex.audio.numpy() * 32767.0).round() for ex in by_work[wid]])
        np.testing.assert_array_equal(again.clips.astype(np.float64), stored)


def test_second_prepare_loads_the_cache_without_rendering(built, monkeypatch) -> None:
    ds, cache = built

    def must_not_render(*args, **kwargs):
        raise AssertionError("rendered although a cache exists")

    monkeypatch.setattr(m21_covers, "render_covers", must_not_render)
    again = M21Covers(TINY)
    again.prepare(_ctx(cache))
    assert again.fingerprint() == ds.fingerprint()
    for x, y in zip(_all(again), _all(ds)):
        assert x.id == y.id and torch.equal(x.audio, y.audio)


def test_cache_folder_depends_on_every_parameter(built) -> None:
    ds, cache = built
    seen = {ds.cache_path(cache)}
    for change in ({"seed": 1}, {"versions_per_work": 4}, {"max_shift_seconds": 1.0},
                   {"clip_seconds": 3.0}):
        seen.add(M21Covers(dataclasses.replace(TINY, **change)).cache_path(cache))
    assert len(seen) == 5
    assert ds.cache_path(cache).name.startswith("m21-covers-")


def test_examples_before_prepare_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="prepare"):
        M21Covers(TINY).queries("test")


@pytest.mark.parametrize(
    "bad",
    [{"works": 0}, {"versions_per_work": 1}, {"versions_per_work": 13}, {"clip_seconds": 0.1},
     {"max_shift_seconds": -1.0}, {"test_fraction": 0.6, "valid_fraction": 0.5}],
)
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        Params(**bad)
