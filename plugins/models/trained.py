"""The part every target model that musicbench trains itself shares: train-on-first-use
loading (:class:`musicbench_plugins.trained.TrainedOnFirstUse`), a task check on the training
set, and freezing for attacks."""

from __future__ import annotations

from torch import nn

from musicbench.interfaces import Dataset, TargetModel
from musicbench_plugins.trained import TrainedOnFirstUse


class TrainedModel(TrainedOnFirstUse, TargetModel):
    """Subclasses set ``checkpoint_prefix`` and implement ``_make_net`` and ``fit`` (see
    :class:`~musicbench_plugins.trained.TrainedOnFirstUse`)."""

    def _check_dataset(self, ds: Dataset) -> None:
        if ds.task != self.task or ds.sample_rate != self.sample_rate:
            raise ValueError(
                f"{self.checkpoint_prefix} trains on a {self.sample_rate} Hz {self.task} "
                f"dataset; '{ds.name}' is {ds.task} at {ds.sample_rate} Hz"
            )

    def _freeze(self, net: nn.Module) -> None:
        net.eval()
        for p in net.parameters():  # attacks need input gradients only
            p.requires_grad_(False)
        self.net = net

    def module(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError(f"{self.checkpoint_prefix} is not loaded; call load(ctx) first")
        return self.net
