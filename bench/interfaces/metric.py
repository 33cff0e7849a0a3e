"""Metric interface. Per-sample metrics compare (clean, adversarial) pairs in one batch."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar, Literal

from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch


class Metric(Component):
    """Metadata every metric declares; ``higher_is_better`` drives the arrows in tables."""

    level: ClassVar[Literal["sample", "set"]] = "sample"
    higher_is_better: ClassVar[bool] = False
    unit: ClassVar[str] = ""


class SampleMetric(Metric, abc.ABC):
    """``compute(clean[B, T], adv[B, T], sample_rate) -> Tensor[B]`` (float64 or float32)."""

    level: ClassVar[Literal["sample", "set"]] = "sample"

    @abc.abstractmethod
    def compute(self, clean: torch.Tensor, adv: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One value per pair."""
