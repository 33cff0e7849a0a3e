"""Metric interface. Per-sample metrics compare (clean, adversarial) pairs in one batch;
set-level metrics (FAD, retrieval mAP) see every clip of a finished cell at once."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context


class Metric(Component):
    """Metadata every metric declares; ``higher_is_better`` drives the arrows in tables.

    A metric with weights (``pamt-distance``) loads them in :meth:`load` (training them on
    first use when ``ctx.allow_training``); the harness calls it once per process, before the
    first cell, and puts :meth:`weights_digest` into the key of every cell that reports it."""

    level: ClassVar[Literal["sample", "set"]] = "sample"
    higher_is_better: ClassVar[bool] = False
    unit: ClassVar[str] = ""

    def load(self, ctx: Context) -> None:
        """Load weights onto ``ctx.device``; default: nothing to load."""


class SampleMetric(Metric, abc.ABC):
    """``compute(clean[B, T], adv[B, T], sample_rate) -> Tensor[B]`` (float64 or float32)."""

    level: ClassVar[Literal["sample", "set"]] = "sample"

    @abc.abstractmethod
    def compute(self, clean: torch.Tensor, adv: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One value per pair."""


@dataclass
class CellAudio:
    """What a set-level metric sees of one finished cell; tensors on the CPU.

    Shapes: ``clean[N, T]``, ``adv[N, T]`` (the attack's returned audio; the clean audio for
    clips that were not attacked), ``attacked``/``success`` ``bool[N]``, ``targets long[N]``
    (label or work index). ``embed`` maps ``audio[B, T]`` to the defended model's normalised
    embeddings ``[B, D]`` (retrieval cells; the harness's own uncounted use) and ``references``
    is the cell's :class:`~musicbench.victim.ReferenceSet`.
    """

    dataset: str
    dataset_fingerprint: str
    model: str
    task: str
    sample_rate: int
    ids: list[str]
    clean: torch.Tensor
    adv: torch.Tensor
    attacked: torch.Tensor
    success: torch.Tensor
    targets: torch.Tensor
    fad_encoder: str = ""
    model_network: str | None = None
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None
    references: Any = None


@dataclass
class SetMetricResult:
    """``values``: figures by column name (``fad``; ``map_clean``, ``map_adv``, ...), NaN with
    ``note`` when they cannot be computed; ``n``: clips they stand on; ``flags``: warnings for
    the leaderboard; ``encoder``: the encoder used, if any (named in the column header)."""

    values: dict[str, float]
    n: int
    note: str | None = None
    flags: list[str] = field(default_factory=list)
    encoder: str | None = None


class SetMetric(Metric, abc.ABC):
    """``compute(cell, ctx) -> SetMetricResult`` once per cell, after every batch.

    ``applies(cell)`` says whether the metric means anything for the cell (mAP: retrieval
    cells only; FAD: when the run names an encoder); cells it does not apply to get no value.
    ``columns`` names the values it produces, with their better direction.
    """

    level: ClassVar[Literal["sample", "set"]] = "set"
    columns: ClassVar[dict[str, bool]] = {}

    def applies(self, cell: CellAudio) -> bool:
        return True

    @abc.abstractmethod
    def compute(self, cell: CellAudio, ctx: Context) -> SetMetricResult:
        """Figures over the cell's clips."""
