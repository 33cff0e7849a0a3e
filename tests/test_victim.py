"""The Victim: margins with negative logits, query counting by index, budgets, refusals."""

from __future__ import annotations

import pytest
import torch

from musicbench.errors import GradientRefusedError, QueryBudgetExceededError
from musicbench.interfaces import Preprocessor
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import Victim, begin_batch, judge, margin_from_logits
from musicbench.windows import split_windows


@pytest.fixture
def model():
    m = TinyClassifier()
    m.load()
    return m


def test_margin_masks_true_class_with_minus_inf_for_negative_logits():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-1.0, -2.0, -0.5]])
    target = torch.tensor([1, 0])
    # with a 0-mask the "other max" of row 0 would wrongly be 0 and the margin -1
    assert margin_from_logits(logits, target).tolist() == [2.0, -0.5]


def test_queries_are_counted_per_sample_by_index(model):
    victim = Victim(model)
    x = tone_batch(4, model.input_samples)
    y = torch.zeros(4, dtype=torch.long)
    begin_batch(victim, 4)
    victim.scores(x)
    victim.loss(x[[1, 3]], y[[1, 3]], index=torch.tensor([1, 3]))
    assert victim.queries.tolist() == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="pass index="):
        victim.scores(x[:2])


def test_gradient_calls_counted_and_refused_for_black_box(model):
    x = tone_batch(2, model.input_samples).requires_grad_(True)
    y = torch.zeros(2, dtype=torch.long)
    white = Victim(model)
    begin_batch(white, 2)
    white.loss(x, y).sum().backward()
    assert white.gradient_calls.tolist() == [1, 1] and x.grad is not None
    black = Victim(model, allow_gradients=False)
    begin_batch(black, 2)
    with pytest.raises(GradientRefusedError):
        black.loss(x, y)
    assert black.margin(x.detach(), y).shape == (2,)  # scores are fine


def test_budget_is_enforced_before_the_model_runs(model):
    victim = Victim(model, budget=2, allow_gradients=False)
    x = tone_batch(2, model.input_samples)
    begin_batch(victim, 2)
    victim.scores(x)
    victim.scores(x[:1], index=torch.tensor([0]))
    with pytest.raises(QueryBudgetExceededError):
        victim.scores(x[:1], index=torch.tensor([0]))
    victim.scores(x[1:], index=torch.tensor([1]))  # sample 1 still has budget
    assert victim.queries.tolist() == [2, 2]


def test_long_clips_are_averaged_over_windows(model):
    x = tone_batch(2, model.input_samples * 2 + 100)
    windows, count = split_windows(x, model.input_samples)
    assert count == 3 and windows.shape == (6, model.input_samples)
    victim = Victim(model)
    with torch.no_grad():
        expected = model.forward(windows).reshape(2, 3, -1).mean(1)
        assert torch.allclose(judge(victim).scores(x), expected)


class _Quantise(Preprocessor):
    randomized = True
    differentiable = False

    def forward(self, audio, generator):
        noise = torch.rand(audio.shape, generator=generator, device=audio.device) * 1e-3
        return torch.round((audio + noise) * 64) / 64


def test_randomized_nondifferentiable_defense_uses_eot_and_bpda(model):
    victim = Victim(model, defense=_Quantise(), eot_samples=4, bpda=True,
                    generator=torch.Generator().manual_seed(0))
    x = tone_batch(2, model.input_samples).requires_grad_(True)
    begin_batch(victim, 2)
    victim.loss(x, torch.zeros(2, dtype=torch.long)).sum().backward()
    assert victim.used_eot and victim.used_bpda
    assert victim.queries.tolist() == [4, 4]  # every EOT draw is a query
    assert x.grad is not None and x.grad.abs().sum() > 0  # BPDA passed the gradient through


def test_without_bpda_a_rounding_defense_gives_the_naive_zero_gradient(model):
    """What a non-adaptive evaluation sees: the gradient of rounding, zero everywhere."""
    victim = Victim(model, defense=_Quantise(), generator=torch.Generator().manual_seed(0))
    x = tone_batch(2, model.input_samples).requires_grad_(True)
    begin_batch(victim, 2)
    victim.loss(x, torch.zeros(2, dtype=torch.long)).sum().backward()
    assert not victim.used_bpda and not victim.used_eot
    assert x.grad is not None and x.grad.abs().sum() == 0


def test_budget_counts_every_row_of_a_population_sent_in_one_call(model):
    victim = Victim(model, budget=5, allow_gradients=False)
    x = tone_batch(2, model.input_samples)
    begin_batch(victim, 2)
    victim.scores(x)  # one query each
    population = x[:1].expand(5, -1)  # five candidates of sample 0: 1 + 5 > 5
    with pytest.raises(QueryBudgetExceededError):
        victim.scores(population, index=torch.zeros(5, dtype=torch.long))
    assert victim.queries.tolist() == [1, 1]  # refused before counting or running
    victim.scores(population[:4], index=torch.zeros(4, dtype=torch.long))
    assert victim.queries.tolist() == [5, 1]


def test_an_attack_cannot_query_uncounted_through_the_victim(model):
    """Every public way from a Victim to the model's scores is counted: no ``count=False``,
    no uncounted ``predict``/``embed``, no ``.model`` on a black-box victim, no counter reset."""
    import inspect

    black = Victim(model, allow_gradients=False, budget=3)
    x = tone_batch(2, model.input_samples)
    y = torch.zeros(2, dtype=torch.long)
    begin_batch(black, 2)
    for name in ("scores", "margin", "loss", "success", "loss_and_margin"):
        assert "count" not in inspect.signature(getattr(black, name)).parameters, name
    assert not hasattr(black, "predict") and not hasattr(black, "embed")
    assert not hasattr(black, "reset_counters")
    with pytest.raises(GradientRefusedError, match="not the model"):
        black.model  # noqa: B018
    black.success(x, y)
    assert black.queries.tolist() == [1, 1]
    white = Victim(model)
    assert white.model is model  # white-box attacks may hook into it (Grad-CAM)


def test_the_harness_scores_without_counting(model):
    victim = Victim(model, budget=1, allow_gradients=False)
    x = tone_batch(2, model.input_samples)
    begin_batch(victim, 2)
    before = judge(victim).scores(x)
    assert victim.queries.tolist() == [0, 0]
    assert torch.equal(judge(victim).predict(x), before.argmax(-1))
