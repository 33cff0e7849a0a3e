"""Target model interface: a differentiable waveform classifier or retrieval embedder."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context
    from musicbench.interfaces.dataset import Task


class TargetModel(Component, abc.ABC):
    """A model under attack. Its spectral front end is inside it, so it is differentiable from
    the waveform.

    Classification models implement ``forward(audio[B, T]) -> logits[B, K]`` over ``labels``;
    retrieval models implement ``embed(audio[B, T]) -> Tensor[B, D]`` (L2-normalised).
    ``cam_layer`` names the submodule of :meth:`module` that Grad-CAM reads.
    Inputs are ``input_seconds`` long at ``sample_rate``; the Victim averages longer clips over
    windows.
    """

    task: ClassVar[Task] = "classification"
    sample_rate: ClassVar[int] = 16_000
    input_seconds: ClassVar[float] = 4.0
    cam_layer: ClassVar[str | None] = None
    labels: tuple[str, ...] = ()

    @abc.abstractmethod
    def load(self, ctx: Context) -> None:
        """Build the network on ``ctx.device`` with its weights (training them if it must)."""

    @abc.abstractmethod
    def module(self) -> torch.nn.Module:
        """The loaded network (for hooks such as Grad-CAM); valid after :meth:`load`."""

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, T]`` -> ``logits[B, K]`` (classification models)."""
        raise NotImplementedError(f"{self.name} is a {self.task} model and has no forward()")

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, T]`` -> ``Tensor[B, D]``, L2-normalised (retrieval models)."""
        raise NotImplementedError(f"{self.name} is a {self.task} model and has no embed()")

    def checkpoint_key(self) -> str:
        """What identifies the weights (cache file name); models with weights override."""
        return ""

    @property
    def input_samples(self) -> int:
        return int(round(self.input_seconds * self.sample_rate))
