"""Defenses are attacked adaptively by the harness (docs/architecture.md, 'Evaluation
protocol'): flags are measured, not trusted; EOT, BPDA and the judgement over draws are the
harness's; clean verdicts are
shared by every cell of a row; a broken defense costs only its cells."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
import torch
from toyplugins import LyingNoise, LyingRound, ToyLowpass, ToyNoise, ToyRound

from musicbench.cells import CellRun
from musicbench.config import parse_config
from musicbench.defense_checks import measure
from musicbench.errors import ConfigError
from musicbench.planner import evaluation
from musicbench.session import RunOptions, execute
from musicbench.store import SCHEMA_VERSION, Store
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.validate import validate_plugin
from musicbench.victim import Scorer, Victim, begin_batch


def _model() -> TinyClassifier:
    model = TinyClassifier()
    model.load()
    return model


def _bound(defense):
    defense.name = type(defense).__name__
    defense.bind(16_000)
    return defense


def test_measured_flags_catch_declarations_that_would_weaken_the_evaluation():
    honest_noise = measure(_bound(ToyNoise()), 16_000)
    assert honest_noise.randomized and honest_noise.reproducible and not honest_noise.mismatches()
    lying_noise = measure(_bound(LyingNoise()), 16_000)
    assert lying_noise.attack_randomized and "declares randomized = False" in \
        lying_noise.mismatches()[0]
    honest_round = measure(_bound(ToyRound()), 16_000)
    assert not honest_round.differentiable and honest_round.attack_with_bpda
    assert not honest_round.mismatches()
    lying_round = measure(_bound(LyingRound()), 16_000)
    assert lying_round.attack_with_bpda and "declares differentiable = True" in \
        lying_round.mismatches()[0]


class _StraightThroughRound(ToyRound):
    """Shattered gradients (Athalye et al. 2018): rounding with a straight-through identity
    gradient, declared differentiable: the gradient is nonzero but describes a line, not the
    staircase the model sees."""

    differentiable = True

    def forward(self, audio, generator):
        return audio + (torch.round(audio * 16) / 16 - audio).detach()


class _SoftClip(ToyRound):
    """Smooth and nonlinear: its gradient describes it."""

    differentiable = True

    def forward(self, audio, generator):
        return torch.tanh(3 * audio) / 3


def test_a_gradient_that_does_not_describe_the_output_is_shattered_and_gets_bpda():
    shattered = measure(_bound(_StraightThroughRound()), 16_000)
    assert shattered.shattered and not shattered.differentiable and shattered.attack_with_bpda
    assert abs(shattered.gradient_fd_ratio - 1) > 0.5
    (mismatch,) = shattered.mismatches()
    assert "does not describe its output" in mismatch and "shattered" in mismatch
    smooth = measure(_bound(_SoftClip()), 16_000)
    assert smooth.differentiable and not smooth.shattered and not smooth.mismatches()
    assert abs(smooth.gradient_fd_ratio - 1) < 0.01
    assert measure(_bound(ToyRound()), 16_000).gradient_fd_ratio is None  # no gradient


def test_a_defense_drawing_outside_its_generator_is_not_reproducible():
    class GlobalNoise(ToyNoise):
        def forward(self, audio, generator):
            return (audio + 0.01 * torch.randn(audio.shape)).clamp(-1, 1)

    behaviour = measure(_bound(GlobalNoise()), 16_000)
    assert not behaviour.reproducible and behaviour.attack_randomized
    assert any("outside the generator" in m for m in behaviour.mismatches())


def _settings(text: str = ""):
    return parse_config(f"""
[run]
{text}
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
[[defenses]]
name = "toy-noise"
eot_samples = 4
[[attacks]]
name = "pgd"
[[attacks]]
name = "pgd"
label = "pgd-eot16"
eot_samples = 16
[[attacks]]
name = "pgd"
label = "pgd-naive"
adaptive = false
""")


def test_evaluation_settings_follow_behaviour_and_overrides():
    config = _settings("eot_samples = 2\neval_draws = 5")
    defense = config.components["defense"][0]
    plain, eot16, naive = config.components["attack"]
    noisy = measure(_bound(ToyNoise()), 16_000)
    rounding = measure(_bound(ToyRound()), 16_000)
    lowpass = measure(_bound(ToyLowpass()), 16_000)
    base = {"oblivious": False}
    plain_defense = dataclasses.replace(defense, eot_samples=None)  # nothing forced
    # the defense entry's eot_samples beats [run]'s, the attack entry's beats both
    assert evaluation(config.run, defense, plain, "white-box", noisy) == base | {
        "eot_samples": 4, "eval_draws": 5, "bpda": False, "adaptive": True}
    assert evaluation(config.run, defense, eot16, "white-box", noisy)["eot_samples"] == 16
    # a black-box entry gets the same draws (each a query of its budget), so resampling
    # noise is never a success
    assert evaluation(config.run, defense, plain, "black-box", noisy)["eot_samples"] == 4
    assert evaluation(config.run, defense, eot16, "black-box", noisy)["eot_samples"] == 16
    # non-adaptive: no EOT, no BPDA, but success is still judged over the draws
    assert evaluation(config.run, defense, naive, "white-box", noisy) == base | {
        "eot_samples": 1, "eval_draws": 5, "bpda": False, "adaptive": False}
    assert evaluation(config.run, plain_defense, plain, "white-box", rounding) == base | {
        "eot_samples": 1, "eval_draws": 1, "bpda": True, "adaptive": True}
    # a black-box attack takes no gradients: no BPDA to apply
    assert not evaluation(config.run, defense, plain, "black-box", rounding)["bpda"]
    # nothing to adapt to: a non-adaptive cell would repeat its adaptive twin, so none
    # (unless the defense entry forces EOT: then there is)
    assert evaluation(config.run, plain_defense, naive, "white-box", lowpass) is None
    assert evaluation(config.run, defense, naive, "white-box", lowpass) is not None
    assert evaluation(config.run, plain_defense, naive, "black-box", rounding) is None
    assert CellRun(0, 8, 8, 0, "", (), eot_samples=4, eval_draws=5).adaptive_label == "eot"
    assert CellRun(0, 8, 8, 0, "", (), bpda=True).adaptive_label == "bpda"
    assert CellRun(0, 8, 8, 0, "", (), adaptive=False).adaptive_label == "non-adaptive"
    assert CellRun(0, 8, 8, 0, "", (), oblivious=True).adaptive_label == "oblivious"


def test_an_oblivious_attacker_crafts_on_the_undefended_model():
    config = _settings()
    defense = config.components["defense"][0]
    oblivious = dataclasses.replace(config.components["attack"][0], adaptive="oblivious")
    rounding = measure(_bound(ToyRound()), 16_000)
    assert evaluation(config.run, defense, oblivious, "white-box", rounding) == {
        "eot_samples": 1, "eval_draws": 1, "bpda": False, "adaptive": True, "oblivious": True}


def test_evaluation_settings_at_their_no_op_values_stay_out_of_the_key():
    base = CellRun(0, 8, 8, 0, "", ("lsd",))
    assert base.key_data() == CellRun(0, 8, 8, 0, "", ("lsd",), eot_samples=1).key_data()
    assert "eot_samples" in CellRun(0, 8, 8, 0, "", ("lsd",), eot_samples=8).key_data()


@pytest.mark.parametrize("entry, key", [("eot_samples = 0", "eot_samples"),
                                        ("eval_draws = 1.5", "eval_draws")])
def test_bad_draw_counts_are_config_errors(entry, key):
    with pytest.raises(ConfigError, match=key):
        parse_config(f"""
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
[[defenses]]
name = "toy-noise"
{entry}
[[attacks]]
name = "pgd"
""")


def test_eot_averages_the_configured_draws_and_counts_each():
    model = _model()
    defense = _bound(ToyNoise())
    calls = []
    original = defense.forward
    defense.forward = lambda audio, gen: calls.append(1) or original(audio, gen)
    victim = Victim(model, defense=defense, eot_samples=6,
                    generator=torch.Generator().manual_seed(0))
    x = tone_batch(3, model.input_samples).requires_grad_(True)
    begin_batch(victim, 3)
    victim.loss(x, torch.zeros(3, dtype=torch.long)).sum().backward()
    assert len(calls) == 6 and victim.queries.tolist() == [6, 6, 6]
    black = Victim(model, defense=defense, eot_samples=6, allow_gradients=False,
                   generator=torch.Generator().manual_seed(0))
    begin_batch(black, 3)
    black.scores(x.detach())  # a black-box attack's queries count every draw it is given
    assert black.queries.tolist() == [6, 6, 6]


def test_bpda_gradient_is_the_surrogates():
    """Forward through the defense, backward through the surrogate (the identity here): the
    gradient is the model's gradient at the defended point."""
    model = _model()
    defense = _bound(ToyRound())
    y = torch.tensor([0, 1])
    x = tone_batch(2, model.input_samples).requires_grad_(True)
    victim = Victim(model, defense=defense, bpda=True)
    begin_batch(victim, 2)
    (grad,) = torch.autograd.grad(victim.loss(x, y).sum(), x)
    at = defense.forward(x.detach(), torch.Generator()).requires_grad_(True)
    plain = Victim(model)
    begin_batch(plain, 2)
    (expected,) = torch.autograd.grad(plain.loss(at, y).sum(), at)
    assert torch.allclose(grad, expected) and grad.abs().sum() > 0


def test_judgement_over_draws_is_a_majority_of_wrong_draws():
    model = _model()
    x = tone_batch(4, model.input_samples)
    with torch.no_grad():
        y = Scorer(model).predict(x)
    scorer = Scorer(model, defense=_bound(ToyNoise(ToyNoise.Params(sigma=0.5))),
                    generator=torch.Generator().manual_seed(3))
    verdict = scorer.judge(x, y, draws=9)
    assert verdict.wrong_fraction.shape == (4,)
    assert torch.all((verdict.wrong_fraction * 9).round() == verdict.wrong_fraction * 9)
    assert torch.equal(verdict.fooled, verdict.wrong_fraction > 0.5)
    # deterministic model, one draw: wrong is wrong
    once = Scorer(model).judge(x, (y + 1) % 3, draws=1)
    assert once.fooled.all()
    assert torch.equal(once.wrong_fraction, torch.ones(4, dtype=torch.float64))


RUN = """
[run]
samples = 6
batch_size = 4
device = "cpu"
fad_encoder = ""
eot_samples = 3
eval_draws = 5
[[datasets]]
name = "toy-tones"
other_labels = true
[[models]]
name = "toy-model"
pseudo_labels = true
{defenses}
[[attacks]]
name = "fgsm"
eps = 0.01
[[attacks]]
name = "pgd"
eps = 0.01
steps = 3
[[attacks]]
name = "pgd"
label = "pgd-naive"
eps = 0.01
steps = 3
adaptive = false
[[attacks]]
name = "pgd"
label = "pgd-oblivious"
eps = 0.01
steps = 3
adaptive = "oblivious"
"""

DEFENSES = """
[[defenses]]
name = "toy-noise"
[[defenses]]
name = "toy-round"
[[defenses]]
name = "lying-noise"
[[defenses]]
name = "raising-defense"
"""


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    from conftest import run_toy_config

    return run_toy_config(tmp_path_factory.mktemp("adaptive"), RUN.format(defenses=DEFENSES))


def _cells(outcome, defense, *, gates: bool = False):
    """The row's cells by attack label: the config's entries (and the sanity gates the
    harness planned, with ``gates``)."""
    return {r.spec.attack.label: r for r in outcome.records if r.spec.defense.name == defense
            and (gates or not r.spec.run.role)}


def test_randomized_defense_gets_eot_and_a_row_wide_clean_verdict(adaptive_run):
    outcome, _ = adaptive_run
    cells = _cells(outcome, "toy-noise")
    assert {label: r.info.adaptive for label, r in cells.items()} == {
        "fgsm": "eot", "pgd": "eot", "pgd-naive": "non-adaptive", "pgd-oblivious": "oblivious"}
    assert all(r.status == "ok" for r in cells.values())
    # the first gradient attack (fgsm) is checked at 10x its radius and through the identity
    # (fgsm has no steps to double: no convergence cell)
    gates = {label: r.spec.run.role for label, r in _cells(outcome, "toy-noise",
                                                           gates=True).items()
             if r.spec.run.role}
    assert gates == {"fgsm, 10×ε": "large-radius", "fgsm, BPDA identity": "identity-bpda"}
    # clean verdicts come from the row's own stream: identical in every cell of the row
    clean = {label: [(s.clean_correct, s.clean_wrong) for s in r.samples]
             for label, r in cells.items()}
    assert clean["fgsm"] == clean["pgd"] == clean["pgd-naive"] == clean["pgd-oblivious"]
    assert all(w is not None and (w * 5).is_integer() for _, w in clean["pgd"])
    for r in cells.values():
        for s in r.samples:
            assert (s.adv_wrong is not None) == s.attacked
            if s.attacked:
                assert s.success == (s.adv_wrong > 0.5)
    assert "🔴 non-adaptive" in cells["pgd-naive"].info.flags[-1] or any(
        "non-adaptive" in f for f in cells["pgd-naive"].info.flags)


def test_rounding_defense_gets_bpda_and_the_naive_attack_sees_no_gradient(adaptive_run):
    outcome, _ = adaptive_run
    cells = _cells(outcome, "toy-round")
    assert cells["pgd"].info.adaptive == "bpda" and cells["pgd-naive"].info.adaptive == \
        "non-adaptive"
    assert cells["pgd"].info.input_gradient_median > 0
    assert cells["pgd-naive"].info.input_gradient_median == 0.0
    assert any("vanishing gradients" in f for f in cells["pgd-naive"].info.flags)
    assert not any("vanishing gradients" in f for f in cells["pgd"].info.flags)
    # deterministic: one draw decides, nothing stored per draw
    assert all(s.clean_wrong is None for s in cells["pgd"].samples)


def test_a_lying_defense_is_attacked_as_measured_and_flagged(adaptive_run):
    outcome, _ = adaptive_run
    cells = _cells(outcome, "lying-noise")
    assert cells["pgd"].info.adaptive == "eot"
    assert any("declares randomized = False" in f for f in cells["pgd"].info.flags)


def test_a_raising_defense_costs_only_its_cells(adaptive_run):
    outcome, out = adaptive_run
    broken = _cells(outcome, "raising-defense")
    assert all(r.status == "failed" and "always fails" in r.error for r in broken.values())
    others = [r for r in outcome.records if r.spec.defense.name != "raising-defense"]
    assert others and all(r.status == "ok" for r in others)
    # per-draw fractions reach the store
    store = Store(out / "results.sqlite", readonly=True)
    records = store.cells()
    store.close()
    noisy = [s for r in records if r.spec.defense.name == "toy-noise" for s in r.samples]
    assert noisy and all(s.clean_wrong is not None for s in noisy)


def test_a_nan_defense_fails_its_cells_with_a_clear_error(tmp_path, toy_plugins):
    (tmp_path / "run.toml").write_text(RUN.format(defenses='[[defenses]]\nname = "nan-defense"'))
    outcome = execute(RunOptions(config=tmp_path / "run.toml", out=tmp_path / "out"), toy_plugins)
    assert outcome.records and all(r.status == "failed" for r in outcome.records)
    assert all("DefenseContractError" in r.error and "NaN" in r.error for r in outcome.records)


def test_a_rate_dependent_bad_parameter_exits_before_any_work(tmp_path, toy_plugins):
    defenses = '[[defenses]]\nname = "toy-lowpass"\ncutoff_hz = 9000.0'
    (tmp_path / "run.toml").write_text(RUN.format(defenses=defenses))
    with pytest.raises(ConfigError, match=r"\[defenses.toy-lowpass\] key 'cutoff_hz'"):
        execute(RunOptions(config=tmp_path / "run.toml", out=tmp_path / "out"), toy_plugins)
    assert not (tmp_path / "out" / "results.sqlite").exists()


@pytest.mark.parametrize("name, ok", [("toy-noise", True), ("toy-round", True),
                                      ("lying-noise", False), ("lying-round", False)])
def test_validate_holds_a_defense_to_its_declared_flags(name, ok, toy_plugins):
    report = validate_plugin(name, kind="defense", plugins=toy_plugins, device="cpu",
                             clips="toy-tones")
    assert report.ok == ok, [(c.name, c.detail) for c in report.checks if not c.ok]


def test_a_schema_2_store_is_migrated_when_opened_for_writing(tmp_path):
    path = tmp_path / "results.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as conn:  # make it look like a store written by schema 2
        conn.execute("ALTER TABLE samples DROP COLUMN clean_wrong")
        conn.execute("ALTER TABLE samples DROP COLUMN adv_wrong")
        conn.execute("UPDATE meta SET value='2' WHERE key='schema'")
    Store(path, readonly=True).cells()  # read as it is
    store = Store(path)
    columns = [r[1] for r in store.conn.execute("PRAGMA table_info(samples)")]
    assert columns[-2:] == ["clean_wrong", "adv_wrong"]
    assert store.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == \
        str(SCHEMA_VERSION)


@pytest.mark.parametrize("name", ["nes", "zoo", "square"])
def test_black_box_attacks_keep_their_budget_when_every_row_costs_several_draws(name,
                                                                                toy_plugins):
    """Against a randomized defense each scored row costs ``eot_samples`` queries; attacks
    that plan with ``remaining_budget`` stay within the budget."""
    from musicbench.workspace import Workspace

    ws = Workspace(toy_plugins, cache_dir=Path("/nonexistent"), device=torch.device("cpu"))
    attack = ws.make("attack", name, {"budget": 60})
    model = _model()
    x = tone_batch(3, model.input_samples)
    with torch.no_grad():
        y = Scorer(model).predict(x)
    victim = Victim(model, defense=_bound(ToyNoise()), eot_samples=4, allow_gradients=False,
                    budget=60, generator=torch.Generator().manual_seed(0))
    assert victim.queries_per_row == 4
    result = attack(victim, x, y, generator=torch.Generator().manual_seed(1))
    assert int(result.queries.max()) <= 60
    assert all(q % 4 == 0 for q in result.queries.tolist())  # whole rows of 4 draws each


class _WrongShape(ToyNoise):
    def forward(self, audio, generator):
        return audio[:, :-1]


class _TooLoud(ToyNoise):
    def forward(self, audio, generator):
        return audio * 0 + 1.5


@pytest.mark.parametrize("defense, message", [(_WrongShape, "must keep the shape"),
                                              (_TooLoud, r"outside \[-1, 1\]")])
def test_a_defense_breaking_the_output_contract_is_named(defense, message):
    from musicbench.errors import DefenseContractError

    victim = Victim(_model(), defense=_bound(defense()))
    x = tone_batch(2, victim.model.input_samples)
    begin_batch(victim, 2)
    with pytest.raises(DefenseContractError, match=message):
        victim.scores(x)


@pytest.mark.parametrize("entry, key", [("name = \"lowpass\"\ncutoff_hz = 9000.0", "cutoff_hz"),
                                        ("name = \"mp3\"\nbitrate_kbps = 33", "bitrate_kbps"),
                                        ("name = \"noise\"\nsigmaa = 0.1", "sigmaa")])
def test_a_misconfigured_built_in_defense_exits_2_naming_table_and_key(tmp_path, toy_site, entry,
                                                                       key):
    from conftest import cli

    config = tmp_path / "run.toml"
    config.write_text(RUN.format(defenses=f"[[defenses]]\n{entry}").replace(
        'name = "toy-tones"\nother_labels = true', 'name = "toy-tones"'))
    proc = cli("run", str(config), "--out", str(tmp_path / "out"), sites=(toy_site,))
    assert proc.returncode == 2, proc.stderr
    assert f"key '{key}'" in proc.stderr and "[defenses." in proc.stderr
    assert not (tmp_path / "out" / "results.sqlite").exists()


def test_eot_early_stop_needs_every_draw_wrong():
    """A mean margin <= 0 can come from one draw far off while the rest are right; the
    harness would then judge the clip robust. The victim's margin under EOT is the largest
    over the draws."""
    from musicbench.victim import eot_margin

    right, far_off = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[-20.0, 0.0, 0.0]])
    logits = torch.stack([far_off] + [right] * 7)  # [D=8, B=1, K=3]
    target = torch.tensor([0])
    assert float(logits.mean(0)[0, 0] - 0.0) < 0  # the mean says fooled
    assert float(eot_margin(logits, target)[0]) > 0  # the rule does not
    assert float(eot_margin(torch.stack([far_off] * 8), target)[0]) < 0


def test_a_nondeterministic_defense_on_a_deterministic_plan_fails_its_cell():
    from musicbench.runner import _as_planned

    behaviour = measure(_bound(ToyNoise()), 16_000)
    spec = type("Spec", (), {"run": CellRun(0, 8, 8, 0, "", ()), "threat": "white-box",
                             "defense": type("Ref", (), {"name": "toy-noise"})()})()
    with pytest.raises(Exception, match="behaves randomized now"):
        _as_planned(spec, behaviour)


def test_contrast_cells_stay_out_of_worst_cases_and_flags(adaptive_run):
    from musicbench.leaderboard import build

    outcome, out = adaptive_run
    cells = _cells(outcome, "toy-round")
    assert cells["pgd-oblivious"].spec.run.contrast and cells["pgd-naive"].spec.run.contrast
    assert not cells["pgd"].spec.run.contrast
    assert cells["pgd-oblivious"].info.input_gradient_median is None
    assert any("oblivious" in f for f in cells["pgd-oblivious"].info.flags)
    store = Store(out / "results.sqlite", readonly=True)
    try:
        board = build(store)
    finally:
        store.close()
    assert board.contrasts == ["pgd-naive", "pgd-oblivious"]
    from musicbench.leaderboard import render_markdown

    assert "(contrasts, not in the worst case: pgd-naive, pgd-oblivious)" in \
        render_markdown(board)
    assert board.summary
    for summary in board.summary:
        for worst in summary.worst_case:
            assert not {"pgd-naive", "pgd-oblivious"} & set(worst.attacks), worst.attacks


# -- randomized models (a training defense's defended model included) ------------------------


class _DropoutModel(TinyClassifier):
    """Dropout on the logits, left on: every forward pass draws from the global RNG."""

    def forward(self, audio):
        return torch.nn.functional.dropout(super().forward(audio), p=0.5, training=True)


class _OwnGeneratorModel(TinyClassifier):
    """Draws from a generator of its own, which advances at every call: not reproducible
    from the global RNG."""

    def load(self, ctx=None):
        super().load(ctx)
        self._gen = torch.Generator().manual_seed(0)

    def forward(self, audio):
        logits = super().forward(audio)
        return logits + torch.randn(logits.shape, generator=self._gen)


def test_a_model_whose_forward_draws_is_measured_randomized():
    from musicbench.defense_checks import measure_model

    plain = measure_model(_model())
    assert not plain.randomized and plain.reproducible and not plain.flags()
    dropout = _DropoutModel()
    dropout.load()
    state = torch.random.get_rng_state()
    behaviour = measure_model(dropout, audio=tone_batch(2, 5000))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG untouched
    assert behaviour.randomized and behaviour.reproducible and behaviour.attack_randomized
    assert "is randomized" in behaviour.flags()[0]
    own = _OwnGeneratorModel()
    own.load()
    drawn = measure_model(own)
    assert not drawn.reproducible and drawn.attack_randomized
    assert any("not reproducible" in f for f in drawn.flags())


def test_eot_averages_a_randomized_models_draws_reproducibly():
    model = _DropoutModel()
    model.load()
    x = tone_batch(3, model.input_samples)
    y = torch.zeros(3, dtype=torch.long)

    def loss_and_grad(seed: int, eot: int):
        victim = Victim(model, eot_samples=eot, randomized_model=True,
                        generator=torch.Generator().manual_seed(seed))
        begin_batch(victim, 3)
        xg = x.clone().requires_grad_(True)
        loss = victim.loss(xg, y)
        (grad,) = torch.autograd.grad(loss.sum(), xg)
        return loss.detach(), grad, victim

    state = torch.random.get_rng_state()
    loss, grad, victim = loss_and_grad(0, 6)
    assert victim.queries.tolist() == [6, 6, 6] and victim.used_eot
    assert victim.queries_per_row == 6
    assert torch.equal(state, torch.random.get_rng_state())
    again, grad_again, _ = loss_and_grad(0, 6)
    assert torch.equal(loss, again) and torch.equal(grad, grad_again)  # the stream decides
    other, _, _ = loss_and_grad(1, 6)
    assert not torch.equal(loss, other)
    # without the flag the model is called once per row, as before
    plain = Victim(model, eot_samples=6)
    begin_batch(plain, 3)
    plain.scores(x)
    assert plain.queries.tolist() == [1, 1, 1]


def test_a_randomized_model_is_judged_over_fresh_draws():
    from musicbench.victim import judge

    model = _DropoutModel()
    model.load()
    x = tone_batch(6, model.input_samples, seed=2)
    victim = Victim(model, randomized_model=True, generator=torch.Generator().manual_seed(0))
    scorer = judge(victim)
    with torch.no_grad():
        y = Scorer(model).predict(x)
    verdict = scorer.judge(x, y, draws=15)
    fractions = verdict.wrong_fraction
    assert torch.all((fractions * 15).round() == fractions * 15)
    assert bool(((fractions > 0) & (fractions < 1)).any()), fractions  # draws disagree
