"""The part every target model that musicbench trains itself shares: which dataset it trains
on, where its weights are cached, train-on-first-use loading, and freezing for attacks."""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from musicbench.checkpoints import load_module
from musicbench.errors import NotTrainedError
from musicbench.interfaces import Context, Dataset, TargetModel


class TrainedModel(TargetModel):
    """Subclasses set ``checkpoint_prefix`` and implement :meth:`_make_net` (an untrained
    network for a dataset) and :meth:`fit` (train, save with ``save_module``, return a summary).

    Their ``Params`` must have ``train_dataset``, ``train_dataset_params`` and ``seed``. The
    checkpoint key hashes (version, parameters, training-set fingerprint), so any change that
    would change the weights gives a new file.
    """

    checkpoint_prefix: ClassVar[str] = ""

    def __init__(self, params: Any | None = None):
        super().__init__(params)
        self.net: nn.Module | None = None
        self.training_summary: dict[str, Any] = {}

    @abc.abstractmethod
    def _make_net(self, ds: Dataset) -> nn.Module:
        """The untrained network for training set ``ds`` (weights drawn from the global RNG,
        which :meth:`_build` seeds)."""

    def _dataset(self, ctx: Context) -> Dataset:
        if ctx.dataset is None:
            raise RuntimeError(f"{self.checkpoint_prefix} needs a Context that resolves datasets")
        p = self.params
        ds = ctx.dataset(p.train_dataset, dict(p.train_dataset_params))
        if ds.task != self.task or ds.sample_rate != self.sample_rate:
            raise ValueError(
                f"{self.checkpoint_prefix} trains on a {self.sample_rate} Hz {self.task} "
                f"dataset; '{ds.name}' is {ds.task} at {ds.sample_rate} Hz"
            )
        return ds

    def _checkpoint(self, ctx: Context, ds: Dataset) -> Path:
        blob = json.dumps([self.version, asdict(self.params), ds.fingerprint()], sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return ctx.cache_dir / "models" / f"{self.checkpoint_prefix}-{key}.safetensors"

    def _build(self, ds: Dataset, device: torch.device) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            net = self._make_net(ds)
        return net.to(device)

    def load(self, ctx: Context) -> None:
        ds = self._dataset(ctx)
        path = self._checkpoint(ctx, ds)
        if not path.exists():
            if not ctx.allow_training:
                raise NotTrainedError(f"no {self.checkpoint_prefix} checkpoint at {path}; run "
                                      f"`musicbench train {self.checkpoint_prefix}`")
            self.fit(ctx)
            return
        net = self._build(ds, ctx.device)
        self.training_summary = load_module(net, path, ctx.device)
        self._freeze(net)

    @abc.abstractmethod
    def fit(self, ctx: Context) -> dict[str, Any]:
        """Train, save the weights at :meth:`_checkpoint`, freeze, and return a summary."""

    def _freeze(self, net: nn.Module) -> None:
        net.eval()
        for p in net.parameters():  # attacks need input gradients only
            p.requires_grad_(False)
        self.net = net

    def module(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError(f"{self.checkpoint_prefix} is not loaded; call load(ctx) first")
        return self.net
