"""The transfer attack: crafted on a surrogate with a white-box attack, zero queries to the
target, labels matched by name, a confidence margin past the surrogate's boundary, other
sample rates resampled and re-projected, and cell keys that follow the surrogate's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from musicbench.interfaces import Context
from musicbench.plugins import PluginSystem
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import Scorer, Victim
from musicbench.workspace import Workspace
from musicbench_plugins.attacks.pgd import PGD, PGDParams
from musicbench_plugins.attacks.transfer import Transfer, TransferParams


class Relabelled(TinyClassifier):
    """TinyClassifier whose label names are given (same network for a given seed)."""

    def __init__(self, labels: tuple[str, ...], seed: int = 0, rate: int = 16_000):
        super().__init__(n_classes=len(labels), seed=seed)
        self.labels = labels
        self.sample_rate = rate


def _transfer(surrogate, *, attack: str = "pgd", attack_params=None, confidence: float = 0.0,
              ws: Workspace | None = None) -> Transfer:
    """A Transfer prepared with ``surrogate`` (a loaded model) through a hand-made context."""
    ws = ws or Workspace(PluginSystem(), cache_dir=Path("/nonexistent"),
                         device=torch.device("cpu"))
    params = TransferParams(surrogate="given", attack=attack,
                            attack_params=attack_params or {}, confidence=confidence)
    attack_obj = Transfer(params)
    attack_obj.name = "transfer"
    ctx = Context(cache_dir=ws.ctx.cache_dir, device=torch.device("cpu"),
                  model=lambda name, p: surrogate, attack=ws.attack)
    attack_obj.prepare(ctx)
    return attack_obj


def _loaded(model):
    model.load()
    return model


def test_crafted_on_the_target_itself_it_is_pgd_with_no_query():
    target = _loaded(TinyClassifier())
    x = tone_batch(5, target.input_samples, seed=4)
    y = Scorer(target).predict(x)
    params = {"eps": 0.05, "steps": 10}
    transfer = _transfer(target, attack_params=params)
    victim = Victim(target, allow_gradients=False, budget=0)  # any query would raise
    got = transfer(victim, x, y, generator=torch.Generator().manual_seed(3))
    pgd = PGD(PGDParams(**params))
    pgd.name = "pgd"
    want = pgd(Victim(target), x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got.adv, want.adv)
    assert int(got.queries.sum()) == 0 and int(victim.gradient_calls.sum()) == 0
    assert got.success.any()  # judged by the harness on the target, uncounted
    assert transfer.threat_model() == pgd.threat_model()


def test_confidence_goes_past_the_surrogates_boundary():
    surrogate = _loaded(TinyClassifier(seed=1))
    x = tone_batch(6, surrogate.input_samples, seed=5)
    y = Scorer(surrogate).predict(x)
    target = _loaded(TinyClassifier())

    def margins(confidence: float) -> torch.Tensor:
        transfer = _transfer(surrogate, attack_params={"eps": 0.1, "steps": 40},
                             confidence=confidence)
        res = transfer(Victim(target), x, y, generator=torch.Generator().manual_seed(0))
        return Scorer(surrogate).margin(res.adv, y)

    at_boundary, past = margins(0.0), margins(1.0)
    assert (at_boundary < 0).all() and (past < 0).all()
    assert (at_boundary > -0.5).all(), at_boundary  # PGD stops just across
    assert (past <= -1.0 + 1e-4).all(), past  # with kappa = 1 it goes on to -1


def test_labels_are_matched_by_name_and_unknown_ones_left_alone():
    surrogate = _loaded(Relabelled(("b", "a", "c")))  # the target's a and b swapped
    target = _loaded(Relabelled(("a", "b", "z")))
    x = tone_batch(6, target.input_samples, seed=6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    transfer = _transfer(surrogate, attack_params={"eps": 0.05, "steps": 5})
    res = transfer(Victim(target, allow_gradients=False), x, y,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.adv[y == 2], x[y == 2])  # "z": the surrogate has no such label
    assert not torch.equal(res.adv[y != 2], x[y != 2])
    # the surrogate was attacked on ITS indices of the same names: a on 1, b on 0
    direct = _transfer(surrogate, attack_params={"eps": 0.05, "steps": 5})
    want = direct(Victim(surrogate, allow_gradients=False), x[y != 2],
                  torch.tensor([1, 0, 1, 0]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.adv[y != 2], want.adv)

    stranger = _loaded(Relabelled(("x", "y", "w")))
    with pytest.raises(ValueError, match="shares no label"):
        _transfer(stranger)(Victim(target, allow_gradients=False), x, y,
                            generator=torch.Generator().manual_seed(0))


def test_another_sample_rate_is_resampled_and_kept_inside_the_bound():
    surrogate = _loaded(Relabelled(("class-0", "class-1", "class-2"), rate=8_000))
    target = _loaded(TinyClassifier())
    x = tone_batch(3, target.input_samples, seed=7)
    y = Scorer(target).predict(x)
    eps = 0.01
    transfer = _transfer(surrogate, attack_params={"eps": eps, "steps": 5})
    res = transfer(Victim(target, allow_gradients=False), x, y,
                   generator=torch.Generator().manual_seed(0))
    delta = res.adv - x
    assert res.adv.shape == x.shape
    assert float(delta.abs().max()) <= eps * (1 + 1e-5) + 1e-7
    assert float(delta.abs().max()) > eps / 4  # a perturbation survived the round trip


def test_refuses_black_box_inner_attacks_and_retrieval_surrogates():
    with pytest.raises(ValueError, match="white-box"):
        _transfer(_loaded(TinyClassifier()), attack="nes")

    class Embedder(TinyClassifier):
        task = "retrieval"

    with pytest.raises(ValueError, match="classification"):
        _transfer(Embedder())
    with pytest.raises(ValueError, match="transfer a transfer"):
        TransferParams(attack="transfer")


def test_cell_keys_follow_the_surrogates_weights_and_the_inner_attack():
    ws = Workspace(PluginSystem(), cache_dir=Path("/nonexistent"), device=torch.device("cpu"))
    a = _transfer(_loaded(TinyClassifier(seed=0)), ws=ws)
    b = _transfer(_loaded(TinyClassifier(seed=1)), ws=ws)
    c = _transfer(_loaded(TinyClassifier(seed=0)), ws=ws, attack_params={"steps": 7})
    assert a.weights_digest() == _transfer(_loaded(TinyClassifier(seed=0)), ws=ws).weights_digest()
    assert len({a.weights_digest(), b.weights_digest(), c.weights_digest()}) == 3


def test_a_transfer_matrix_runs_end_to_end(tmp_path, toy_plugins):
    """Two toy models (different seeds), each attacked by PGD crafted on either: a 2x2 matrix
    whose cells make no query and whose diagonal fools at least as often as the off-diagonal."""
    from musicbench.session import RunOptions, execute
    from musicbench.store import Store

    config = tmp_path / "run.toml"
    config.write_text("""
[run]
fad_encoder = ""
samples = 8
batch_size = 4
device = "cpu"

[[datasets]]
name = "toy-tones"

[[models]]
name = "toy-model"
label = "toy-a"

[[models]]
name = "toy-model"
label = "toy-b"
seed = 1

[[defenses]]
name = "none"

[[attacks]]
name = "pgd"
eps = 0.05
steps = 10

[[attacks]]
name = "transfer"
label = "pgd from toy-a"
surrogate = "toy-model"
attack = "pgd"
attack_params = { eps = 0.05, steps = 10 }

[[attacks]]
name = "transfer"
label = "pgd from toy-b"
surrogate = "toy-model"
surrogate_params = { seed = 1 }
attack = "pgd"
attack_params = { eps = 0.05, steps = 10 }
""")
    outcome = execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    assert not outcome.failed and len(outcome.records) == 6
    store = Store(tmp_path / "out" / "results.sqlite", readonly=True)
    try:
        cells = {c.names[1:4:2]: c for c in store.cells()}
    finally:
        store.close()
    for cell in (c for c in cells.values() if c.spec.attack.name == "transfer"):
        assert all(s.queries == 0 for s in cell.samples)
        assert cell.spec.threat == "black-box" and cell.spec.threat_model.eps == 0.05
    rate = {k: c.info.n_success / max(c.info.n_attacked, 1) for k, c in cells.items()}
    assert rate[("toy-a", "pgd from toy-a")] >= rate[("toy-a", "pgd from toy-b")]
    assert rate[("toy-b", "pgd from toy-b")] >= rate[("toy-b", "pgd from toy-a")]
    # benchmarks/transfer_matrix.py on the same store: surrogates matched to the targets
    # (the default seed filled in), the direct PGD as the reference row, every transfer
    # compared with it on its target
    from conftest import benchmark_script

    module = benchmark_script("transfer_matrix")
    store = Store(tmp_path / "out" / "results.sqlite", readonly=True)
    try:
        out = module.matrices(store.cells(), toy_plugins)
    finally:
        store.close()
    assert list(out) == ["pgd"]
    assert set(out["pgd"]["rows"]) == {"toy-a", "toy-b"}
    assert all(set(cells) == {"toy-a", "toy-b"} for cells in out["pgd"]["rows"].values())
    assert set(out["pgd"]["direct"]) == {"toy-a", "toy-b"}
    pairs = module.paired(out)
    assert len(pairs) == 4 and all(0 <= r["p_holm"] <= 1 for r in pairs)
    text = module.render(out, pairs)
    assert "| toy-a (transfer) |" in text and "4 comparisons, Holm-adjusted" in text
