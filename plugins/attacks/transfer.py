"""Transfer attack: craft with a white-box attack on a surrogate model, score on the target.

The transfer setting of Papernot, McDaniel, Goodfellow, "Transferability in Machine Learning:
from Phenomena to Black-Box Attacks using Adversarial Samples" (2016) and Liu, Chen, Liu, Song,
"Delving into Transferable Adversarial Examples and Black-box Attacks", ICLR 2017: the attacker
has gradients of a model of its own (the surrogate) and none of the target, and sends the
target nothing before the one clip it is judged on. MAIA (Liu et al. 2025) leaves its
transferability open (their question 3); ``leaderboards/transfer.md`` measures it.

A black-box attack with **zero queries**: the target is never called (the harness judges the
returned clip, uncounted). The threat model is the inner attack's (PGD at L-inf 0.002 transfers
within the same threat model as PGD itself), so a transfer cell sits beside the white-box and
query-based cells of its bound; a transfer that beat white-box PGD on the target would raise the
harness's "black-box stronger than white-box" flag, as it should.

Readings, as parameters (:class:`TransferParams`):

- ``surrogate`` / ``surrogate_params``: any registered classification model, loaded (trained on
  first use) like a target. Surrogate = target gives the white-box diagonal of a transfer matrix
  (crafted on the target itself, still with no counted query).
- ``attack`` / ``attack_params``: any registered white-box attack (its own defaults apply).
- ``confidence`` (κ, logit units): the surrogate counts a clip as fooled only once its true
  logit is κ below the best other, so attacks that stop at the surrogate's decision boundary
  (every built-in stops per clip once successful) go on past it; examples just across one
  model's boundary rarely cross another's (Liu et al. 2017 use high-confidence examples for
  this reason). Default 5, a reading of ours: chosen before any transfer result was seen, not
  tuned on test clips.
- Labels are matched **by name**: the target's label of each clip is looked up among the
  surrogate's labels; a clip whose label the surrogate lacks is returned unchanged (counted as
  not fooled by the harness, which is what it is). Models with no label in common are refused.
- Different sample rates: the clip is resampled to the surrogate's rate (julius' sinc
  resampler), attacked there, and the perturbation resampled back and projected onto the inner
  attack's bound again (resampling can overshoot an L-inf bound by a little).

Retrieval targets are refused: a retrieval surrogate would need the target's reference
recordings to embed, which no attack is given.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from musicbench.api import (
    Attack,
    AttackResult,
    Bound,
    Context,
    ThreatModel,
    Victim,
    check_number,
    project_l2,
)
from musicbench_plugins._limits import MAX_WEIGHT


@dataclass(frozen=True)
class TransferParams:
    """``surrogate``: the model crafted on (``surrogate_params`` its parameters); ``attack``:
    the white-box attack crafting (``attack_params`` its parameters); ``confidence``: κ of the
    surrogate's success (logit units, see the module docstring)."""

    surrogate: str = "style-cnn"
    surrogate_params: dict[str, Any] = field(default_factory=dict)
    attack: str = "pgd"
    attack_params: dict[str, Any] = field(default_factory=dict)
    confidence: float = 5.0

    def __post_init__(self) -> None:
        if not self.surrogate or not self.attack:
            raise ValueError("surrogate and attack must name registered plugins")
        if self.attack == "transfer":
            raise ValueError("attack = 'transfer' would transfer a transfer; name a white-box "
                             "attack (pgd, apgd, cw, maia-wb, ...)")
        check_number("confidence", self.confidence, at_least=0, at_most=MAX_WEIGHT)


class Transfer(Attack):
    """Crafts on ``surrogate`` with ``attack``; never queries the target.

    Shape: audio ``[B, T]`` in [-1, 1] at the target's rate, target ``[B]`` (indices into the
    target's labels) -> adv ``[B, T]``; ``steps[B]`` are the inner attack's.
    """

    threat = "black-box"
    transfer = True
    version = "1"
    Params = TransferParams

    def prepare(self, ctx: Context) -> None:
        if ctx.model is None or ctx.attack is None:
            raise RuntimeError("transfer needs a context that resolves models and attacks "
                               "(a musicbench run or Workspace)")
        p = self.params
        self.surrogate = ctx.model(p.surrogate, dict(p.surrogate_params))
        if self.surrogate.task != "classification":
            raise ValueError(f"transfer: surrogate '{p.surrogate}' is a {self.surrogate.task} "
                             "model; only classification surrogates are supported")
        self.inner = ctx.attack(p.attack, dict(p.attack_params))
        if self.inner.threat != "white-box":
            raise ValueError(f"transfer: attack '{p.attack}' is {self.inner.threat}; a transfer "
                             "attack crafts with gradients of its surrogate (a white-box attack)")

    def bound(self) -> Bound | None:
        return self.inner.bound()

    def threat_model(self) -> ThreatModel:
        return self.inner.threat_model()

    def weights_digest(self) -> str | None:
        """The surrogate's and the inner attack's identity and weights: a retrained surrogate
        or a new version of the inner attack makes new cells."""
        parts = [self.surrogate.name, str(self.surrogate.version),
                 repr(sorted(self.surrogate.describe()["params"].items())),
                 str(self.surrogate.weights_digest()), self.inner.name,
                 str(self.inner.version), repr(sorted(self.inner.describe()["params"].items())),
                 str(self.inner.weights_digest())]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        if victim.task != "classification":
            raise ValueError("transfer: retrieval targets are not supported (a surrogate would "
                             "need the target's reference recordings, which attacks are not "
                             "given)")
        own = {name: i for i, name in enumerate(self.surrogate.labels)}
        mapped = [own.get(victim.labels[int(t)], -1) for t in target.tolist()]
        if not set(victim.labels) & set(own):
            raise ValueError(f"transfer: surrogate '{self.surrogate.name}' shares no label with "
                             f"the target ({', '.join(victim.labels[:5])}, ...)")
        rows = torch.tensor([i for i, m in enumerate(mapped) if m >= 0], dtype=torch.long,
                            device=audio.device)
        adv = audio.clone()
        steps = torch.zeros(audio.shape[0], dtype=torch.long, device=audio.device)
        if rows.numel():
            surrogate_target = torch.tensor([mapped[i] for i in rows.tolist()],
                                            dtype=torch.long, device=audio.device)
            crafted, inner_steps = self._craft(audio[rows], surrogate_target, victim.sample_rate,
                                               generator)
            adv[rows] = crafted
            steps[rows] = inner_steps
        return AttackResult(adv=adv, success=torch.zeros_like(steps, dtype=torch.bool),
                            queries=victim.queries.clone(), steps=steps)

    def _craft(self, audio: torch.Tensor, target: torch.Tensor, rate: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``audio[B, T]`` at the target's ``rate`` -> (adv ``[B, T]`` at that rate, steps)."""
        surrogate_rate = int(self.surrogate.sample_rate)
        x = audio if surrogate_rate == rate else _resample(audio, rate, surrogate_rate)
        own_victim = Victim(self.surrogate, confidence=self.params.confidence)
        result = self.inner(own_victim, x, target, generator=generator)
        if surrogate_rate == rate:
            return result.adv, result.steps
        delta = _resample(result.adv - x, surrogate_rate, rate)[..., :audio.shape[-1]]
        if delta.shape[-1] < audio.shape[-1]:
            delta = torch.nn.functional.pad(delta, (0, audio.shape[-1] - delta.shape[-1]))
        bound = self.inner.bound()
        if bound is not None:  # resampling rings: back inside the inner attack's promise
            if bound.norm == "linf":
                limit = bound.limits(audio).unsqueeze(1)
                delta = torch.maximum(torch.minimum(delta, limit), -limit)
            else:
                delta = project_l2(delta, bound.limits(audio).unsqueeze(1))
        return (audio + delta).clamp(-1, 1), result.steps


def _resample(audio: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """``audio[B, T]`` from rate ``old`` to ``new`` (julius: a torch sinc resampler)."""
    import julius

    return julius.resample_frac(audio, old, new)
