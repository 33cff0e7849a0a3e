"""Training on first use: the base for components whose weights musicbench trains itself,
models and inpainters alike, built-in or third-party (public through :mod:`musicbench.api`).

Such a component names the dataset it trains on, caches its weights as safetensors under the
cache dir, keyed by everything the weights depend on, loads them when they are there and trains
them first when they are not. Its ``fit(ctx)`` is also what ``musicbench train NAME`` calls.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from musicbench.checkpoints import load_module, save_module
from musicbench.datacache import build_lock
from musicbench.errors import NotTrainedError
from musicbench.interfaces import Context, Dataset, TargetModel

TRAINING_FIELDS = ("train_dataset", "train_dataset_params", "seed")
"""The ``Params`` fields every :class:`TrainedOnFirstUse` component must have."""


class TrainedOnFirstUse(abc.ABC):
    """Mixin for a component whose weights we train. Put it before the interface class
    (``class X(TrainedOnFirstUse, Inpainter)``) so its :meth:`load` is the one used; for target
    models use :class:`TrainedModel`.

    A subclass sets ``checkpoint_prefix`` (the file name's start, usually the registered name)
    and ``checkpoint_folder`` (the folder under the cache dir), gives its ``Params`` the fields
    ``train_dataset: str``, ``train_dataset_params: dict`` and ``seed: int``, and implements

    - :meth:`make_net` — the untrained network for a training set;
    - :meth:`fit` — train on :meth:`training_dataset`, starting from :meth:`build_net`, then
      end with ``return self.save_trained(ctx, ds, net, summary)``;
    - :meth:`freeze` — make a trained network the component's frozen one.

    The checkpoint file is ``<cache_dir>/<checkpoint_folder>/<checkpoint_prefix>-<key>
    .safetensors`` where ``key`` is 16 hex of the sha256 of (``version``, :meth:`key_params`,
    training-set fingerprint): any change that would change the weights gives a new file, and
    :meth:`checkpoint_key` names the file a loaded component uses.

    Training randomness comes from ``params.seed`` (part of the key), never from ``ctx.seed``,
    so one checkpoint serves every run: :meth:`build_net` draws the initial weights from the
    global RNG seeded with it (inside ``torch.random.fork_rng``); ``fit`` should draw the rest
    from a ``torch.Generator().manual_seed(params.seed)`` and seed the global RNG the same way
    (forked) for dropout.
    """

    checkpoint_prefix: ClassVar[str] = ""
    checkpoint_folder: ClassVar[str] = "models"
    params: Any
    version: ClassVar[str]
    sample_rate: ClassVar[int]

    def __init__(self, params: Any | None = None):
        super().__init__(params)  # type: ignore[call-arg]  # the interface's Component
        missing = [f for f in TRAINING_FIELDS if not hasattr(self.params, f)]
        if missing:
            raise TypeError(
                f"{type(self).__name__}.Params ({type(self.params).__name__}) lacks "
                f"{', '.join(missing)}: a component trained on first use needs the fields "
                f"{', '.join(TRAINING_FIELDS)}"
            )
        self.net: nn.Module | None = None
        self.training_summary: dict[str, Any] = {}
        self.checkpoint: Path | None = None

    # -- what a subclass implements -------------------------------------------------------------

    @abc.abstractmethod
    def make_net(self, ds: Dataset) -> nn.Module:
        """The untrained network for training set ``ds`` (weights drawn from the global RNG,
        which :meth:`build_net` seeds)."""

    @abc.abstractmethod
    def fit(self, ctx: Context) -> dict[str, Any]:
        """Train, then ``return self.save_trained(ctx, ds, net, summary)`` (which saves the
        weights at :meth:`checkpoint_path`, freezes the network and returns the summary)."""

    @abc.abstractmethod
    def freeze(self, net: nn.Module) -> None:
        """Make ``net`` the component's frozen network (eval mode, no parameter gradients)."""

    # -- what a subclass may override -----------------------------------------------------------

    def check_dataset(self, ds: Dataset) -> None:
        """Raise ``ValueError`` if ``ds`` cannot train this component."""
        if ds.sample_rate != self.sample_rate:
            raise ValueError(f"{self.checkpoint_prefix} trains on {self.sample_rate} Hz audio; "
                             f"'{ds.name}' is {ds.sample_rate} Hz")

    def key_params(self) -> dict[str, Any]:
        """The parameters the weights depend on (all of them unless a subclass says not)."""
        return dataclasses.asdict(self.params)

    # -- what fit uses --------------------------------------------------------------------------

    def training_dataset(self, ctx: Context) -> Dataset:
        """The prepared ``params.train_dataset`` (with ``params.train_dataset_params``)."""
        if ctx.dataset is None:
            raise RuntimeError(
                f"{self.checkpoint_prefix} trains on a dataset, so it needs a Context whose "
                "`dataset` resolves datasets (the harness's does; Context(cache_dir, device) "
                "built by hand has dataset=None)")
        p = self.params
        ds = ctx.dataset(p.train_dataset, dict(p.train_dataset_params))
        self.check_dataset(ds)
        return ds

    def checkpoint_path(self, ctx: Context, ds: Dataset) -> Path:
        """Where the weights trained on ``ds`` are cached (see the class docstring)."""
        blob = json.dumps([self.version, self.key_params(), ds.fingerprint()], sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return (ctx.cache_dir / self.checkpoint_folder
                / f"{self.checkpoint_prefix}-{key}.safetensors")

    def build_net(self, ds: Dataset, device: torch.device) -> nn.Module:
        """:meth:`make_net` with the global RNG seeded by ``params.seed`` (forked, so the
        caller's RNG state is untouched), on ``device``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            net = self.make_net(ds)
        return net.to(device)

    def save_trained(self, ctx: Context, ds: Dataset, net: nn.Module,
                     summary: dict[str, Any]) -> dict[str, Any]:
        """The end of :meth:`fit`: save ``net`` with ``summary`` (JSON-able) as its metadata at
        :meth:`checkpoint_path`, freeze it, and return ``summary`` plus the checkpoint path."""
        path = self.checkpoint_path(ctx, ds)
        save_module(net, path, summary)
        self.freeze(net)
        self.training_summary = summary
        self.checkpoint = path
        return summary | {"checkpoint": str(path)}

    # -- loading --------------------------------------------------------------------------------

    def checkpoint_key(self) -> str:
        """The stem of the checkpoint file the loaded weights came from (``""`` before
        :meth:`load` or :meth:`fit`): names exactly which trained weights are in use."""
        return self.checkpoint.stem if self.checkpoint is not None else ""

    def load(self, ctx: Context) -> None:
        """Load the cached weights, or train them first (unless ``ctx.allow_training`` is
        False: then :class:`~musicbench.errors.NotTrainedError`)."""
        ds = self.training_dataset(ctx)
        path = self.checkpoint_path(ctx, ds)
        if not path.exists():
            if not ctx.allow_training:
                raise NotTrainedError(f"no {self.checkpoint_prefix} checkpoint at {path}; run "
                                      f"`musicbench train {self.checkpoint_prefix}`")
            # One trainer per checkpoint: a second run sharing the cache waits, then loads.
            with build_lock(path, what=f"{self.checkpoint_prefix} weights"):
                if not path.exists():
                    self.fit(ctx)
                    if not path.exists():
                        raise RuntimeError(
                            f"{type(self).__name__}.fit did not write its weights to {path}; "
                            "end fit with `return self.save_trained(ctx, ds, net, summary)`")
                    return
        net = self.build_net(ds, ctx.device)
        self.training_summary = load_module(net, path, ctx.device)
        self.freeze(net)
        self.checkpoint = path


class TrainedModel(TrainedOnFirstUse, TargetModel):
    """A target model musicbench trains on first use: :class:`TrainedOnFirstUse` with a task
    check on the training set and attack-ready freezing. Subclasses set ``checkpoint_prefix``
    and implement :meth:`make_net` and :meth:`fit`, besides ``forward`` or ``embed``."""

    def check_dataset(self, ds: Dataset) -> None:
        if ds.task != self.task or ds.sample_rate != self.sample_rate:
            raise ValueError(
                f"{self.checkpoint_prefix} trains on a {self.sample_rate} Hz {self.task} "
                f"dataset; '{ds.name}' is {ds.task} at {ds.sample_rate} Hz"
            )

    def freeze(self, net: nn.Module) -> None:
        net.eval()
        for p in net.parameters():  # attacks need input gradients only
            p.requires_grad_(False)
        self.net = net

    def module(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError(f"{self.checkpoint_prefix} is not loaded; call load(ctx) first")
        return self.net
