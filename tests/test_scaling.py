"""benchmarks/scaling.py: the least-squares line, the shard size that spreads one cell over the
workers, the generated config (a valid run config that neither trains nor computes FAD) and the
comparison of two runs' records; no run, no Ray."""

from __future__ import annotations

import math
import tomllib

import pytest
from conftest import benchmark_script

from musicbench.config import parse_config


def _load():
    return benchmark_script("scaling")


def test_fit_line_recovers_an_exact_line_and_reports_r2():
    scaling = _load()
    fixed, slope, r2 = scaling.fit_line([16, 32, 64], [10.0 + 0.5 * x for x in (16, 32, 64)])
    assert math.isclose(fixed, 10.0) and math.isclose(slope, 0.5) and math.isclose(r2, 1.0)
    fixed, slope, r2 = scaling.fit_line([1, 2, 3], [1.0, 3.0, 2.0])
    assert math.isclose(slope, 0.5) and math.isclose(fixed, 1.0) and math.isclose(r2, 0.25)
    with pytest.raises(ValueError, match="all x equal"):
        scaling.fit_line([4, 4], [1.0, 2.0])
    with pytest.raises(ValueError, match="two or more"):
        scaling.fit_line([4], [1.0])


def test_spread_shard_gives_whole_batches_and_one_shard_per_worker():
    scaling = _load()
    assert scaling.spread_shard(64, 8) == 32
    assert scaling.spread_shard(16, 8) == 8
    assert scaling.spread_shard(12, 8) == 8  # shards 0-7 and 8-11
    assert scaling.spread_shard(20, 8) == 16  # rounded up to whole batches: 16 + 4
    with pytest.raises(ValueError, match="cannot be split over 2 workers"):
        scaling.spread_shard(8, 8)


def test_config_text_is_a_run_config_that_neither_trains_nor_computes_fad():
    scaling = _load()
    text = scaling.config_text(32, steps=3, second_attack=True, batch_size=8, ray_workers=2)
    data = tomllib.loads(text)
    run = data["run"]
    assert run["samples"] == 32 and run["batch_size"] == 8 and run["device"] == "cpu"
    assert run["fad_encoder"] == "" and run["allow_training"] is False
    assert (run["ray_workers"], run["ray_local_cpus"], run["ray_cpus_per_cell"]) == (2, 2, 1)
    assert [a["name"] for a in data["attacks"]] == ["pgd", "fgsm"]
    assert data["attacks"][0] == {"name": "pgd", "eps": 0.002, "steps": 3}
    assert [d["name"] for d in data["datasets"]] == ["m21-styles"]
    assert data["models"] == [{"name": "style-cnn", "datasets": ["m21-styles"]}]
    assert [d["name"] for d in data["defenses"]] == ["none"]
    local = tomllib.loads(scaling.config_text(16))
    assert "ray_workers" not in local["run"] and len(local["attacks"]) == 1
    assert local["attacks"][0]["steps"] == 20
    config = parse_config(text)  # the harness's own check of every key
    assert config.run.samples == 32 and config.run.ray_workers == 2
    with pytest.raises(ValueError, match=">= 1"):
        scaling.config_text(0)


def test_differences_names_the_cell_and_field_and_is_empty_when_identical():
    scaling = _load()
    cell = ("m21-styles", "style-cnn", "none", "pgd")
    a = {cell: {"status": "ok", "samples": [{"success": True}], "metrics": {"asr": (0.5, None)}}}
    b = {cell: {"status": "ok", "samples": [{"success": False}], "metrics": {"asr": (0.5, None)}}}
    assert scaling.differences(a, a) == []
    assert scaling.differences(a, b) == ["m21-styles/style-cnn/none/pgd: samples differs"]
    other = ("m21-styles", "style-cnn", "none", "fgsm")
    assert scaling.differences(a, {**a, other: a[cell]}) == [
        "m21-styles/style-cnn/none/fgsm: only in the second"]
