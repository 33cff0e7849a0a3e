"""Inpainter interface: regenerate masked stretches of audio from a latent code."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context


class Inpainter(Component, abc.ABC):
    """``inpaint(audio[B, T], mask bool[B, T], z[B, latent_dim]) -> audio[B, T]``.

    True in ``mask`` means regenerate; unmasked samples are returned unchanged. Differentiable
    in ``z`` and in ``audio``.
    """

    sample_rate: ClassVar[int] = 16_000
    latent_dim: ClassVar[int] = 0
    gap_seconds: float | None = None
    """The gap length the inpainter is built for (MAIA's default region length); None = any.
    A subclass whose gap depends on its parameters overrides this with a property."""
    latent_range: tuple[float, float] | None = None
    """The box the prior of ``z`` lives in (black-box search bounds); None = unbounded."""

    @abc.abstractmethod
    def load(self, ctx: Context) -> None:
        """Build (and train or load) the inpainter on ``ctx.device``."""

    @abc.abstractmethod
    def sample_latent(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``Tensor[batch, latent_dim]`` drawn from the prior."""

    @abc.abstractmethod
    def inpaint(self, audio: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Fill ``audio`` where ``mask`` is True."""
