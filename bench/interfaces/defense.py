"""Defense interfaces: input preprocessors and training-time defenses (DESIGN.md section 4).

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
    """Produces a hardened model from a base model and its training data (cached by the core)."""

    kind: ClassVar[Literal["preprocessor", "training"]] = "training"

    @abc.abstractmethod
    def fit(self, base: TargetModel, data: Dataset, *, ctx: Context) -> TargetModel:
        """Return the defended model, already loaded on ``ctx.device``."""
