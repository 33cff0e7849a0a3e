"""Targeted APGD-DLR (APGD-T, Croce & Hein 2020): targets ranked by clean scores, one run per
target on the clips still standing, the 4-class floor, bound and per-clip early stop, on a
hand-built model whose classes each read one segment of the clip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attack_contracts import FragileModel
from torch import nn

from musicbench.errors import MusicbenchError
from musicbench.interfaces import TargetModel
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import ReferenceSet, Scorer, Victim, judge
from musicbench_plugins.attacks import apgd as apgd_module
from musicbench_plugins.attacks.apgd import (
    APGD,
    APGDParams,
    TooFewClassesError,
    ranked_targets,
    targeted_dlr_loss,
)

SAMPLES = 4000  # 0.25 s at 16 kHz: one window of FragileModel's
CLASSES = 5


class _SegmentNet(nn.Module):
    def __init__(self, gain: torch.Tensor):
        super().__init__()
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], CLASSES, -1).mean(-1) * self.gain


class SegmentModel(FragileModel):
    """Class ``k``'s logit is ``gain[k]`` times the mean of the clip's ``k``-th fifth: a
    perturbation of peak ``eps`` moves it by at most ``gain[k] · eps``, and only an attack
    that aims at class ``k`` has a reason to touch that segment. (FragileModel's loading and
    forward, another network and five labels.)"""

    labels = tuple(f"class-{k}" for k in range(CLASSES))

    def __init__(self, gain: list[float]):
        TargetModel.__init__(self, None)
        self.name = "segments"
        self.net = _SegmentNet(torch.tensor(gain))


GAIN = [1.0, 1.0, 1.0, 1000.0, 1.0]  # only class 3 can move past class 0 in a small ball


def clips_with_logits(logits: list[list[float]]) -> torch.Tensor:
    """Clips ``[B, SAMPLES]`` whose clean logits under ``SegmentModel(GAIN)`` are ``logits``."""
    values = torch.tensor(logits) / torch.tensor(GAIN)
    return values.repeat_interleave(SAMPLES // CLASSES, dim=1)


def setup():
    """Clips [fooled only by aiming at class 3, already wrong, fragile, class 3 ranked
    fourth], all of true class 0."""
    x = clips_with_logits([
        [1.0, 0.8, 0.6, 0.4, 0.2],    # targets 1, 2, 3: the third fools it
        [0.5, 0.9, 0.6, 0.4, 0.2],    # already wrong
        [1.0, 0.995, 0.6, 0.4, 0.2],  # the first target fools it
        [1.0, 0.8, 0.6, 0.2, 0.4],    # targets 1, 2, 4, 3: the fourth fools it
    ])
    return SegmentModel(GAIN), x, torch.zeros(4, dtype=torch.long)


def run(params: APGDParams, victim, x, y, seed=0):
    att = APGD(params)
    att.name = "apgd-t"
    return att(victim, x, y, generator=torch.Generator().manual_seed(seed))


def test_targeted_dlr_matches_a_hand_computation():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0], [0.5, 2.0, 1.0, 0.0, -2.0]])
    target, aim = torch.tensor([0, 1]), torch.tensor([3, 2])
    # row 0: sorted 3, 2, 1, 0 -> -(3 - 0) / (3 - (1 + 0)/2); row 1: sorted 2, 1, 0.5, 0
    expected = torch.tensor([-3.0 / 2.5, -(2.0 - 1.0) / (2.0 - 0.25)])
    assert torch.allclose(targeted_dlr_loss(scores, target, aim), expected)
    assert torch.allclose(targeted_dlr_loss(5 * scores + 2, target, aim), expected, atol=1e-6)
    with pytest.raises(TooFewClassesError):
        targeted_dlr_loss(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long),
                          torch.ones(1, dtype=torch.long))


def test_targets_are_the_other_classes_by_clean_score_highest_first():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.5, 0.2], [0.9, 0.1, 0.3, 0.3, 0.0]])
    target = torch.tensor([1, 0])
    assert ranked_targets(scores, target, 9).tolist() == [[3, 2, 4, 0], [2, 3, 1, 4]]
    assert ranked_targets(scores, target, 2).tolist() == [[3, 2], [2, 3]]


def test_runs_one_target_after_another_in_clean_score_order_on_the_clips_left(monkeypatch):
    seen = []
    real = APGD._restart

    def spy(self, victim, audio, target, eps, active, *args):
        aim = args[-1]
        seen.append((active.tolist(), aim[active].tolist()))
        return real(self, victim, audio, target, eps, active, *args)

    monkeypatch.setattr(APGD, "_restart", spy)
    model, x, y = setup()
    res = run(APGDParams(eps=0.01, steps=4, loss="dlr-targeted"), Victim(model), x, y)
    # clip 1 is wrong on the clean pass; clip 2 falls to the first target, clip 0 to the
    # third (class 3), clip 3 to the fourth (its class 3 ranks below class 4)
    assert seen == [([0, 2, 3], [1, 1, 1]), ([0, 3], [2, 2]), ([0, 3], [3, 4]), ([3], [3])]
    assert res.success.tolist() == [True, True, True, True]


def test_fools_a_clip_only_an_aimed_attack_reaches_and_untargeted_dlr_misses():
    model, x, y = setup()
    x, y = x[[0]], y[[0]]
    assert not run(APGDParams(eps=0.01, steps=12, loss="dlr"), Victim(model), x, y).success[0]
    assert run(APGDParams(eps=0.01, steps=4, loss="dlr-targeted"), Victim(model), x, y
               ).success[0]


def test_stops_per_clip_and_counts_every_query_and_step_across_targets():
    model, x, y = setup()
    n = 4
    res = run(APGDParams(eps=0.01, steps=n, loss="dlr-targeted", target_classes=3),
              Victim(model), x, y)
    assert res.success.tolist() == [True, True, True, False]
    # clip 1: the clean pass only; clips 0 and 2 fooled one step into their third and first
    # target; clip 3 (fooled only by its fourth target) runs three whole targets
    assert res.queries.tolist() == [1 + 2 * (n + 1) + 2, 1, 1 + 2, 1 + 3 * (n + 1)]
    assert res.steps.tolist() == [2 * n + 1, 0, 1, 3 * n]
    assert torch.equal(res.adv[1], x[1])


def test_respects_its_bound_and_the_range_and_is_deterministic():
    model = TinyClassifier(n_classes=6)
    model.load()
    loud = (1.4 * tone_batch(6, model.input_samples, seed=4)).clamp(-1, 1)
    y = Scorer(model).predict(loud)
    params = APGDParams(eps=0.0005, steps=5, loss="dlr-targeted", restarts=2)
    res = run(params, Victim(model), loud, y)  # __call__ checks the bound too
    assert (res.adv - loud).abs().amax() <= 0.0005 + 1e-7 and res.adv.abs().max() <= 1
    assert torch.equal(run(params, Victim(model), loud, y).adv, res.adv)
    # at most 1 clean pass + 5 targets x 2 restarts x (5 steps + the last check)
    assert int(res.queries.max()) <= 1 + 5 * 2 * 6


def test_fewer_than_four_classes_fails_clearly_before_any_query():
    model = TinyClassifier(n_classes=3)
    model.load()
    x = tone_batch(2, model.input_samples)
    victim = Victim(model)
    with pytest.raises(TooFewClassesError,
                       match=r"at least 4 classes.*'tiny-classifier' has 3 classes"):
        run(APGDParams(loss="dlr-targeted", steps=3), victim, x, torch.zeros(2, dtype=torch.long))
    assert int(victim.queries.sum()) == 0 and issubclass(TooFewClassesError, MusicbenchError)


def _retrieval(works: int):
    model = TinyClassifier(n_classes=6)
    model.load()
    model.task = "retrieval"
    model.embed = lambda audio: F.normalize(model.forward(audio), dim=-1)
    refs_audio = tone_batch(works, model.input_samples, seed=9)
    emb = judge(Victim(model)).embed(refs_audio)
    return model, ReferenceSet(emb, torch.arange(works), works), refs_audio


def test_applies_to_retrieval_similarities_and_refuses_three_works():
    model, refs, audio = _retrieval(5)
    queries = (audio + 0.01 * torch.randn(audio.shape, generator=torch.Generator()
                                          .manual_seed(1))).clamp(-1, 1)
    res = run(APGDParams(loss="dlr-targeted", eps=0.05, steps=3), Victim(model, references=refs),
              queries, torch.arange(5))
    assert (res.adv - queries).abs().max() <= 0.05 + 1e-6 and (res.queries > 0).all()
    model, refs, audio = _retrieval(3)
    with pytest.raises(TooFewClassesError, match="3 works in its reference set"):
        run(APGDParams(loss="dlr-targeted"), Victim(model, references=refs), audio,
            torch.arange(3))


def test_target_classes_is_checked():
    with pytest.raises(ValueError, match="target_classes"):
        APGDParams(loss="dlr-targeted", target_classes=0)
    assert apgd_module.MIN_CLASSES == {"dlr": 3, "dlr-targeted": 4}
