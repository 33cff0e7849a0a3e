"""What the harness hands to components that build, load or train things."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from musicbench.interfaces.component import Component


class ProgressTask(Protocol):
    def advance(self, n: float = 1) -> None: ...
    def update(self, *, description: str | None = None) -> None: ...


class Progress(Protocol):
    """``with progress("rendering m21-styles", total=600) as task: task.advance()``."""

    def __call__(
        self, description: str, total: float | None = None
    ) -> contextlib.AbstractContextManager[ProgressTask]: ...


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, *, description: str | None = None) -> None:
        pass


class NullProgress:
    """A progress reporter that reports nothing (tests, library use)."""

    @contextlib.contextmanager
    def __call__(self, description: str, total: float | None = None) -> Iterator[_NullTask]:
        yield _NullTask()


@dataclass
class Context:
    """Where to cache, which device, how to report progress, how to find other components.

    ``dataset`` resolves a dataset by registered name and parameter mapping (already prepared),
    so a model can train on the dataset it names; ``inpainter`` likewise resolves a loaded
    inpainter (MAIA names the one it uses), ``encoder`` a loaded encoder (FAD). ``memo(key,
    compute)`` returns ``compute()`` once per process for ``key`` (e.g. clean-clip embeddings
    shared by every cell of a dataset); ``model`` a loaded target model and ``attack`` a prepared
    attack (a transfer attack crafts with one on the other); all may be None outside a run. ``allow_training=False`` makes a model or inpainter
    without a cached checkpoint raise :class:`musicbench.errors.NotTrainedError` instead of
    training.
    """

    cache_dir: Path
    device: torch.device
    progress: Progress = field(default_factory=NullProgress)
    dataset: Callable[[str, dict[str, Any]], Component] | None = None
    inpainter: Callable[[str, dict[str, Any]], Component] | None = None
    allow_training: bool = True
    seed: int = 0
    encoder: Callable[[str, dict[str, Any]], Component] | None = None
    model: Callable[[str, dict[str, Any]], Component] | None = None
    attack: Callable[[str, dict[str, Any]], Component] | None = None
    memo: Callable[[tuple[str, ...], Callable[[], Any]], Any] | None = None
