"""What every component that musicbench trains itself shares, models and inpainters alike:
which dataset it trains on, where its weights are cached, and train-on-first-use loading."""

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
from musicbench.interfaces import Context, Dataset


class TrainedOnFirstUse(abc.ABC):
    """Mixin for a component whose weights we train: put it before the interface class
    (``class X(TrainedOnFirstUse, Inpainter)``) so its :meth:`load` is the one used.

    Subclasses set ``checkpoint_prefix`` (and ``checkpoint_folder`` under the cache) and
    implement :meth:`_make_net` (the untrained network), :meth:`fit` (train, save with
    ``save_module``, freeze, return a summary) and :meth:`_freeze`. Their ``Params`` must have
    ``train_dataset``, ``train_dataset_params`` and ``seed``. The checkpoint key hashes
    (version, :meth:`_key_params`, training-set fingerprint), so any change that would change
    the weights gives a new file.
    """

    checkpoint_prefix: ClassVar[str] = ""
    checkpoint_folder: ClassVar[str] = "models"
    params: Any
    version: ClassVar[str]
    sample_rate: ClassVar[int]

    def __init__(self, params: Any | None = None):
        super().__init__(params)  # type: ignore[call-arg]  # the interface's Component
        self.net: nn.Module | None = None
        self.training_summary: dict[str, Any] = {}

    @abc.abstractmethod
    def _make_net(self, ds: Dataset) -> nn.Module:
        """The untrained network for training set ``ds`` (weights drawn from the global RNG,
        which :meth:`_build` seeds)."""

    @abc.abstractmethod
    def fit(self, ctx: Context) -> dict[str, Any]:
        """Train, save the weights at :meth:`_checkpoint`, freeze, and return a summary."""

    @abc.abstractmethod
    def _freeze(self, net: nn.Module) -> None:
        """Make ``net`` the component's frozen network (eval mode, no parameter gradients)."""

    def _check_dataset(self, ds: Dataset) -> None:
        """Raise if ``ds`` cannot train this component (subclasses add their own checks)."""
        if ds.sample_rate != self.sample_rate:
            raise ValueError(f"{self.checkpoint_prefix} trains on {self.sample_rate} Hz audio; "
                             f"'{ds.name}' is {ds.sample_rate} Hz")

    def _dataset(self, ctx: Context) -> Dataset:
        if ctx.dataset is None:
            raise RuntimeError(f"{self.checkpoint_prefix} needs a Context that resolves datasets")
        p = self.params
        ds = ctx.dataset(p.train_dataset, dict(p.train_dataset_params))
        self._check_dataset(ds)
        return ds

    def _key_params(self) -> dict[str, Any]:
        """The parameters the weights depend on (all of them unless a subclass says not)."""
        return asdict(self.params)

    def _checkpoint(self, ctx: Context, ds: Dataset) -> Path:
        blob = json.dumps([self.version, self._key_params(), ds.fingerprint()], sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return (ctx.cache_dir / self.checkpoint_folder
                / f"{self.checkpoint_prefix}-{key}.safetensors")

    def _build(self, ds: Dataset, device: torch.device) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            net = self._make_net(ds)
        return net.to(device)

    def load(self, ctx: Context) -> None:
        """Load the cached weights, or train them first (unless ``ctx.allow_training`` is
        False: then :class:`~musicbench.errors.NotTrainedError`)."""
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
