"""The real vertical slice, small: m21-styles rendered from music21, style-cnn trained by our
code, FGSM and PGD through the CLI, a leaderboard, kept FLAC clips, safetensors weights.

The default-size run (the acceptance figures) is marked slow: `python -m pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest
import torch
from conftest import cli

SMALL_DATA = "works_per_class = 6, clips_per_work = 3"
SMALL_CONFIG = f"""
[run]
name = "small"
samples = 12
batch_size = 6
device = "cpu"
keep_audio = 1

[[datasets]]
name = "m21-styles"
works_per_class = 6
clips_per_work = 3

[[models]]
name = "style-cnn"
train_dataset_params = {{ {SMALL_DATA} }}
epochs = 8
batch_size = 8

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = 0.02

[[attacks]]
name = "pgd"
eps = 0.02
steps = 10
"""


@pytest.fixture(scope="module")
def small_home(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e-home")


def test_small_real_run_end_to_end(tmp_path, small_home, monkeypatch):
    monkeypatch.setenv("MUSICBENCH_HOME", str(small_home))
    config = tmp_path / "small.toml"
    config.write_text(SMALL_CONFIG)
    out = tmp_path / "out"
    result = cli("run", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    board = (out / "leaderboard.md").read_text()
    for column in ("clean acc", "Worst-case robust accuracy by threat model", "L∞ ε=0.02 ↑",
                   "ASR", "robust acc", "n att", "n ok", "LSD", "SNR dB"):
        assert column in board
    assert re.search(r"dataset `m21-styles`: 12 clips, fingerprint `[0-9a-f]{64}`", board)
    rows = json.loads(cli("leaderboard", str(out), "--format", "json").stdout)
    assert [r["attack"] for r in rows] == ["fgsm", "pgd"]
    for r in rows:
        assert r["status"] == "ok" and r["n"] == 12
        assert r["threat_model"]["label"] == "L∞ ε=0.02"
        assert 0 < r["clean_accuracy"] <= 1
        assert r["n_attacked"] == round(12 * r["clean_accuracy"])
        assert r["fad_clips"] == r["n_attacked"]  # FAD stands on every attacked clip
        if r["asr"]:
            assert r["lsd"] > 0 and 0 < r["snr_db"] < 60
    assert rows[1]["asr"] > 0.5  # PGD at a large eps breaks a barely trained model
    # FAD on musicnn frames (the default encoder; its weights come from the musicnn wheel)
    assert rows[1]["fad_encoder"] == "musicnn"
    if rows[1]["fad"] is None:  # a dozen clips are too few: NaN with the reason
        assert any("too few for" in f for f in rows[1]["flags"])
    else:
        assert rows[1]["fad"] >= 0
    assert "FAD (musicnn)" in board
    flacs = sorted((out / "audio").rglob("*.flac"))
    assert flacs and {p.stem.rsplit("-", 1)[1] for p in flacs} <= {"clean", "adv"}
    weights = list((small_home / "models").glob("style-cnn-*.safetensors"))
    assert len(weights) == 1


def test_checkpoints_load_without_unpickling(tmp_path, small_home, monkeypatch):
    """Weights come from safetensors: loading them must work with pickle and torch.load
    disabled."""
    monkeypatch.setenv("MUSICBENCH_HOME", str(small_home))
    from musicbench.cache import cache_dir
    from musicbench.plugins import PluginSystem
    from musicbench.workspace import Workspace

    ws = Workspace(PluginSystem(), cache_dir=cache_dir(), device=torch.device("cpu"),
                   allow_training=False)
    small = {"works_per_class": 6, "clips_per_work": 3}
    ws.dataset("m21-styles", small)  # render (or load) outside the guard: it uses no pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = ws.model("style-cnn", {"train_dataset_params": small, "epochs": 8, "batch_size": 8})
    assert model.training_summary["dataset"] == "m21-styles"
    with torch.no_grad():
        assert model.forward(torch.zeros(1, model.input_samples)).shape == (1, 6)


@pytest.mark.slow
def test_default_run_meets_the_acceptance_figures(tmp_path, monkeypatch):
    """The embedded default: style-cnn >= 70% clean accuracy, PGD (eps 0.002) >= 90% ASR.
    Builds everything in a fresh cache unless MUSICBENCH_SLOW_HOME names one to reuse."""
    if os.environ.get("MUSICBENCH_SLOW_HOME"):
        monkeypatch.setenv("MUSICBENCH_HOME", os.environ["MUSICBENCH_SLOW_HOME"])
    out = tmp_path / "default"
    result = cli("run", "--out", str(out), timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["attack"]: r for r in json.loads(
        cli("leaderboard", str(out), "--format", "json").stdout)}
    assert rows["pgd"]["clean_accuracy"] >= 0.70
    assert rows["pgd"]["asr"] >= 0.90
