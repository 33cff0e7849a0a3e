"""APGD (Croce & Hein 2020) and Square Attack (Andriushchenko et al. 2020): their schedules,
DLR, bounds, budgets, early stop and strength against PGD, on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attack_contracts import fragile_setup

from musicbench.errors import MusicbenchError
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import ReferenceSet, Scorer, Victim, judge
from musicbench_plugins.attacks import apgd as apgd_module
from musicbench_plugins.attacks.apgd import (
    APGD,
    APGDParams,
    TooFewClassesError,
    checkpoints,
    dlr_loss,
    halve_at_checkpoint,
)
from musicbench_plugins.attacks.pgd import PGD, PGDParams
from musicbench_plugins.attacks.square import Square, SquareParams, window_fraction


@pytest.fixture(scope="module")
def tiny():
    model = TinyClassifier()
    model.load()
    x = tone_batch(24, model.input_samples, seed=3)
    with torch.no_grad():
        y = Scorer(model).predict(x)
    return model, x, y


def run(att, victim, x, y, seed=0):
    att.name = type(att).__name__.lower()
    return att(victim, x, y, generator=torch.Generator().manual_seed(seed))


# -- APGD: the step-size schedule ------------------------------------------------------------

def test_checkpoints_follow_the_papers_schedule():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99: the intervals shrink by 0.03 of
    # the run down to 0.06 (AutoAttack's 100-iteration checkpoints)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(50) == [11, 21, 29, 35, 40, 44, 47, 50]
    assert checkpoints(20)[:3] == [5, 9, 12]
    assert checkpoints(1) == [1]
    for n in (3, 7, 20, 100, 333):
        w = checkpoints(n)
        assert w == sorted(set(w)) and w[0] >= 1 and w[-1] <= n


def test_step_halves_when_the_loss_rose_too_rarely_or_the_best_stalled():
    interval, rho = 8, 0.75  # condition 1: fewer than 6 of 8 steps raised the loss
    increases = torch.tensor([5, 6, 8, 8, 8])
    halved_last = torch.tensor([False, False, False, True, False])
    best = torch.tensor([2.0, 2.0, 1.0, 1.0, 1.5])
    best_last = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    halve = halve_at_checkpoint(increases, interval, rho, halved_last, best, best_last)
    # 0: 5 < 6 rises -> halve; 1: 6 rises, best improved -> keep; 2: best stalled with the
    # step unchanged since the last checkpoint -> halve; 3: stalled, but the step was just
    # halved -> keep; 4: improved, enough rises -> keep
    assert halve.tolist() == [True, False, True, False, False]


class _Bowl:
    """A duck-typed victim whose 'cross-entropy' is ``-‖x - a‖²`` (a concave bowl whose top
    ``a`` lies inside the ball): signed steps overshoot and oscillate around ``a``, so the
    loss rises on only about half the steps and APGD must halve its step at every
    checkpoint. Records every evaluated iterate."""

    task = "classification"
    labels = ("a", "b", "c")
    references = None

    def __init__(self, top: torch.Tensor):
        self.top = top
        self.seen: list[torch.Tensor] = []
        self.queries = torch.zeros(top.shape[0], dtype=torch.long)

    def loss_and_margin(self, x, target, *, index):
        self.seen.append(x.detach().clone())
        self.queries[index] += 1
        loss = -(x - self.top[index]).square().sum(1)
        return loss, torch.ones_like(loss)


def test_step_size_halves_at_the_checkpoints_of_a_run(monkeypatch):
    calls = []
    real = apgd_module.halve_at_checkpoint

    def spy(increases, interval, *args):
        out = real(increases, interval, *args)
        calls.append((interval, out.clone()))
        return out

    monkeypatch.setattr(apgd_module, "halve_at_checkpoint", spy)
    eps, steps = 0.01, 40
    clean = torch.zeros(1, 400)
    victim = _Bowl(top=clean + 0.3 * eps)
    att = APGD(APGDParams(eps=eps, steps=steps))
    att.name = "apgd"
    att.run(victim, clean, torch.zeros(1, dtype=torch.long), generator=torch.Generator())
    w = checkpoints(steps)
    inside = [b for b in w if b < steps]  # a checkpoint at the last iterate is moot
    assert [c[0] for c in calls] == [b - a for a, b in zip([0, *inside], inside)]
    assert all(bool(c[1].all()) for c in calls), "the oscillating clip should halve each time"
    # the iterates' moves shrink with the step: the last interval moves < 1/8 of the first
    moves = [(b - a).abs().amax().item() for a, b in zip(victim.seen, victim.seen[1:])]
    assert max(moves[inside[-1]:]) < max(moves[: inside[0]]) / 8, moves
    assert len(victim.seen) == steps + 1  # x0 .. xN evaluated, nothing more


# -- APGD: DLR -------------------------------------------------------------------------------

def test_dlr_matches_a_hand_computation():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0], [-0.2, 0.5, 0.1, -1.0]])
    target = torch.tensor([0, 1, 2])
    # row 0: -(3 - 2) / (3 - 1); row 1: -(1 - 3) / (3 - 1); row 2: -(0.1 - 0.5) / (0.5 + 0.2)
    expected = torch.tensor([-0.5, 1.0, 0.4 / 0.7])
    assert torch.allclose(dlr_loss(scores, target), expected)
    # invariant to shifting and scaling the scores (why it suits similarities too)
    assert torch.allclose(dlr_loss(7 * scores - 3, target), expected, atol=1e-6)


def test_dlr_with_fewer_than_three_classes_fails_clearly_before_any_query():
    model = TinyClassifier(n_classes=2)
    model.load()
    x = tone_batch(2, model.input_samples)
    victim = Victim(model)
    att = APGD(APGDParams(loss="dlr", steps=3))
    with pytest.raises(TooFewClassesError, match=r"tiny-classifier' has 2 classes.*loss = \"ce\""):
        run(att, victim, x, torch.zeros(2, dtype=torch.long))
    assert issubclass(TooFewClassesError, MusicbenchError)
    assert int(victim.queries.sum()) == 0
    with pytest.raises(TooFewClassesError):
        dlr_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    # CE on the same model is fine
    run(APGD(APGDParams(loss="ce", steps=3)), Victim(model), x, torch.zeros(2, dtype=torch.long))


def _retrieval(works: int):
    model = TinyClassifier()
    model.load()
    model.task = "retrieval"
    model.embed = lambda audio: F.normalize(model.forward(audio), dim=-1)
    refs_audio = tone_batch(works, model.input_samples, seed=9)
    probe = Victim(model)
    emb = judge(probe).embed(refs_audio)
    return model, ReferenceSet(emb, torch.arange(works), works), refs_audio


def test_dlr_applies_to_retrieval_similarities_and_refuses_two_works():
    model, refs, audio = _retrieval(3)
    victim = Victim(model, references=refs)
    queries = (audio + 0.01 * torch.randn(audio.shape, generator=torch.Generator()
                                          .manual_seed(1))).clamp(-1, 1)
    res = run(APGD(APGDParams(loss="dlr", eps=0.05, steps=5)), victim, queries,
              torch.arange(3))
    assert (res.adv - queries).abs().max() <= 0.05 + 1e-6 and (res.queries > 0).all()
    model, refs, audio = _retrieval(2)
    with pytest.raises(TooFewClassesError, match="2 works in its reference set"):
        run(APGD(APGDParams(loss="dlr")), Victim(model, references=refs), audio[:2],
            torch.arange(2))


# -- APGD: bound, determinism, early stop, strength --------------------------------------

@pytest.mark.parametrize("params", [
    {"eps": 0.01}, {"eps": 0.01, "loss": "dlr", "restarts": 2},
    {"norm": "l2", "eps": 0.3}, {"snr_db": 30.0},
], ids=["linf-ce", "linf-dlr-restarts", "l2", "snr"])
def test_apgd_respects_its_bound_and_the_range_and_is_deterministic(params):
    model = TinyClassifier()
    model.load()
    loud = (1.4 * tone_batch(4, model.input_samples, seed=4)).clamp(-1, 1)  # many at ±1
    y = Scorer(model).predict(loud)
    att = APGD(APGDParams(steps=8, **params))
    res = run(att, Victim(model), loud, y)  # __call__ checks the bound too
    delta = (res.adv - loud).flatten(1)
    bound = att.bound()
    radius = bound.limits(loud)
    size = delta.abs().amax(1) if bound.norm == "linf" else delta.norm(dim=1)
    assert (size <= radius * (1 + 1e-5) + 1e-7).all() and res.adv.abs().max() <= 1.0
    assert torch.equal(run(att, Victim(model), loud, y).adv, res.adv)
    assert not torch.equal(run(att, Victim(model), loud, y, seed=1).adv, res.adv)


def test_apgd_stops_per_sample_and_restarts_only_the_survivors():
    model, x, y = fragile_setup()  # [already wrong, fragile, robust, robust]
    res = run(APGD(APGDParams(eps=0.002, steps=6, restarts=3)), Victim(model), x, y)
    assert int(res.queries[0]) == 1 and int(res.steps[0]) == 0
    assert res.success.tolist() == [True, True, False, False]
    assert int(res.queries[1]) <= 2
    # robust clips: every restart, each of 6 gradient steps plus the last iterate's check
    assert res.queries[2:].tolist() == [3 * 7, 3 * 7] and res.steps[2:].tolist() == [18, 18]


def test_apgd_is_at_least_as_strong_as_pgd_at_equal_steps(tiny):
    model, x, y = tiny
    eps, steps = 0.001, 10  # a radius where PGD fools about half of the clips
    pgd = run(PGD(PGDParams(eps=eps, steps=steps)), Victim(model), x, y)
    ours = run(APGD(APGDParams(eps=eps, steps=steps)), Victim(model), x, y)
    assert 0 < int(pgd.success.sum()) < len(y)
    assert int(ours.success.sum()) >= int(pgd.success.sum())
    # where neither succeeds, APGD's point is no less adversarial (higher CE) than PGD's
    both = ~pgd.success & ~ours.success
    scorer = Scorer(model)
    ce = lambda adv: F.cross_entropy(scorer.scores(adv[both]), y[both], reduction="none")
    assert ce(ours.adv).mean() > ce(pgd.adv).mean()


# -- Square Attack ---------------------------------------------------------------------------

def test_window_fraction_halves_at_the_papers_iterations_rescaled_to_the_budget():
    assert window_fraction(0, 10_000, 0.8) == 0.8
    assert window_fraction(10, 10_000, 0.8) == 0.8
    assert window_fraction(11, 10_000, 0.8) == 0.4
    assert window_fraction(9000, 10_000, 0.8) == 0.8 / 512
    # budget 1000: iteration i counts as 10 i of a 10 000-query run
    assert window_fraction(1, 1000, 0.05) == 0.05
    assert window_fraction(2, 1000, 0.05) == 0.025
    assert window_fraction(100, 1000, 0.05) == 0.05 / 16  # 1000: the 1000 halving not yet
    assert window_fraction(101, 1000, 0.05) == 0.05 / 32


class _Recorder(Victim):
    """A Victim that keeps every row it scores."""

    rows: list[torch.Tensor]

    def scores_and_margin(self, audio, target, *, index=None):
        self.rows = [*getattr(self, "rows", []), audio.clone()]
        return super().scores_and_margin(audio, target, index=index)


def test_square_counts_its_queries_and_never_exceeds_the_budget(tiny):
    model, x, y = tiny
    x, y = x[:6], y[:6]
    res = run(Square(SquareParams(eps=0.001, budget=50)), Victim(model, allow_gradients=False),
              x, y)
    assert int(res.queries.max()) <= 50
    survived = ~res.success
    assert survived.any() and (res.queries[survived] == 50).all()
    # clean check + start + one per iteration
    assert (res.queries[survived] == res.steps[survived] + 2).all()
    # a victim with a smaller budget than the attack's: the attack stops at the victim's
    victim = Victim(model, allow_gradients=False, budget=30)
    res = run(Square(SquareParams(eps=0.001, budget=1000)), victim, x, y)
    assert int(res.queries.max()) <= 30 and int(victim.gradient_calls.sum()) == 0


def test_square_starts_striped_and_updates_one_contiguous_window(tiny):
    model, x, y = tiny
    x, y = x[:1], y[:1]
    eps, block = 0.002, 16
    victim = _Recorder(model, allow_gradients=False)
    run(Square(SquareParams(eps=eps, budget=12, init_block=block, fill="constant",
                            side="length")), victim, x, y)
    clean, start, *rest = [r[0] for r in victim.rows]
    assert torch.equal(clean, x[0])
    delta = start - x[0]
    assert torch.allclose(delta.abs(), torch.full_like(delta, eps), atol=1e-6)
    blocks = delta[: len(delta) // block * block].reshape(-1, block)
    assert (blocks.sign() == blocks[:, :1].sign()).all()  # one sign per block
    previous = start
    for cand in rest:  # each proposal differs from the best point in one run of samples
        changed = (cand != previous).nonzero().squeeze(1)
        assert changed.numel() > 0
        assert int(changed[-1] - changed[0]) + 1 >= changed.numel()  # contiguous span
        window = slice(int(changed[0]), int(changed[-1]) + 1)
        assert (cand[window] - x[0, window]).sign().unique().numel() == 1  # one sign
        if Scorer(model).margin(cand[None], y) < Scorer(model).margin(previous[None], y):
            previous = cand


def test_square_stops_per_clip_and_never_attacks_a_clip_already_wrong():
    model, x, y = fragile_setup()
    res = run(Square(SquareParams(budget=100)), Victim(model, allow_gradients=False), x, y)
    assert int(res.queries[0]) == 1 and torch.equal(res.adv[0], x[0])
    assert bool(res.success[1]) and int(res.queries[1]) < 100
    assert not res.success[2:].any() and (res.queries[2:] == 100).all()


def test_square_is_deterministic_under_a_seed_and_stays_in_bound(tiny):
    model, x, y = tiny
    loud = (1.4 * x[:4]).clamp(-1, 1)
    y = Scorer(model).predict(loud)
    att = Square(SquareParams(eps=0.01, budget=40))
    a = run(att, Victim(model, allow_gradients=False), loud, y)
    b = run(att, Victim(model, allow_gradients=False), loud, y)
    c = run(att, Victim(model, allow_gradients=False), loud, y, seed=1)
    assert torch.equal(a.adv, b.adv) and not torch.equal(a.adv, c.adv)
    assert (a.adv - loud).abs().max() <= 0.01 + 1e-7 and a.adv.abs().max() <= 1.0


# -- Square on a waveform: what a square is ----------------------------------------------------

def test_a_tone_square_puts_its_power_at_one_frequency_and_a_band_square_in_its_band():
    from musicbench_plugins.attacks.square import fill_pattern
    from musicbench_plugins.models.frontends import hz_to_mel

    gen = torch.Generator().manual_seed(0)
    width, sr = 4096, 16_000
    tone = fill_pattern("tone", 8, width, 0.1, sr, gen, torch.device("cpu"), torch.float32)
    assert set(tone.unique().tolist()) <= {-1.0, 1.0}
    power = torch.fft.rfft(tone, dim=1).abs().square()
    peak = power.argmax(1, keepdim=True)
    near = (torch.arange(power.shape[1]) - peak).abs() <= 3
    # a square wave: 8/π² ≈ 81 % of its power in the fundamental (spread by the window)
    assert ((power * near).sum(1) / power.sum(1) > 0.7).all()
    band = fill_pattern("band", 8, width, 0.1, sr, gen, torch.device("cpu"), torch.float32)
    power = torch.fft.rfft(band, dim=1).abs().square()
    mel = hz_to_mel(torch.fft.rfftfreq(width, 1 / sr))
    centroid = (power * mel).sum(1) / power.sum(1)
    spread = ((power * (mel - centroid[:, None]).abs()).sum(1) / power.sum(1))
    top = float(hz_to_mel(torch.tensor(sr / 2)))
    assert (spread < 0.15 * top).all()  # concentrated around one place of the mel axis
    const = fill_pattern("constant", 8, width, 0.1, sr, gen, torch.device("cpu"), torch.float32)
    assert (const == const[:, :1]).all()


def test_square_area_windows_span_the_square_root_of_p():
    from musicbench_plugins.attacks.square import side_fraction

    assert side_fraction(0.25, "area") == 0.5 and side_fraction(0.25, "length") == 0.25


def test_square_tone_proposals_change_one_window_of_the_scheduled_width(tiny):
    model, x, y = tiny
    x, y = x[:1], y[:1]
    eps, budget, p_init = 0.002, 12, 0.3
    victim = _Recorder(model, allow_gradients=False)
    run(Square(SquareParams(eps=eps, budget=budget, p_init=p_init)), victim, x, y)
    clean, start, *rest = [r[0] for r in victim.rows]
    previous = start
    for i, cand in enumerate(rest):
        changed = (cand != previous).nonzero().squeeze(1)
        width = round((window_fraction(i, budget, p_init) ** 0.5) * x.shape[1])
        assert 0 < int(changed[-1] - changed[0]) + 1 <= width  # inside one window
        assert torch.allclose((cand - x[0]).abs(), torch.full_like(cand, eps), atol=1e-6)
        if Scorer(model).margin(cand[None], y) < Scorer(model).margin(previous[None], y):
            previous = cand
