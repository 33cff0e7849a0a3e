"""`pamt` and `pamt-control` (issue 11 item 3, the defense): a tiny frozen toy encoder, PAMT
head and task head train end to end through the core's training-defense plumbing, are cached
and reload, give a TargetModel with the base's task and labels (not its weights), pass
gradients to the waveform, and run in a run config's defense matrix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import cli
from test_training_defenses import _CoversWithSplits
from toyplugins import ToyEmbedder

from musicbench.store import Store
from musicbench.training import defended_path, load_or_fit_defense
from musicbench.workspace import Workspace

CONTROL = {"encoder": "toy-frames", "views": 2, "hidden": 8, "embed_dim": 8,
           "task_epochs": 3, "task_batch_size": 4, "task_dropout": 0.0}
HEAD = {"d_model": 8, "layers": 2, "heads": 2, "ffn_mult": 2, "cond_dim": 4, "ppe_hidden": 8,
        "out_dim": 4, "window_frames": 16, "exclude_radius": 1, "head_epochs": 2,
        "head_batch_size": 4}
TINY = {"pamt": CONTROL | HEAD, "pamt-control": CONTROL}


def _ws(plugins, cache: Path, *, allow_training: bool = True) -> Workspace:
    return Workspace(plugins, cache_dir=cache, device=torch.device("cpu"),
                     allow_training=allow_training)


def _setup(ws: Workspace, name: str):
    base = ws.model("toy-model")
    data = ws.dataset("toy-tones")
    return ws.defense(name, TINY[name], base.sample_rate), base, data


@pytest.mark.parametrize("name", ["pamt", "pamt-control"])
def test_trains_caches_reloads_and_is_a_differentiable_target_model(tmp_path, toy_plugins,
                                                                    monkeypatch, name):
    ws = _ws(toy_plugins, tmp_path / "a")
    defense, base, data = _setup(ws, name)
    base_digest = base.weights_digest()
    defended = load_or_fit_defense(defense, base, data, ws.ctx)
    assert defended_path(ws.ctx, defense, base, data).exists()
    assert base.weights_digest() == base_digest
    assert (defended.task, defended.labels, defended.sample_rate, defended.input_seconds) == (
        base.task, base.labels, base.sample_rate, base.input_seconds)
    assert (defended.module().head is not None) == (name == "pamt")
    assert not any(p.requires_grad for p in defended.module().parameters())
    summary = defended.training_summary
    assert summary["base_weights_used"] is False and summary["history"]
    assert ("head_history" in summary) == (name == "pamt")
    assert 0 <= summary["valid_accuracy"] <= 1
    assert any("weights are not used" in f for f in defended.cell_flags)

    # gradients reach the waveform through the frozen encoder and the heads
    x = torch.stack([e.audio for e in data.examples("test")[:3]]).requires_grad_(True)
    logits = defended.forward(x)
    assert logits.shape == (3, len(base.labels))
    (grad,) = torch.autograd.grad(logits.logsumexp(-1).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    # Grad-CAM (MAIA-WB) finds the defended model's cam_layer, time last
    from musicbench.victim import Victim, begin_batch
    from musicbench_plugins.attacks.gradcam import gradcam

    victim = Victim(defended)
    begin_batch(victim, 3)
    cam = gradcam(victim, x.detach(), logits.argmax(-1), cell=400).cam
    assert cam.shape[0] == 3 and torch.isfinite(cam).all()

    # a fresh workspace loads it without training, with the same weights and outputs
    def refuse(*args, **kwargs):
        raise AssertionError("retrained a cached defended model")

    ws2 = _ws(toy_plugins, tmp_path / "a", allow_training=False)
    defense2, base2, data2 = _setup(ws2, name)
    monkeypatch.setattr(type(defense2), "fit", refuse)
    again = ws2.defended_model(defense2, base2, data2)
    assert again.weights_digest() == defended.weights_digest()
    assert torch.allclose(again.forward(x.detach()), logits.detach(), atol=1e-5)
    monkeypatch.undo()

    # deterministic: the same fit in another cache, whatever the caller's RNG state
    ws3 = _ws(toy_plugins, tmp_path / "b")
    torch.manual_seed(99)
    assert load_or_fit_defense(*_setup(ws3, name), ws3.ctx).weights_digest() == \
        defended.weights_digest()


def test_pamt_and_control_share_the_task_data_and_differ_only_by_the_head(tmp_path,
                                                                         toy_plugins):
    ws = _ws(toy_plugins, tmp_path)
    pamt = load_or_fit_defense(*_setup(ws, "pamt"), ws.ctx)
    control = load_or_fit_defense(*_setup(ws, "pamt-control"), ws.ctx)
    assert pamt.training_summary["train_clips"] == control.training_summary["train_clips"]
    assert pamt.module().task[0].normalized_shape == (2 * HEAD["out_dim"],)  # mean-std pooling
    assert control.module().task[0].normalized_shape == (2 * 2,)  # toy-frames: 2 dims


@pytest.mark.parametrize("name", ["pamt", "pamt-control"])
def test_retrieval_embedding_head(tmp_path, toy_plugins, name):
    ws = _ws(toy_plugins, tmp_path)
    base = ToyEmbedder()
    base.name = "toy-embedder"
    base.load(ws.ctx)
    defense = ws.defense(name, TINY[name] | {"retrieval_loss": "triplet"}, base.sample_rate)
    data = _CoversWithSplits()
    defended = load_or_fit_defense(defense, base, data, ws.ctx)
    assert defended.task == "retrieval"
    x = data.examples("valid")[0].audio[None].clone().requires_grad_(True)
    emb = defended.embed(x)
    assert emb.shape == (1, CONTROL["embed_dim"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1))
    (grad,) = torch.autograd.grad(emb[0, 0], x)
    assert grad.abs().sum() > 0
    assert 0 <= defended.training_summary["valid_accuracy"] <= 1


def test_bad_params_and_a_rate_mismatch_fail_early(tmp_path, toy_plugins):
    ws = _ws(toy_plugins, tmp_path)
    with pytest.raises(Exception, match="pooling"):
        ws.defense("pamt", {"pooling": "median"}, 16_000)
    with pytest.raises(Exception, match="d_model"):
        ws.defense("pamt", {"d_model": 10, "heads": 4}, 16_000)
    defense, base, data = _setup(ws, "pamt-control")
    base.sample_rate = 22_050  # an instance attribute: this base only
    with pytest.raises(ValueError, match="resampler"):
        defense.build(base, data, ctx=ws.ctx)


RUN = """
[run]
samples = 6
batch_size = 4
device = "cpu"
fad_encoder = ""
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
[[defenses]]
name = "none"
[[defenses]]
name = "pamt"
{pamt}
[[defenses]]
name = "pamt-control"
{control}
[[attacks]]
name = "pgd"
eps = 0.01
steps = 3
"""


def _toml(params: dict) -> str:
    def value(v):
        return f'"{v}"' if isinstance(v, str) else repr(v).lower() if isinstance(v, bool) \
            else repr(v)
    return "\n".join(f"{k} = {value(v)}" for k, v in params.items())


def test_a_run_with_pamt_and_control_defenses(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(RUN.format(pamt=_toml(TINY["pamt"]), control=_toml(TINY["pamt-control"])))
    out = tmp_path / "out"
    result = cli("run", str(config), "--out", str(out), sites=(toy_site,))
    assert result.returncode == 0, result.stderr
    store = Store(out / "results.sqlite", readonly=True)
    every = store.cells()
    store.close()
    assert all(r.status == "ok" for r in every), [(r.spec.defense.name, r.status, r.error)
                                                  for r in every]
    records = [r for r in every if not r.spec.run.role]  # the sanity gates aside
    assert len(records) == 3
    # each trained defense's row gets the gates of its gradient attack (10x, converged)
    assert {r.spec.run.role for r in every if r.spec.run.role} == {"large-radius",
                                                                   "convergence"}
    by = {r.spec.defense.name: r for r in records}
    assert [s.sample_id for s in by["pamt"].samples] == \
        [s.sample_id for s in by["none"].samples]
    assert by["pamt"].spec.defense.weights != by["pamt-control"].spec.defense.weights
    # the leaderboard says the defended network is not the base's (the runner's cell_flags)
    for name in ("pamt", "pamt-control"):
        assert any("weights are not used" in f for f in by[name].info.flags)
    assert not any("weights are not used" in f for f in by["none"].info.flags)
