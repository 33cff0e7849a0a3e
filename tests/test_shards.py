"""Clip shards: a cell split into shards gives exactly the unsharded cell's records (every
batch draws from its own streams), shards are whole batches, a finished shard is kept so a
rerun runs only what is missing, and a failed shard fails only its cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicbench.errors import ConfigError
from musicbench.session import RunOptions, execute
from musicbench.shards import ShardResult, effective_shard_clips, kept_audio, shard_ranges
from musicbench.store import SampleRecord, Store

# A randomized defense (EOT while attacked, 11 judging draws) and a random-start attack, so
# every stream matters; 12 test clips in batches of 3, the last batch of a 10-clip cell short.
CONFIG = """
[run]
fad_encoder = ""
samples = {samples}
batch_size = 3
keep_audio = 2
device = "cpu"
eot_samples = 2
{run}

[[datasets]]
name = "toy-tones"

[[models]]
name = "toy-model"

[[defenses]]
name = "none"

[[defenses]]
name = "toy-noise"
sigma = 0.2

[[attacks]]
name = "pgd"
eps = 0.01
steps = 3
"""

RETRIEVAL = """
[run]
fad_encoder = ""
samples = 0
batch_size = 4
device = "cpu"
{run}

[[datasets]]
name = "toy-covers"

[[models]]
name = "toy-embedder"

[[defenses]]
name = "toy-noise"

[[attacks]]
name = "pgd"
eps = 0.05
steps = 4
"""


def records(out: Path) -> dict[str, dict]:
    """Every cell's record by key, as :meth:`CellRecord.comparable` gives it."""
    store = Store(out / "results.sqlite", readonly=True)
    try:
        return {r.key: r.comparable() for r in store.cells()}
    finally:
        store.close()


def _run(tmp_path: Path, plugins, text: str, out: str, **options):
    config = tmp_path / f"{out}.toml"
    config.write_text(text)
    return execute(RunOptions(config=config, out=tmp_path / out, **options), plugins)


def test_shard_ranges_are_whole_batches():
    assert shard_ranges(10, 3, 4) == [(0, 6), (6, 10)]  # 4 rounded up to two batches
    assert shard_ranges(10, 3, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard_ranges(10, 3, 0) == [(0, 10)]
    assert shard_ranges(0, 3, 4) == [(0, 0)]  # an empty cell still gets its record
    assert effective_shard_clips(-1, "local") == 0 and effective_shard_clips(-1, "ray") == 32
    assert effective_shard_clips(5, "ray") == 5


def test_a_shard_round_trips_through_the_store_format():
    shard = ShardResult(
        3, 6, samples=[SampleRecord("a", 3, 1, 1, True, True, 2, True, 5, 3, {"lsd": 1.5},
                                    0.0, 0.8)],
        adv=torch.randn(1, 8), attacked=torch.tensor([True]),
        success=torch.tensor([True]), targets=torch.tensor([1]),
        gradient_norms=torch.tensor([2.0]), plain_norms=torch.tensor([3.0]),
        audio_data={("a", "clean"): np.ones(8, np.float32), ("a", "adv"): np.zeros(8, np.float32)},
        flags=["x"], attack_seconds=1.25, undefended_right=1, started="s", finished="f",
        seconds=2.0, peak_memory_mb=10.0, load_average=[0.5, 0.7])
    back = ShardResult.from_payload(*shard.to_payload())
    for name in ("lo", "hi", "samples", "flags", "attack_seconds", "undefended_right",
                 "started", "seconds", "peak_memory_mb", "load_average", "error"):
        assert getattr(back, name) == getattr(shard, name), name
    for name in ShardResult._TENSORS:
        assert torch.equal(getattr(back, name), getattr(shard, name)), name
    assert back.audio_data.keys() == shard.audio_data.keys()
    assert np.array_equal(back.audio_data[("a", "clean")], shard.audio_data[("a", "clean")])


def test_kept_audio_is_the_first_fooled_clips_in_order():
    def shard(lo: int, ids: list[str]) -> ShardResult:
        samples = [SampleRecord(i, lo + k, 0, 0, True, True, 1, True, 1, 1) for k, i in
                   enumerate(ids)]
        audio = {(i, kind): np.zeros(2, np.float32) for i in ids for kind in ("clean", "adv")}
        return ShardResult(lo, lo + len(ids), samples=samples, audio_data=audio)

    kept = kept_audio([shard(0, ["a", "b"]), shard(2, ["c", "d"])], keep=3)
    assert sorted(kept) == sorted((i, k) for i in "abc" for k in ("clean", "adv"))


@pytest.mark.parametrize("samples", [0, 10])
def test_sharded_cells_give_the_unsharded_records(tmp_path, toy_plugins, samples):
    text = CONFIG.format(samples=samples, run="")
    whole = _run(tmp_path, toy_plugins, text, "whole")
    sharded = _run(tmp_path, toy_plugins, text, "sharded", shard_clips=4)  # -> 6: two batches
    assert not whole.failed and not sharded.failed
    a, b = records(tmp_path / "whole"), records(tmp_path / "sharded")
    # pgd on the noise row, and its sanity gates (10x the radius, BPDA through the identity,
    # the stronger run on the survivors: a cell that depends on the others')
    assert a.keys() == b.keys() and len(a) == 5
    for key in a:
        assert a[key] == b[key], key
    noisy = next(r for r in a.values() if r["info"]["adaptive"] == "eot")
    # the defense's draws reach the records: some verdicts are split between draws
    assert any(s[k] not in (None, 0.0, 1.0) for s in noisy["samples"]
               for k in ("clean_wrong", "adv_wrong"))
    store = Store(tmp_path / "sharded" / "results.sqlite")
    try:  # a finished cell keeps no shards
        assert store.conn.execute("SELECT count(*) FROM shards").fetchone()[0] == 0
    finally:
        store.close()


def test_a_sharded_retrieval_cell_gives_the_unsharded_map(tmp_path, toy_plugins):
    whole = _run(tmp_path, toy_plugins, RETRIEVAL.format(run=""), "whole")
    sharded = _run(tmp_path, toy_plugins, RETRIEVAL.format(run="shard_clips = 4"), "sharded")
    assert not whole.failed and not sharded.failed
    a, b = records(tmp_path / "whole"), records(tmp_path / "sharded")
    assert a == b
    store = Store(tmp_path / "whole" / "results.sqlite", readonly=True)
    try:  # the config's cell (the others are the noise row's sanity gates)
        (pgd,) = [r for r in store.cells() if r.spec.attack.label == "pgd"]
    finally:
        store.close()
    assert pgd.metrics["map_clean"].value is not None


def test_a_failed_shard_fails_its_cell_and_the_rerun_runs_only_the_missing_shards(
        tmp_path, toy_plugins, monkeypatch):
    from musicbench import executors

    real = executors.run_shard
    ran: list[tuple[str, int]] = []
    broken = {"on": True}

    def flaky(spec, ws, lo, hi, fooled=frozenset()):
        ran.append((spec.defense.name, lo))
        if broken["on"] and spec.defense.name == "toy-noise" and lo == 6:
            raise_in = ShardResult(lo, hi, error="RuntimeError: the node went away",
                                   traceback="Traceback ...")
            return raise_in
        return real(spec, ws, lo, hi, fooled)

    monkeypatch.setattr(executors, "run_shard", flaky)
    # without the sanity gates: two cells, one of them broken (the gates run in shards in
    # test_sharded_cells_give_the_unsharded_records)
    text = CONFIG.format(samples=0, run="shard_clips = 3\nsanity = false")
    first = _run(tmp_path, toy_plugins, text, "out")
    failed = [r for r in first.records if r.status == "failed"]
    assert len(failed) == 1 and failed[0].spec.defense.name == "toy-noise"
    assert failed[0].error == "clips 6-8: RuntimeError: the node went away"
    assert [r.status for r in first.records].count("ok") == 1  # the other cell went on
    store = Store(tmp_path / "out" / "results.sqlite")
    try:
        kept = store.shards(failed[0].key)
    finally:
        store.close()
    assert [(s.lo, s.hi) for s in kept] == [(0, 3), (3, 6)]  # kept for the rerun

    broken["on"] = False
    ran.clear()
    second = _run(tmp_path, toy_plugins, text, "out")
    assert not second.failed
    assert ran == [("toy-noise", 6), ("toy-noise", 9)]  # only what was missing
    reference = _run(tmp_path, toy_plugins, CONFIG.format(samples=0, run="sanity = false"),
                     "reference")
    assert records(tmp_path / "out") == records(tmp_path / "reference")
    assert not reference.failed


def test_shard_clips_is_checked_like_every_run_key(tmp_path, toy_plugins):
    with pytest.raises(ConfigError, match="shard_clips"):
        _run(tmp_path, toy_plugins, CONFIG.format(samples=0, run="shard_clips = -2"), "bad")
    assert not (tmp_path / "bad").exists()
