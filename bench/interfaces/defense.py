"""Defense interfaces: input preprocessors and training-time defenses."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar, Literal

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

    ``randomized`` defenses are attacked with EOT (gradients averaged over draws);
    non-``differentiable`` ones with BPDA through :meth:`surrogate`.
    """

    kind: ClassVar[Literal["preprocessor", "training"]] = "preprocessor"
    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True

    @abc.abstractmethod
    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The defended input, same shape, in [-1, 1]."""

    def surrogate(self, audio: torch.Tensor) -> torch.Tensor:
        """A differentiable stand-in for BPDA; the identity unless a defense knows better."""
        return audio


class TrainingDefense(Defense):
    """Produces a hardened model from a base model and its training data (cached by the core)."""

    kind: ClassVar[Literal["preprocessor", "training"]] = "training"

    @abc.abstractmethod
    def fit(self, base: TargetModel, data: Dataset, *, ctx: Context) -> TargetModel:
        """Return the defended model, already loaded on ``ctx.device``."""
