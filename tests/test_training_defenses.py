"""Training defenses (issue 11 items 1-2): the core caches the defended model under a content
key, loads it without retraining, refuses to train when told not to (the cell fails naming the
`musicbench train` command), and a defended cell is attacked like any model, on the same clips
as its undefended twin. `advtrain` trains end to end on toy data, deterministically, for
classification and retrieval, with every method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import cli
from toyplugins import ToyEmbedder

from musicbench.errors import NotTrainedError
from musicbench.interfaces import Context, Dataset, Example
from musicbench.store import Store
from musicbench.training import defended_key, defended_path, load_or_fit_defense
from musicbench.workspace import Workspace

TINY = {"epochs": 1, "steps": 2, "eval_steps": 2, "batch_size": 4, "eps": 0.01}


def _ws(plugins, cache: Path, *, allow_training: bool = True) -> Workspace:
    return Workspace(plugins, cache_dir=cache, device=torch.device("cpu"),
                     allow_training=allow_training)


def _fit(ws: Workspace, params=None, model_params=None):
    base = ws.model("toy-model", model_params or {})
    data = ws.dataset("toy-tones")
    defense = ws.defense("advtrain", TINY | (params or {}), base.sample_rate)
    return defense, base, data


def test_advtrain_trains_is_cached_reloads_without_retraining_and_is_deterministic(
        tmp_path, toy_plugins, monkeypatch):
    ws = _ws(toy_plugins, tmp_path / "a")
    defense, base, data = _fit(ws)
    base_digest = base.weights_digest()
    defended = load_or_fit_defense(defense, base, data, ws.ctx)
    path = defended_path(ws.ctx, defense, base, data)
    assert path.exists() and defended.checkpoint == path
    assert base.weights_digest() == base_digest  # the undefended twin is untouched
    assert defended.weights_digest() != base_digest
    assert (defended.task, defended.labels, defended.sample_rate) == (
        base.task, base.labels, base.sample_rate)
    assert not any(p.requires_grad for p in defended.module().parameters())
    summary = defended.training_summary
    assert summary["key"] == defended_key(defense, base, data)
    history = summary["history"]
    assert [row["epoch"] for row in history] == [0, 1]
    assert {"valid_clean", "valid_pgd"} <= set(history[1]) and "loss" in history[1]

    # a fresh process loads it, never trains
    def refuse(*args, **kwargs):
        raise AssertionError("retrained a cached defended model")

    ws2 = _ws(toy_plugins, tmp_path / "a", allow_training=False)
    defense2, base2, data2 = _fit(ws2)
    monkeypatch.setattr(type(defense2), "fit", refuse)
    again = ws2.defended_model(defense2, base2, data2)
    assert again.weights_digest() == defended.weights_digest()
    monkeypatch.undo()

    # the same training in another cache gives the same weights (seeded, forked RNG)
    ws3 = _ws(toy_plugins, tmp_path / "b")
    torch.manual_seed(1234)  # the caller's global RNG state must not matter
    assert load_or_fit_defense(*_fit(ws3), ws3.ctx).weights_digest() == \
        defended.weights_digest()


@pytest.mark.parametrize("method", ["trades", "fgsm-rs"])
def test_every_advtrain_method_trains(tmp_path, toy_plugins, method):
    ws = _ws(toy_plugins, tmp_path)
    defense, base, data = _fit(ws, {"method": method})
    defended = load_or_fit_defense(defense, base, data, ws.ctx)
    assert defended.weights_digest() != base.weights_digest()
    assert isinstance(defended.training_summary["catastrophic_overfitting"], bool)


def test_the_key_follows_base_weights_dataset_and_defense_params(tmp_path, toy_plugins):
    ws = _ws(toy_plugins, tmp_path)
    defense, base, data = _fit(ws)
    key = defended_key(defense, base, data)
    _, other_base, _ = _fit(ws, model_params={"seed": 1})  # other weights, same name
    assert other_base.weights_digest() != base.weights_digest()
    assert defended_key(defense, other_base, data) != key
    other_defense, _, _ = _fit(ws, {"epochs": 2})
    assert defended_key(other_defense, base, data) != key
    other_data = ws.dataset("toy-tones", {"clips": 28})
    assert defended_key(defense, base, other_data) != key
    assert defended_key(*_fit(ws)) == key


def test_without_weights_and_training_off_the_error_names_the_train_command(tmp_path,
                                                                          toy_plugins):
    ws = _ws(toy_plugins, tmp_path, allow_training=False)
    with pytest.raises(NotTrainedError) as err:
        ws.defended_model(*_fit(ws, {"epochs": 2}))
    message = str(err.value)
    assert "musicbench train advtrain --model toy-model --dataset toy-tones" in message
    assert "-p epochs=2" in message and "-p steps=2" in message


def test_a_cell_without_weights_fails_clearly_when_training_is_off(tmp_path, toy_plugins):
    from musicbench.config import parse_config
    from musicbench.environment import describe_environment
    from musicbench.planner import plan_cells, resolve
    from musicbench.runner import run_cell

    config = parse_config(RUN.format(extra=""))
    ws = _ws(toy_plugins, tmp_path, allow_training=False)
    plan = plan_cells(resolve(config, toy_plugins), ws, config.run, quick=False)
    cells = [s for s in plan.specs if s.defense.name == "advtrain"]
    assert cells and all(len(s.defense.weights or "") == 16 for s in cells)  # planned untrained
    record = run_cell(cells[0], ws, describe_environment(ws.device))
    assert record.status == "failed"
    assert "NotTrainedError" in record.error and "musicbench train advtrain" in record.error


RUN = """
[run]
samples = 6
batch_size = 4
device = "cpu"
fad_encoder = ""
{extra}
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
[[defenses]]
name = "none"
[[defenses]]
name = "advtrain"
epochs = 1
steps = 2
eval_steps = 2
batch_size = 4
eps = 0.01
[[attacks]]
name = "pgd"
eps = 0.01
steps = 3
[[attacks]]
name = "pgd"
label = "pgd-oblivious"
eps = 0.01
steps = 3
adaptive = "oblivious"
"""


def test_train_command_then_a_run_with_advtrain_shares_clips_with_the_undefended_twin(
        tmp_path, toy_site):
    trained = cli("train", "advtrain", "--model", "toy-model", "--dataset", "toy-tones",
                  "--device", "cpu", *[a for k, v in TINY.items() for a in ("-p", f"{k}={v}")],
                  sites=(toy_site,))
    assert trained.returncode == 0, trained.stderr
    assert "weights:" in trained.stderr and ".safetensors" in trained.stderr
    missing = cli("train", "advtrain", sites=(toy_site,))
    assert missing.returncode == 2 and "--model" in missing.stderr

    config = tmp_path / "run.toml"
    config.write_text(RUN.format(extra=""))
    out = tmp_path / "out"
    result = cli("run", str(config), "--out", str(out), sites=(toy_site,))
    assert result.returncode == 0, result.stderr
    store = Store(out / "results.sqlite", readonly=True)
    records = store.cells()
    store.close()
    # two cells a row, and the advtrain row's sanity gates on pgd (10x the radius, and a
    # stronger run on its survivors; a training defense gets no identity-BPDA cell)
    assert len(records) == 4 + 2 and all(r.status == "ok" for r in records)
    by = {(r.spec.defense.name, r.spec.attack.label): r for r in records}
    assert by[("advtrain", "pgd, converged")].spec.run.role == "convergence"
    defended, plain = by[("advtrain", "pgd")], by[("none", "pgd")]
    assert [s.sample_id for s in defended.samples] == [s.sample_id for s in plain.samples]
    assert defended.spec.defense.weights and defended.spec.defense.weights != \
        plain.spec.defense.weights
    # the oblivious attacker crafts on the base; the cell still judges the defended model
    assert by[("advtrain", "pgd-oblivious")].info.adaptive == "oblivious"
    # the model in the cell key is the base (undefended) model in both rows
    assert defended.spec.model.weights == plain.spec.model.weights


# -- retrieval -------------------------------------------------------------------------------


class _CoversWithSplits(Dataset):
    """4 works x 3 versions in each of train and valid (harmonic tones, gain and noise)."""

    task = "retrieval"
    sample_rate = 16_000
    name = "covers-with-splits"

    def __init__(self):
        super().__init__(None)
        g = torch.Generator().manual_seed(3)
        t = torch.arange(4000) / 16_000
        self._split: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
        for split, offset in (("train", 0), ("valid", 4)):
            for w in range(4):
                f0 = 110 * 2 ** ((w + offset) / 3)
                for v in range(3):
                    x = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 4))
                    x = x + 0.05 * torch.randn(4000, generator=g)
                    x = (0.3 + 0.1 * v) * x / x.abs().max()
                    self._split[split].append(Example(id=f"{split}-{w}-{v}", audio=x.float(),
                                                      work_id=f"{split}-{w}"))

    def prepare(self, ctx: Context) -> None:
        pass

    def examples(self, split: str) -> Sequence[Example]:
        return self._split[split]

    def queries(self, split: str) -> Sequence[Example]:
        return [e for e in self._split[split] if not e.id.endswith("-0")]

    def references(self, split: str) -> Sequence[Example]:
        return [e for e in self._split[split] if e.id.endswith("-0")]

    def fingerprint(self) -> str:
        return "covers-with-splits-1"


class _ProjectedEmbedder(ToyEmbedder):
    """ToyEmbedder (a parameter-free STFT average) with a trainable projection in its
    module, as a real embedder has."""

    def load(self, ctx=None):
        super().load(ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net.proj = torch.nn.Linear(self.net.n_fft // 2 + 1, 16)
        self.net.requires_grad_(False)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        net = self.module()
        spec = torch.stft(audio, net.n_fft, net.hop, window=net.window, return_complex=True)
        return torch.nn.functional.normalize(net.proj(torch.log1p(100 * spec.abs()).mean(-1)),
                                             dim=-1)


@pytest.mark.parametrize("params", [{}, {"retrieval_loss": "triplet"}, {"method": "trades"}])
def test_advtrain_fine_tunes_a_retrieval_model(tmp_path, toy_plugins, params):
    ws = _ws(toy_plugins, tmp_path)
    base = _ProjectedEmbedder()
    base.name = "toy-embedder"
    base.load(ws.ctx)
    defense = ws.defense("advtrain", TINY | params, base.sample_rate)
    data = _CoversWithSplits()
    defended = load_or_fit_defense(defense, base, data, ws.ctx)
    assert defended.task == "retrieval"
    assert defended.weights_digest() != base.weights_digest()
    emb = defended.embed(data.examples("valid")[0].audio[None])
    assert emb.shape == (1, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(1))
    assert 0 <= defended.training_summary["valid_robust_accuracy"] <= 1
