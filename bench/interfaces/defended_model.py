"""The model a fine-tuning defense trains (:class:`DefendedModel`): a deep copy of its base
with weights of its own. It is what :meth:`musicbench.interfaces.TrainingDefense.build` returns
by default, so it lives with the contracts; the training runtime (:mod:`musicbench.training`)
caches, loads and freezes it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musicbench.checkpoints import state_digest
from musicbench.interfaces.model import TargetModel

if TYPE_CHECKING:
    import torch
    from torch import nn

    from musicbench.interfaces.context import Context


class DefendedModel(TargetModel):
    """A base model with weights of its own: a deep copy of the base (the base itself, the
    undefended twin of every defended cell, is never touched), which a fine-tuning defense
    trains in place through :meth:`module`. Same task, labels, rate, input length, Grad-CAM
    layer and network family as the base; :meth:`weights_digest` is the digest of the
    defended weights. What the default :meth:`TrainingDefense.build` returns."""

    def __init__(self, base: TargetModel, *, defense: str = ""):
        super().__init__(None)
        self.base_name = base.name
        self.defense = defense
        self.inner = copy.deepcopy(base)
        self.name = base.name
        self.task = base.task  # type: ignore[misc]  # ClassVars of the interface, per instance
        self.sample_rate = base.sample_rate  # type: ignore[misc]
        self.input_seconds = base.input_seconds  # type: ignore[misc]
        self.cam_layer = base.cam_layer  # type: ignore[misc]
        self.network = base.network  # type: ignore[misc]
        self.labels = tuple(base.labels)
        self.training_summary: dict[str, Any] = {}
        self.checkpoint: Path | None = None

    def load(self, ctx: Context) -> None:
        """Nothing: the core loads the cached weights (:func:`musicbench.training.load_or_fit_defense`)."""

    def module(self) -> nn.Module:
        return self.inner.module()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.inner.forward(audio)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        return self.inner.embed(audio)

    def weights_digest(self) -> str | None:
        return state_digest(self.module())

    def checkpoint_key(self) -> str:
        return self.checkpoint.stem if self.checkpoint is not None else ""
