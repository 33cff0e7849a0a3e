"""benchmarks/maia_lambda_grid.py: clips come from the valid split only, grid points are scored
through the harness, and the stated choice rule picks what it says."""

from __future__ import annotations

import math

import torch
from conftest import benchmark_script

from musicbench.workspace import Workspace


def _load():
    return benchmark_script("maia_lambda_grid")


def test_clips_are_drawn_from_the_valid_split_only(toy_plugins, tmp_path):
    grid = _load()
    ws = Workspace(toy_plugins, cache_dir=tmp_path, device=torch.device("cpu"))
    clips = grid.valid_clips(ws, "toy-model", "toy-tones", clips=100, seed=0, batch=4)
    data = ws.dataset("toy-tones")
    valid = torch.stack([e.audio for e in data.examples("valid")])
    others = torch.stack([e.audio for s in ("train", "test") for e in data.examples(s)])
    assert clips.drawn == len(valid) and 0 < len(clips.audio) <= len(valid)
    for row in clips.audio:  # every attacked clip is a valid clip, none a test or train clip
        assert (valid == row).all(1).any() and not (others == row).all(1).any()
    # attacked = clean-correct, as in the runner
    with torch.no_grad():
        right = ws.model("toy-model").forward(clips.audio).argmax(-1) == clips.targets
    assert right.all()


def test_a_grid_point_is_scored_by_the_harness(toy_plugins, tmp_path):
    grid = _load()
    ws = Workspace(toy_plugins, cache_dir=tmp_path, device=torch.device("cpu"))
    clips = grid.valid_clips(ws, "toy-model", "toy-tones", clips=100, seed=0, batch=4)
    params = {"inpainter": "baseline", "gap_seconds": 0.05, "regions": 2}
    point = grid.run_point(ws, "toy-model", clips, params, seed=0, batch=4)
    again = grid.run_point(ws, "toy-model", clips, params, seed=0, batch=4)
    assert point.attacked == len(clips.audio)
    assert point.success == again.success  # one seed: the same latents, the same result
    assert point.lsd == again.lsd or math.isnan(point.lsd) and math.isnan(again.lsd)
    assert point.success > 0 and point.lsd > 0  # regenerating a 0.1 s of 0.25 s fools some


def test_choice_rule_asr_then_lsd_then_lambda_att_one():
    grid = _load()
    P = grid.Point

    def pts(*asr_lsd):  # one Point per target, 10 clips each
        return [P(10, round(a * 10), lsd, 20.0, 1.0) for a, lsd in asr_lsd]

    # highest macro ASR wins even with a higher LSD
    results = {(0.5, 1.0): pts((0.5, 0.4), (0.3, 0.2)), (2.0, 1.0): pts((0.4, 0.1), (0.3, 0.1))}
    assert grid.choose(results) == (0.5, 1.0)
    # equal macro ASR: the lower mean LSD wins
    results = {(0.5, 1.0): pts((0.5, 0.4), (0.3, 0.2)), (1.0, 1.0): pts((0.3, 0.1), (0.5, 0.2))}
    assert grid.choose(results) == (1.0, 1.0)
    # identical results (same ratio): the pair with lambda_att = 1
    same = pts((0.5, 0.4), (0.3, 0.2))
    assert grid.choose({(1.0, 2.0): same, (0.5, 1.0): same}) == (0.5, 1.0)
    # a target without successes has no LSD; it does not make a point's LSD undefined
    results = {(0.5, 2.0): [P(10, 0, math.nan, math.nan, 1.0), P(10, 2, 0.3, 20.0, 1.0)],
               (2.0, 1.0): [P(10, 1, 0.5, 20.0, 1.0), P(10, 1, 0.5, 20.0, 1.0)]}
    assert grid.choose(results) == (0.5, 2.0)
