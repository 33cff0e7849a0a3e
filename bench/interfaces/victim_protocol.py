"""What the contracts know of the victim an attack is handed (:class:`VictimLike`), as a
``typing.Protocol``: the scoring methods attacks call and the harness-only hooks
:meth:`musicbench.interfaces.Attack.__call__` uses around every attack. The implementation is
:class:`musicbench.victim.Victim`; the contracts name this protocol instead so that they import
nothing from the runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch


class JudgeLike(Protocol):
    """An uncounted scorer of the victim's (defended) model: how the harness re-scores."""

    def success(self, audio: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


class VictimLike(Protocol):
    """A target model as attacks see it (see :class:`musicbench.victim.Victim`)."""

    queries: torch.Tensor
    clip_ids: tuple[str, ...] | None

    def scores(self, audio: torch.Tensor, *, index: torch.Tensor | None = None
               ) -> torch.Tensor: ...

    def margin(self, audio: torch.Tensor, target: torch.Tensor, *,
               index: torch.Tensor | None = None) -> torch.Tensor: ...

    def loss(self, audio: torch.Tensor, target: torch.Tensor, *,
             index: torch.Tensor | None = None) -> torch.Tensor: ...

    def loss_and_margin(self, audio: torch.Tensor, target: torch.Tensor, *,
                        index: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def scores_and_margin(self, audio: torch.Tensor, target: torch.Tensor, *,
                          index: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def success(self, audio: torch.Tensor, target: torch.Tensor, *,
                index: torch.Tensor | None = None) -> torch.Tensor: ...

    def _begin_batch(self, batch: int, clip_ids: Sequence[str] | None = None) -> None:
        """Harness only: reset the per-sample counters for a new batch of ``clip_ids``."""
        ...

    def _judge(self) -> JudgeLike:
        """Harness only: the uncounted scorer the attack's output is re-scored with."""
        ...
