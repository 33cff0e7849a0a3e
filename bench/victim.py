"""The Victim: what attacks see of a target model (optionally behind a defense).

It binds a model to its task, defines margin / loss / success the same way for every attack,
counts forward queries and gradient calls per sample, enforces a query budget, refuses gradients
to black-box attacks, and applies preprocessing defenses adaptively (EOT for randomized ones,
BPDA through ``surrogate`` for non-differentiable ones), and EOT over a randomized model's own
draws (dropout left on, a stochastic layer: measured by
:func:`musicbench.defense_checks.measure_model`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from musicbench.defense_checks import checked_output
from musicbench.errors import GradientRefusedError, MusicbenchError, QueryBudgetExceededError
from musicbench.global_rng import seeded_global_rng
from musicbench.interfaces.defense import Preprocessor
from musicbench.interfaces.model import TargetModel
from musicbench.windows import score_windows

RETRIEVAL_TEMPERATURE = 0.1
"""Retrieval loss: cross-entropy over work similarities divided by this temperature."""


@dataclass(frozen=True)
class ReferenceSet:
    """What retrieval queries are matched against: ``embeddings[R, D]`` (L2-normalised) and
    ``works[R]``, the work index of each reference (in ``0 .. n_works - 1``)."""

    embeddings: torch.Tensor
    works: torch.Tensor
    n_works: int


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` (the current device) are one device; a generator made for
    ``torch.device("cuda")`` keeps index -1 or None while tensors say 0."""
    def norm(d: torch.device) -> tuple[str, int]:
        if d.type == "cuda" and (d.index is None or d.index < 0):
            return ("cuda", torch.cuda.current_device())
        return (d.type, d.index if d.index is not None and d.index >= 0 else 0)
    return norm(torch.device(a)) == norm(torch.device(b))


class Victim:
    """A model bound to its task. Rows of every call are attributed to samples by ``index``.

    Classification: scores are the model's logits over its labels. Retrieval: scores are,
    per work, the best cosine similarity of the query to that work's references
    (``[B, n_works]``), so margin, loss and success read the same for both tasks: margin =
    best similarity to the true work - best similarity to any other work; loss = cross-entropy
    of those similarities / ``RETRIEVAL_TEMPERATURE``; success = the nearest reference is of
    another work.

    :param model: a loaded :class:`TargetModel`.
    :param references: the reference set (retrieval models only).
    :param defense: a preprocessing defense applied before the model, or None.
    :param allow_gradients: False for black-box attacks: a call that would build an autograd
        graph through the model raises :class:`GradientRefusedError`.
    :param budget: per-sample query budget (None: unlimited); exceeding it raises
        :class:`QueryBudgetExceededError` before the model is run.
    :param eot_samples: draws of a randomized defense (or model) averaged in every call (EOT,
        Athalye et al. 2018), each counted as a query; 1 for a deterministic defense.
    :param bpda: gradients pass through ``defense.surrogate`` while values come from
        ``defense.forward`` (BPDA, Athalye et al. 2018): non-differentiable defenses.
    :param generator: randomness of randomized defenses (its own stream, never the attack's),
        and of a randomized model: each forward pass of the model then runs on the global RNG
        forked and seeded from this stream, so its draws are reproducible and never the
        attack's.
    :param randomized_model: the model's own forward is random (two calls on one input
        differ: dropout left on, a stochastic layer; a training defense's defended model
        included): every call averages ``eot_samples`` draws of it, as of a randomized
        defense, and the :class:`Scorer` judges over fresh draws.
    :param amp: ``"bf16"``: the model's forward passes run under bfloat16 autocast (scores
        come back as float32); ``""``: float32 throughout. The defense always runs in float32.
    :param confidence: a clip counts as fooled only once its true score is at least this far
        below the best other (Carlini & Wagner's κ): margins are reported shifted up by it, so
        an attack that stops on the margin goes on past the decision boundary. The harness's
        victims decide at the boundary (0); a transfer attack sets it on its surrogate, since
        examples just across the surrogate's boundary rarely cross the target's.

    Without ``bpda``, gradients go through ``defense.forward`` as they are; a forward whose
    output is detached from its input then gives a zero gradient, which is what a
    non-adaptive evaluation (``adaptive = false``) sees.

    ``clip_ids``: the dataset ids of the batch's clips, row by row, set by the harness before
    each attack call (None outside one): what an attack that reads per-clip material (the
    ``external`` attack's files) looks them up by.
    """

    def __init__(
        self,
        model: TargetModel,
        *,
        references: ReferenceSet | None = None,
        defense: Preprocessor | None = None,
        allow_gradients: bool = True,
        budget: int | None = None,
        eot_samples: int = 1,
        bpda: bool = False,
        generator: torch.Generator | None = None,
        confidence: float = 0.0,
        amp: str = "",
        randomized_model: bool = False,
    ):
        if model.task not in ("classification", "retrieval"):
            raise NotImplementedError(f"model '{model.name}' has unknown task '{model.task}'")
        self._model = model
        self.references = references
        self.defense = defense
        self.allow_gradients = allow_gradients
        self.budget = budget
        self.eot_samples = max(1, int(eot_samples))
        self.bpda = bool(bpda) and defense is not None
        self.generator = generator
        self.randomized_model = bool(randomized_model)
        self.labels = model.labels
        self.sample_rate = model.sample_rate
        self.task = model.task
        self.queries = torch.zeros(0, dtype=torch.long)
        self.gradient_calls = torch.zeros(0, dtype=torch.long)
        self.clip_ids: tuple[str, ...] | None = None
        self.used_eot = False
        self.used_bpda = False
        self._scale = 1.0 / RETRIEVAL_TEMPERATURE if model.task == "retrieval" else 1.0
        if not (confidence >= 0 and confidence < float("inf")):
            raise ValueError(f"confidence must be a finite number >= 0, got {confidence}")
        self.confidence = float(confidence)
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
        self.amp = amp

    @property
    def queries_per_row(self) -> int:
        """Queries one row of a call costs each clip: the draws of a randomized defense the
        harness averages (EOT), else 1. Black-box attacks plan their budget with it (or with
        :func:`musicbench.api.remaining_budget`, which does)."""
        return self.eot_samples if self._draws_vary else 1

    @property
    def _draws_vary(self) -> bool:
        """Two calls may differ: a defense that may draw, or a randomized model."""
        return self.defense is not None or self.randomized_model

    @property
    def model(self) -> TargetModel:
        """The model itself, for white-box attacks that hook into it (Grad-CAM). A black-box
        attack gets no model: everything it learns must go through counted queries."""
        if not self.allow_gradients:
            raise GradientRefusedError(
                "this victim serves a black-box attack: it exposes scores through counted "
                "queries only, not the model"
            )
        return self._model

    # -- counters ---------------------------------------------------------------------------

    def _reset_counters(self, batch: int, device: torch.device | str | None = None) -> None:
        """Start counting for a new batch of ``batch`` samples (the harness does, through
        :func:`begin_batch`, before every attack call)."""
        device = device if device is not None else "cpu"
        self.queries = torch.zeros(batch, dtype=torch.long, device=device)
        self.gradient_calls = torch.zeros(batch, dtype=torch.long, device=device)

    def _count(self, audio: torch.Tensor, index: torch.Tensor | None, draws: int, grad: bool):
        if self.queries.device != audio.device:
            self.queries = self.queries.to(audio.device)
            self.gradient_calls = self.gradient_calls.to(audio.device)
        if index is None:
            if audio.shape[0] != self.queries.shape[0]:
                raise ValueError(
                    f"victim was reset for {self.queries.shape[0]} samples but got "
                    f"{audio.shape[0]} rows; pass index= to say which samples they are"
                )
            if self.budget is not None and int(self.queries.max()) + draws > self.budget:
                raise QueryBudgetExceededError(f"query budget of {self.budget} per sample spent")
            self.queries += draws
            if grad:
                self.gradient_calls += 1
            return
        index = index.to(audio.device)
        # One call may carry several rows of one sample (a population): check the sum.
        added = torch.zeros_like(self.queries).index_add_(0, index, torch.full_like(index, draws))
        if self.budget is not None and int((self.queries + added).max()) > self.budget:
            raise QueryBudgetExceededError(f"query budget of {self.budget} per sample spent")
        self.queries += added
        if grad:
            self.gradient_calls.index_add_(0, index, torch.ones_like(index))

    # -- the model behind the defense ---------------------------------------------------------

    def _stream(self, device: torch.device) -> torch.Generator:
        """The defense's (and a randomized model's) generator, on ``device``."""
        gen = self.generator
        if gen is None:  # a Victim built without one (library use): a fixed stream
            gen = self.generator = torch.Generator(device=device).manual_seed(0)
        elif not same_device(gen.device, device):
            raise MusicbenchError(
                f"the defense's generator is on {gen.device} but the audio on {device}: "
                "build generators on the audio's device (never reseeded silently: the "
                "defense's draws must stay the stream they were given)")
        return gen

    def _defended(self, audio: torch.Tensor, grad: bool) -> torch.Tensor:
        defense = self.defense
        if defense is None:
            return audio
        gen = self._stream(audio.device)
        if grad and self.bpda:
            self.used_bpda = True
            surrogate = defense.surrogate(audio)
            with torch.no_grad():
                out = checked_output(defense, audio, defense.forward(audio.detach(), gen))
            return surrogate + (out - surrogate).detach()
        out = checked_output(defense, audio, defense.forward(audio, gen))
        if grad and not out.requires_grad:
            # A naive attack through a detached forward gets a zero gradient, not a crash.
            out = out + 0.0 * audio
        return out

    def _logits_draws(
        self, audio: torch.Tensor, index: torch.Tensor | None, count: bool
    ) -> torch.Tensor:
        """Logits of every EOT draw: ``Tensor[D, B, K]``."""
        grad = torch.is_grad_enabled() and audio.requires_grad
        if grad and not self.allow_gradients:
            raise GradientRefusedError(
                "this victim serves a black-box attack and refuses gradients; "
                "query scores without requires_grad"
            )
        draws = self.eot_samples if self._draws_vary else 1
        if draws > 1:
            self.used_eot = True
        if count:
            self._count(audio, index, draws, grad)
        outs = [self._scores_once(self._defended(audio, grad)) for _ in range(draws)]
        return torch.stack(outs)

    def _model_draw(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Where the model runs: for a randomized model (it draws from the global RNG, as
        dropout does), the global RNG forked and seeded from this victim's stream, so each
        draw is reproducible and neither consumes nor shifts anyone else's randomness."""
        if not self.randomized_model:
            return contextlib.nullcontext()
        return seeded_global_rng(self._stream(device), device)

    def _scores_once(self, audio: torch.Tensor) -> torch.Tensor:
        model = self._model
        window = model.input_samples
        if model.task == "classification":
            with self._model_draw(audio.device), autocast(self.amp, audio.device):
                return score_windows(model.forward, audio, window).float()
        if self.references is None:
            raise ValueError(f"retrieval model '{model.name}': this victim has no "
                             "reference set to score against")
        with self._model_draw(audio.device), autocast(self.amp, audio.device):
            emb = score_windows(model.embed, audio, window).float()
        return work_similarities(F.normalize(emb, dim=-1), self.references)

    # -- harness only (Attack.__call__; begin_batch and judge) --------------------------------

    def _begin_batch(self, batch: int, clip_ids: Sequence[str] | None = None) -> None:
        """Reset the per-sample counters for a new batch (before every attack call: an attack
        cannot reset its own budget) and take the batch's clip ids."""
        if clip_ids is not None and len(clip_ids) != batch:
            raise ValueError(f"{len(clip_ids)} clip ids for a batch of {batch}")
        self._reset_counters(batch)
        self.clip_ids = tuple(clip_ids) if clip_ids is not None else None

    def _judge(self) -> Scorer:
        """An uncounted scorer of the same (defended) model, sharing the defense's random
        stream: what the harness re-scores an attack's output with."""
        return Scorer(self._model, references=self.references, defense=self.defense,
                      generator=self.generator, amp=self.amp,
                      randomized_model=self.randomized_model)

    # -- what attacks use ---------------------------------------------------------------------

    def scores(self, audio: torch.Tensor, *, index: torch.Tensor | None = None) -> torch.Tensor:
        """``audio[B, T]`` -> ``logits[B, K]`` (mean over EOT draws). Counted, like every call
        an attack makes."""
        return self._logits_draws(audio, index, True).mean(0)

    def margin(
        self,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B]``: true logit minus the best other logit; > 0 while the model is still right.
        Under EOT the largest over the draws: <= 0 only when the model is wrong on every draw
        (see :func:`eot_margin`)."""
        return self._shifted(eot_margin(self._logits_draws(audio, index, True), target))

    def loss(
        self,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B]``: cross-entropy of the true class, the quantity an untargeted attack raises."""
        return _cross_entropy(self._logits_draws(audio, index, True), target, self._scale)

    def loss_and_margin(
        self,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss[B], margin[B])`` from one (counted) forward pass: attacks that step on the
        loss learn for free whether the current iterate already succeeded (margin <= 0)."""
        logits = self._logits_draws(audio, index, True)
        return (_cross_entropy(logits, target, self._scale),
                self._shifted(eot_margin(logits, target)))

    def scores_and_margin(
        self,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores[B, K], margin[B])`` from one (counted) pass: the scores averaged over EOT
        draws (what a loss of the scores, such as DLR, is taken of) and the margin by the same
        rule as :meth:`margin`, so every attack stops on the same criterion."""
        logits = self._logits_draws(audio, index, True)
        return logits.mean(0), self._shifted(eot_margin(logits.detach(), target))

    def _shifted(self, margin: torch.Tensor) -> torch.Tensor:
        return margin + self.confidence if self.confidence else margin

    @torch.no_grad()
    def success(
        self,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``bool[B]``: the model is no longer right (true logit not strictly the highest)."""
        return self.margin(audio, target, index=index) <= 0


@dataclass(frozen=True)
class Judgement:
    """The harness's verdict on a batch: ``wrong_fraction[B]`` of the draws on which the
    model was wrong, ``prediction[B]`` its most frequent top-1."""

    wrong_fraction: torch.Tensor
    prediction: torch.Tensor

    @property
    def fooled(self) -> torch.Tensor:
        """``bool[B]``: wrong on more than half of the draws (docs/architecture.md, 'Evaluation protocol'); one draw:
        wrong."""
        return self.wrong_fraction > 0.5


class Scorer:
    """The harness's own view of a (defended) model: uncounted, gradient-free scores for clean
    scoring, re-scoring an attack's output, and retrieval embeddings. Never handed to an attack
    (attacks get a :class:`Victim`, whose every call is counted); tests and benchmarks use it
    to find clean predictions."""

    def __init__(
        self,
        model: TargetModel,
        *,
        references: ReferenceSet | None = None,
        defense: Preprocessor | None = None,
        generator: torch.Generator | None = None,
        amp: str = "",
        randomized_model: bool = False,
    ):
        self._victim = Victim(model, references=references, defense=defense,
                              generator=generator, amp=amp, randomized_model=randomized_model)

    @torch.no_grad()
    def scores(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, T]`` -> ``logits[B, K]`` (or work similarities), not counted."""
        return self._victim._logits_draws(audio, None, False).mean(0)

    @torch.no_grad()
    def predict(self, audio: torch.Tensor) -> torch.Tensor:
        """``long[B]``: the top label (or work) index."""
        return self.scores(audio).argmax(-1)

    @torch.no_grad()
    def judge(self, audio: torch.Tensor, target: torch.Tensor, draws: int = 1) -> Judgement:
        """Judge ``audio[B, T]`` against ``target[B]`` over ``draws`` independent draws of
        the defense (each call of a randomized defense, or of a randomized model, draws anew
        from this scorer's generator): the fraction of draws on which the model is wrong, and the most frequent
        top-1."""
        margins, preds = [], []
        for _ in range(max(1, int(draws))):
            scores = self.scores(audio)
            margins.append(margin_from_logits(scores, target))
            preds.append(scores.argmax(-1))
        wrong = (torch.stack(margins) <= 0).to(torch.float64).mean(0)
        return Judgement(wrong_fraction=wrong, prediction=torch.stack(preds).mode(0).values)

    @torch.no_grad()
    def margin(self, audio: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[B]``: true score minus the best other; > 0 while the model is right."""
        return margin_from_logits(self.scores(audio), target)

    @torch.no_grad()
    def success(self, audio: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``bool[B]``: the model is no longer right."""
        return self.margin(audio, target) <= 0

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, T]`` -> L2-normalised ``[B, D]`` through the defense (retrieval models:
        references and mAP)."""
        victim = self._victim
        model = victim._model
        defended = victim._defended(audio, False)
        with victim._model_draw(audio.device), autocast(victim.amp, audio.device):
            emb = score_windows(model.embed, defended, model.input_samples).float()
        return F.normalize(emb, dim=-1)


AMP_MODES = ("", "bf16")
"""Forward-pass precisions a run may ask for (``[run] amp``)."""


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``amp = "bf16"``, else nothing."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def begin_batch(victim: Victim, batch: int, clip_ids: Sequence[str] | None = None) -> None:
    """Reset ``victim``'s per-sample counters for a new batch (the harness, before every
    attack call: an attack cannot reset its own budget) and tell it the batch's clip ids."""
    victim._begin_batch(batch, clip_ids)


def judge(victim: Victim) -> Scorer:
    """An uncounted scorer of the same (defended) model as ``victim``, sharing its defense's
    random stream: what the harness re-scores an attack's output with. Core use only (not in
    :mod:`musicbench.api`): an attack that scores through it breaks its contract."""
    return victim._judge()


def eot_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits[D, B, K]`` (EOT draws) -> ``[B]``: the largest per-draw margin. An attack
    against a randomized defense stops early only once the model is wrong on every draw it
    was shown: the harness judges success afresh over ``eval_draws`` draws (fooled = wrong on
    more than half), and a mean margin <= 0 (one draw far off, the rest right) would stop an
    attack on clips the harness then finds robust. One draw: the plain margin."""
    return margin_from_logits(logits, target).amax(0)


def margin_from_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits[..., B, K]``, ``target[B]`` -> ``[..., B]``: true logit minus best other logit.

    The other-class maximum masks the true class with -inf (not 0), so it is right when every
    logit is negative.
    """
    idx = target.reshape(*([1] * (logits.dim() - 2)), -1, 1).expand(*logits.shape[:-1], 1)
    true = logits.gather(-1, idx).squeeze(-1)
    other = logits.scatter(-1, idx, float("-inf")).amax(-1)
    return true - other


def work_similarities(emb: torch.Tensor, refs: ReferenceSet) -> torch.Tensor:
    """``emb[B, D]`` (normalised) -> ``[B, n_works]``: best cosine similarity per work."""
    sims = emb @ refs.embeddings.T  # [B, R]
    index = refs.works.to(sims.device).expand(sims.shape[0], -1)
    init = torch.full((sims.shape[0], refs.n_works), float("-inf"), device=sims.device,
                      dtype=sims.dtype)
    return init.scatter_reduce(1, index, sims, reduce="amax", include_self=True)


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, scale: float = 1.0
                   ) -> torch.Tensor:
    """``logits[D, B, K]`` (EOT draws), ``target[B]`` -> ``[B]``: mean over draws."""
    logits = logits * scale if scale != 1.0 else logits
    d, b, k = logits.shape
    ce = F.cross_entropy(logits.reshape(d * b, k), target.repeat(d), reduction="none")
    return ce.reshape(d, b).mean(0)
