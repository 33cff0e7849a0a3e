"""Encoder interface: frame-level embeddings for FAD and as a frozen backbone (PAMT)."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context


class Encoder(Component, abc.ABC):
    """``embed(audio[B, T]) -> Tensor[B, frames, dim]`` at ``sample_rate``."""

    sample_rate: ClassVar[int] = 16_000
    dim: ClassVar[int] = 0

    @abc.abstractmethod
    def load(self, ctx: Context) -> None:
        """Load the weights on ``ctx.device``."""

    @abc.abstractmethod
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """Frame embeddings of each clip."""
