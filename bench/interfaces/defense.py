"""Defense interfaces: input preprocessors and training-time defenses (docs/architecture.md, 'Plugin kinds').

A defense never decides how it is attacked: the harness reads the flags of a
:class:`Preprocessor` (and checks them by measurement) and attacks it adaptively -- EOT for
randomized defenses, BPDA through :meth:`Preprocessor.surrogate` for non-differentiable ones.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar, Literal

from musicbench.errors import ConfigError
from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context
    from musicbench.interfaces.dataset import Dataset
    from musicbench.interfaces.model import TargetModel


class Defense(Component, abc.ABC):
    """Base of both defense kinds; ``kind`` tells the harness how to apply it."""

    kind: ClassVar[Literal["preprocessor", "training"]]


class Preprocessor(Defense):
    """Transforms the input before the model: ``forward(audio[B, T], generator) -> [B, T]``.

    Life cycle (the harness drives it): ``bind(sample_rate)`` with the rate of the model the
    defense sits in front of (at planning time, so a bad parameter such as a cutoff above
    Nyquist exits before any work), then ``load(ctx)`` (weights, device), then ``forward``
    calls.

    Flags, each checked by the harness by measurement (a mismatch is an error in ``musicbench
    validate`` and a flag on the cell; the harness attacks what it measured, never less):

    - ``randomized``: two calls on the same input may differ (they draw from ``generator``).
      Attacked with EOT: every gradient call averages ``eot_samples`` draws; success is judged
      over ``eval_draws`` draws.
    - ``differentiable``: ``forward`` has useful input gradients (an output detached from its
      input, or a zero gradient almost everywhere -- rounding -- is *not* differentiable).
      Non-differentiable defenses are attacked with BPDA: forward through ``forward``, backward
      through :meth:`surrogate`.

    ``forward`` must not modify its input, returns the same shape, finite, in [-1, 1], and takes
    randomness only from ``generator`` (on the audio's device). The harness checks the output
    and fails the cell on a violation.
    """

    kind: ClassVar[Literal["preprocessor", "training"]] = "preprocessor"
    # Class defaults; a flag that depends on a parameter (resample with a random rate, the
    # hard spectral gate) is set on the instance in __init__. The harness reads the instance.
    randomized: bool = False
    differentiable: bool = True
    native_sample_rate: ClassVar[int | None] = None
    """The one rate the defense works at (a learned denoiser trained at 16 kHz), or None: any
    rate, told by :meth:`bind`."""

    sample_rate: int | None = None
    """The rate of the audio this instance processes; set by :meth:`bind`."""

    def bind(self, sample_rate: int) -> None:
        """Fix the rate of the audio this instance will see (the model's). Overrides check
        rate-dependent parameters here and raise :class:`ConfigError` naming the key (call
        ``super().bind(sample_rate)`` first)."""
        native = self.native_sample_rate
        if native is not None and native != sample_rate:
            raise ConfigError(
                f"defense '{self.name}' works at {native} Hz but the model behind it expects "
                f"{sample_rate} Hz; use it with a {native} Hz model"
            )
        self.sample_rate = int(sample_rate)

    def load(self, ctx: Context) -> None:
        """Load weights (training them on first use when ``ctx.allow_training``) and move
        them to ``ctx.device``. Called after :meth:`bind`. Default: nothing to load."""

    @abc.abstractmethod
    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``audio[B, T]`` in [-1, 1] -> the defended ``[B, T]``, in [-1, 1]."""

    def surrogate(self, audio: torch.Tensor) -> torch.Tensor:
        """A differentiable stand-in for BPDA (Athalye et al. 2018): ``[B, T] -> [B, T]``
        close to :meth:`forward` in value, with useful gradients. The identity unless a
        defense knows better (a soft-mask for a hard mask, a smooth rounding)."""
        return audio


class TrainingDefense(Defense):
    """Produces a hardened model from a base model and its training data.

    The contract, in one place: **the defense trains, the core caches.**

    - :meth:`fit` trains and returns the defended model; it never reads or writes the cache
      and must not modify ``base`` (the undefended twin of every defended cell: pseudo-labels,
      clean accuracy without the defense and the defense-oblivious attacker use it). A
      fine-tuning defense trains ``self.build(base, data, ctx=ctx)``, a copy.
    - :meth:`build` returns the defended model's architecture before training (the default: a
      deep copy of ``base``, a
      :class:`musicbench.interfaces.defended_model.DefendedModel`); the core loads cached
      weights into its :meth:`~TargetModel.module`, so a defense whose network differs from the
      base's (PAMT: encoder, head, task head) overrides it.
    - The core (:func:`musicbench.training.load_or_fit_defense`) keeps the defended module's
      state dict as safetensors at ``<cache>/defenses/<defense>/<base>-<key>.safetensors``,
      with ``key`` = :func:`musicbench.training.defended_key` (the defense's name, version and
      params; the base's name, version, params and weights digest; the training dataset's
      description and fingerprint). It loads them when present; otherwise it calls
      :meth:`fit` (global RNG forked and seeded with ``params.seed``) when
      ``ctx.allow_training``, else raises :class:`~musicbench.errors.NotTrainedError` naming
      ``musicbench train DEFENSE --model M --dataset D``, which fails the cell.
    - The defended model is a :class:`TargetModel` like any other (same ``task``, ``labels``
      and ``sample_rate`` as the base; ``weights_digest()`` = the defended weights), frozen by
      the core and attacked exactly like any model. ``training_summary`` (a JSON-able dict on
      the returned model, if set) is saved with the weights.

    ``data`` is the dataset of the cell (``--dataset`` of ``musicbench train``): train on its
    ``train`` split, select on ``valid``; take randomness from ``params.seed``, never from
    ``ctx.seed``, so one cached model serves every run; report progress through
    ``ctx.progress``.
    """

    kind: ClassVar[Literal["preprocessor", "training"]] = "training"

    def build(self, base: TargetModel, data: Dataset, *, ctx: Context) -> TargetModel:
        """The defended model before training, on ``ctx.device``: by default a deep copy of
        ``base`` (its weights the starting point of fine-tuning)."""
        from musicbench.interfaces.defended_model import DefendedModel

        return DefendedModel(base, defense=self.name)

    @abc.abstractmethod
    def fit(self, base: TargetModel, data: Dataset, *, ctx: Context) -> TargetModel:
        """Train and return the defended model on ``ctx.device`` (see the class docstring;
        the core caches, loads and freezes it)."""
