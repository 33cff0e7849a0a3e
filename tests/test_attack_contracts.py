"""Every registered attack passes the conformance checks of `musicbench validate`, and the
harness rejects attacks that break the contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from musicbench.cache import cache_dir
from musicbench.errors import AttackContractError
from musicbench.interfaces import TargetModel
from musicbench.plugins import PluginSystem
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.validate import validate_plugin
from musicbench.victim import Victim
from musicbench.workspace import Workspace
from musicbench_plugins.attacks.pgd import PGD, PGDParams

BUILTIN_ATTACKS = sorted(PluginSystem().registry("attack").names())
BLACK_BOX = [n for n in BUILTIN_ATTACKS
             if PluginSystem().get("attack", n).load().threat == "black-box"]


@pytest.mark.parametrize("name", BUILTIN_ATTACKS)
def test_builtin_attack_passes_validation(name):
    if _skip_reason(name):
        pytest.skip(f"attack '{name}' opts out of contract tests: {_skip_reason(name)}")
    report = validate_plugin(name, kind="attack", device="cpu", params=_contract_params(name))
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, failed
    assert len(report.checks) >= 5


def test_validation_catches_contract_breakers(toy_plugins):
    report = validate_plugin("out-of-range", kind="attack", device="cpu", plugins=toy_plugins)
    assert not report.ok
    failed = [c for c in report.checks if not c.ok]
    assert "outside [-1, 1]" in failed[0].detail


@pytest.fixture
def model():
    m = TinyClassifier()
    m.load()
    return m


def test_pgd_stays_in_bound_stops_early_and_succeeds_with_a_large_eps(model):
    x = tone_batch(6, model.input_samples, seed=3)
    victim = Victim(model)
    with torch.no_grad():
        y = victim.predict(x)
    attack = PGD(PGDParams(eps=0.05, steps=30))
    res = attack(victim, x, y, generator=torch.Generator().manual_seed(0))
    assert (res.adv - x).abs().max() <= 0.05 + 1e-7
    assert res.success.all()
    # a sample stops stepping once fooled: its queries are steps + at most one check
    assert (res.queries <= res.steps + 1).all() and (res.steps < 30).any()


def test_harness_rejects_a_bound_violation(model):
    class Cheat(PGD):
        def run(self, victim, audio, target, *, generator):
            out = super().run(victim, audio, target, generator=generator)
            out.adv = (audio + 2 * self.params.eps).clamp(-1, 1)
            return out

    x = tone_batch(2, model.input_samples)
    victim = Victim(model)
    with torch.no_grad():
        y = victim.predict(x)
    with pytest.raises(AttackContractError, match="exceeded its linf bound"):
        Cheat(PGDParams(eps=0.01, steps=2))(victim, x, y, generator=torch.Generator())


def test_harness_rescores_success_instead_of_trusting_the_attack(model):
    class Liar(PGD):
        def run(self, victim, audio, target, *, generator):
            out = super().run(victim, audio, target, generator=generator)
            out.adv = audio.clone()
            out.success = torch.ones_like(out.success)
            return out

    x = tone_batch(3, model.input_samples)
    victim = Victim(model)
    with torch.no_grad():
        y = victim.predict(x)
    res = Liar(PGDParams(eps=0.01, steps=2))(victim, x, y, generator=torch.Generator())
    assert not res.success.any()


@pytest.mark.parametrize("name", ["toy-model", "toy-embedder"])
def test_model_validation_runs_every_check(name, toy_plugins):
    report = validate_plugin(name, kind="model", device="cpu", plugins=toy_plugins)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]
    names = " ".join(c.name for c in report.checks)
    for expected in ("odd longer length", "shorter length", "deterministic", "differentiable"):
        assert expected in names


# -- every registered attack, on a tiny model: the DESIGN.md section 4 contract -------------
#
# An attack class may set ``contract_params`` (a dict of parameters that make it cheap or
# runnable here, e.g. a non-learned inpainter) and ``contract_skip`` (a reason string: the
# attack cannot run in unit tests yet). Both are read from the registered class, so attacks
# registered later are covered without editing this file.


def _attack_class(name: str) -> type:
    return PluginSystem().get("attack", name).load()


def _skip_reason(name: str) -> str | None:
    return getattr(_attack_class(name), "contract_skip", None)


def _contract_params(name: str) -> dict:
    """Black-box attacks get a 200-query budget here (test time); the class may override."""
    cls = _attack_class(name)
    small = {"budget": 200} if cls.threat == "black-box" else {}
    return small | dict(getattr(cls, "contract_params", {}) or {})


def _make_attack(name: str, **overrides):
    reason = _skip_reason(name)
    if reason:
        pytest.skip(f"attack '{name}' opts out of contract tests: {reason}")
    ws = Workspace(PluginSystem(), cache_dir=cache_dir(), device=torch.device("cpu"))
    attack = ws.make("attack", name, _contract_params(name) | overrides)
    attack.prepare(ws.ctx)
    return attack


def _victim_for(attack, model, **kwargs) -> Victim:
    """The victim the runner builds: black-box attacks get no gradients and their budget."""
    black_box = attack.threat == "black-box"
    return Victim(model, allow_gradients=not black_box,
                  budget=getattr(attack.params, "budget", None) if black_box else None, **kwargs)


class _FragileNet(nn.Module):
    """Logits ``[offset_i + slope_i * mean(x - clean_i), 0]`` for rows near clean clip i (the
    nearest clean clip): margin = ``offset_i`` on the clean clip, falling linearly as the
    attack moves the clip's mean down. ``conv`` (an identity 1x1 convolution) is there for
    attacks that read a Grad-CAM layer."""

    def __init__(self, clean: torch.Tensor, offset: torch.Tensor, slope: torch.Tensor):
        super().__init__()
        self.register_buffer("clean", clean)
        self.register_buffer("offset", offset)
        self.register_buffer("slope", slope)
        self.conv = nn.Conv1d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.conv(audio.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            nearest = torch.cdist(audio.detach(), self.clean).argmin(1)
        shift = (h - self.clean[nearest]).mean(-1)
        true = self.offset[nearest] + self.slope[nearest] * shift
        return torch.stack([true, torch.zeros_like(true)], -1)


class FragileModel(TargetModel):
    """A 2-class model over given clean clips (label 0 is right for every clip) whose margin
    per clip is set by hand: ``offset < 0`` already wrong, small offset with a steep slope
    flips with any step down, large offset with a gentle slope never flips in a small ball."""

    task = "classification"
    sample_rate = 16_000
    input_seconds = 0.25
    cam_layer = "conv"
    labels = ("right", "wrong")

    def __init__(self, clean: torch.Tensor, offset: list[float], slope: list[float]):
        super().__init__(None)
        self.name = "fragile"
        self.net = _FragileNet(clean, torch.tensor(offset), torch.tensor(slope))
        self.net.eval().requires_grad_(False)

    def load(self, ctx=None) -> None:
        pass

    def module(self) -> nn.Module:
        return self.net

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.net(audio)


def fragile_setup() -> tuple[FragileModel, torch.Tensor, torch.Tensor]:
    """Clips [already wrong, fragile, robust, robust] and their (right) labels."""
    x = tone_batch(4, 4000, seed=5)
    model = FragileModel(x, offset=[-1.0, 1.0, 100.0, 100.0], slope=[0.0, 1e4, 100.0, 100.0])
    return model, x, torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("name", BUILTIN_ATTACKS)
def test_attack_keeps_the_output_contract_and_is_deterministic(name, model):
    attack = _make_attack(name)
    x = tone_batch(3, model.input_samples, seed=2)
    with torch.no_grad():
        y = Victim(model).predict(x)

    def run():
        victim = _victim_for(attack, model)
        return victim, attack(victim, x, y, generator=torch.Generator().manual_seed(7))

    victim, res = run()
    assert res.adv.shape == x.shape and res.adv.dtype == x.dtype
    assert res.adv.device == x.device and not res.adv.requires_grad
    assert torch.isfinite(res.adv).all() and res.adv.abs().max() <= 1.0
    bound = attack.bound()
    if bound is not None:
        delta = (res.adv - x).flatten(1)
        size = delta.abs().amax(1) if bound.norm == "linf" else delta.norm(dim=1)
        assert (size <= bound.eps * (1 + 1e-5) + 1e-7).all(), size
    assert res.queries.shape == res.steps.shape == res.success.shape == (3,)
    assert (res.queries > 0).all()
    assert torch.equal(run()[1].adv, res.adv), "same seed, different adversarial audio"
    if attack.threat == "black-box":
        assert int(victim.gradient_calls.sum()) == 0


@pytest.mark.parametrize("name", BLACK_BOX)
def test_black_box_attack_respects_its_budget_without_gradients(name):
    model, x, y = fragile_setup()
    attack = _make_attack(name, budget=60)
    victim = _victim_for(attack, model)
    assert victim.budget == 60 and not victim.allow_gradients
    # A victim that refuses gradients and raises past the budget: the attack must not trip it.
    res = attack(victim, x, y, generator=torch.Generator().manual_seed(0))
    assert int(res.queries.max()) <= 60
    assert int(victim.gradient_calls.sum()) == 0
    # the robust clips cannot be fooled: they spend (almost) the whole budget
    assert (res.queries[2:] >= 60 - 2).all(), res.queries


@pytest.mark.parametrize("name", BUILTIN_ATTACKS)
def test_attack_stops_early_per_sample(name):
    model, x, y = fragile_setup()
    note = getattr(_attack_class(name), "contract_fragile_note", None)
    # black-box: enough budget to fool the fragile clip (NES needs ~5 iterations of 51)
    more = {"budget": 400} if name in BLACK_BOX and not note else {}
    attack = _make_attack(name, **more)
    victim = _victim_for(attack, model)
    res = attack(victim, x, y, generator=torch.Generator().manual_seed(0))
    # already wrong: never attacked (one query at most to find out, two for slack)
    assert int(res.queries[0]) <= 2, res.queries
    if note:  # the attack declares why the fragile clip is out of its reach
        pytest.skip(f"'{name}': {note}")
    # fragile: fooled, and it stops spending queries long before the robust clips do
    assert bool(res.success[1]), "the fragile clip should be fooled"
    assert not res.success[2:].any()
    robust = int(res.queries[2:].min())
    assert int(res.queries[1]) < robust or robust <= 1, res.queries  # <= 1: one-shot attacks


def test_harness_checks_per_clip_snr_bounds(model):
    """An attack declaring an SNR budget is held to each clip's own radius by the harness."""
    from musicbench.interfaces import Attack, AttackResult, Bound, snr_radius

    class LoudByOne(Attack):
        """Perturbs clip 1 by a radius 10% over its 30 dB budget, the others within it."""

        def bound(self) -> Bound:
            return Bound("l2", 0.0, snr_db=30.0)

        def run(self, victim, audio, target, *, generator):  # noqa: ANN001
            radius = snr_radius(audio, 30.0, "l2")  # [B, 1]
            direction = torch.ones_like(audio) / audio.shape[1] ** 0.5
            scale = torch.full_like(radius, 0.9)
            scale[1] = 1.1
            adv = (audio + direction * radius * scale).clamp(-1, 1)
            n = audio.shape[0]
            return AttackResult(adv, torch.zeros(n, dtype=torch.bool),
                                torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))

    attack = LoudByOne()
    attack.name = "loud-by-one"
    x = tone_batch(3, model.input_samples, seed=4) * torch.tensor([[0.2], [0.5], [0.9]])
    with pytest.raises(AttackContractError, match="clip 1.*30 dB SNR budget"):
        attack(Victim(model), x, torch.zeros(3, dtype=torch.long),
               generator=torch.Generator().manual_seed(0))
    # A real attack under an SNR budget passes the same check, clip by clip.
    pgd = PGD(PGDParams(norm="l2", snr_db=30.0, steps=5))
    pgd.name = "pgd"
    res = pgd(Victim(model), x, torch.zeros(3, dtype=torch.long),
              generator=torch.Generator().manual_seed(0))
    assert pgd.bound().snr_db == 30.0 and res.adv.shape == x.shape
