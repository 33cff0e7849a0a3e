"""Retrieval cells (work similarities, mAP/MR1 before and after) and pseudo-label mode."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cli

from musicbench.errors import ConfigError
from musicbench.metrics import retrieval_ranking
from musicbench.session import RunOptions, execute
from musicbench.victim import ReferenceSet, Victim, begin_batch, judge, work_similarities


def test_retrieval_ranking_by_hand():
    refs = torch.eye(3)  # three references, works 0, 1, 1
    ref_works = torch.tensor([0, 1, 1])
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.0],
                                                          [1.0, 0.2, 0.1]]), dim=1)
    r = retrieval_ranking(queries, torch.tensor([0, 1]), refs, ref_works)
    # query 1 ranks refs 0 (work 0), 1 (work 1), 2 (work 1): relevant at ranks 2 and 3
    assert r["ap"].tolist() == pytest.approx([1.0, (1 / 2 + 2 / 3) / 2])
    assert r["first_rank"].tolist() == [1.0, 2.0]
    assert r["top1"].tolist() == [True, False]


def test_work_similarities_take_the_best_reference_per_work():
    refs = ReferenceSet(torch.eye(3), torch.tensor([0, 1, 1]), 2)
    emb = torch.tensor([[0.0, 0.6, 0.8]])
    assert work_similarities(emb, refs).tolist() == [[0.0, pytest.approx(0.8)]]


def test_retrieval_victim_margin_is_true_minus_best_other(toy_plugins):
    model = toy_plugins.get("model", "toy-embedder").load()()
    model.load()
    ref_audio = torch.randn(3, model.input_samples) * 0.1
    victim = Victim(model)
    refs = ReferenceSet(judge(victim).embed(ref_audio), torch.tensor([0, 1, 2]), 3)
    victim = Victim(model, references=refs)
    begin_batch(victim, 3)
    margin = victim.margin(ref_audio, torch.tensor([0, 1, 2]))
    assert (margin > 0).all()  # each reference is its own nearest neighbour
    assert victim.queries.tolist() == [1, 1, 1]


RETRIEVAL_CONFIG = """
[run]
fad_encoder = ""
samples = 0
batch_size = 4
device = "cpu"

[[datasets]]
name = "toy-covers"

[[models]]
name = "toy-embedder"

[[defenses]]
name = "none"

[[attacks]]
name = "pgd"
eps = 0.05
steps = 10
"""


def test_a_retrieval_run_reports_map_before_and_after(tmp_path, toy_plugins, toy_site):
    config = tmp_path / "covers.toml"
    config.write_text(RETRIEVAL_CONFIG)
    outcome = execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    assert not outcome.failed, outcome.records[0].error
    rows = json.loads(cli("leaderboard", str(tmp_path / "out"), "--format", "json",
                          sites=(toy_site,)).stdout)
    row = rows[0]
    assert row["n"] == 12 and row["clean_accuracy"] > 0.5
    assert row["map_clean"] > row["map_adv"] and row["asr"] > 0
    assert row["mr1_adv"] >= 1
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "mAP clean → adv" in board


PSEUDO_CONFIG = """
[run]
fad_encoder = ""
samples = 8
device = "cpu"
[[datasets]]
name = "toy-tones"
other_labels = true
[[models]]
name = "toy-model"
{model_keys}
[[defenses]]
name = "none"
[[attacks]]
name = "pgd"
eps = 0.05
steps = 10
"""


def test_labels_that_do_not_match_the_model_are_a_config_error_not_a_mode(tmp_path, toy_plugins):
    """A typo in a label must not silently switch the run to pseudo-labels."""
    config = tmp_path / "pseudo.toml"
    config.write_text(PSEUDO_CONFIG.format(model_keys=""))
    with pytest.raises(ConfigError) as err:
        execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    assert "pseudo_labels = true" in str(err.value) and "[models.toy-model]" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing was run


def test_a_dataset_label_typo_gets_a_did_you_mean(tmp_path, toy_plugins):
    config = tmp_path / "typo.toml"
    config.write_text(PSEUDO_CONFIG.replace("other_labels = true", "label_typo = true")
                      .format(model_keys=""))
    with pytest.raises(ConfigError, match="'clas-1': Did you mean 'class-1'"):
        execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)


def test_pseudo_label_mode_is_an_explicit_choice(tmp_path, toy_plugins):
    config = tmp_path / "pseudo.toml"
    config.write_text(PSEUDO_CONFIG.format(model_keys="pseudo_labels = true"))
    outcome = execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    record = outcome.records[0]
    assert record.status == "ok", record.error
    assert record.info.pseudo_labels is True
    # y is the undefended model's top-1: clean accuracy is the defended model's agreement with
    # it, 1 for the undefended model by definition (and the flag says so)
    assert record.metrics["clean_accuracy"].value == 1.0
    assert all(s.label == s.clean_pred for s in record.samples)
    assert any("pseudo-label" in f and "agreement" in f for f in record.info.flags)
