"""Dataset interface: labelled clips (classification) or works with versions (retrieval)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from musicbench.interfaces.component import Component

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.context import Context

Task = Literal["classification", "retrieval"]
Split = Literal["train", "valid", "test"]


@dataclass(frozen=True)
class Example:
    """One clip. ``audio`` is ``Tensor[T]`` float32 in [-1, 1] at the dataset's sample rate.

    ``label`` indexes ``Dataset.labels`` (classification); ``work_id`` names the work
    (retrieval, and the unit of splitting everywhere).
    """

    id: str
    audio: torch.Tensor
    label: int | None = None
    work_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Dataset(Component, abc.ABC):
    """A source of clips with a fixed train/valid/test split.

    ``prepare`` builds or loads the data (cached under ``ctx.cache_dir``) and must be called
    before ``examples``; ``fingerprint`` is a hash of the prepared content.

    Retrieval datasets (``task = "retrieval"``) give every clip a ``work_id`` and split each
    split's clips into a **query set** (the clips that are attacked) and a **reference set**
    (what a query is matched against; at least one version of every query's work):
    :meth:`queries` and :meth:`references`. Classification datasets need neither.

    Datasets that read files skip broken ones and report each in :meth:`problems`.
    All clips of a dataset have one length (the harness batches them); a dataset of files
    cuts or selects a fixed-length excerpt of each.
    """

    task: ClassVar[Task] = "classification"
    sample_rate: int = 16_000
    labels: tuple[str, ...] = ()

    @abc.abstractmethod
    def prepare(self, ctx: Context) -> None:
        """Build (or load from cache) the clips of every split."""

    @abc.abstractmethod
    def examples(self, split: Split) -> Sequence[Example]:
        """The clips of ``split``, in a fixed order."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A hex hash of the prepared content; changes whenever any clip would change."""

    def queries(self, split: Split) -> Sequence[Example]:
        """Retrieval: the clips of ``split`` that are matched (and attacked)."""
        if self.task != "retrieval":
            return self.examples(split)
        raise NotImplementedError(f"retrieval dataset '{self.name}' must define queries()")

    def references(self, split: Split) -> Sequence[Example]:
        """Retrieval: the clips of ``split`` that queries are matched against."""
        raise NotImplementedError(f"dataset '{self.name}' ({self.task}) has no reference set")

    def problems(self) -> list[tuple[str, str]]:
        """``(source, reason)`` of every input that was skipped (broken files), in order."""
        return []
