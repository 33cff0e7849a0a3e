"""Training on first use: the base for components whose weights musicbench trains itself,
models and inpainters alike, built-in or third-party (public through :mod:`musicbench.api`).

Such a component names the dataset it trains on, caches its weights as safetensors under the
cache dir, keyed by everything the weights depend on, loads them when they are there and trains
them first when they are not. Its ``fit(ctx)`` is also what ``musicbench train NAME`` calls.

Training defenses (:class:`~musicbench.interfaces.TrainingDefense`) are cached by the core
here too: :func:`load_or_fit_defense`, keyed by :func:`defended_key`; ``musicbench train
DEFENSE --model M`` calls it ahead of a run.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import shlex
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from musicbench.checkpoints import load_module, save_module
from musicbench.datacache import build_lock
from musicbench.errors import MusicbenchError, NotTrainedError
from musicbench.interfaces import Context, Dataset, TargetModel, TrainingDefense
from musicbench.shipped_weights import seed_from_shipped

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
            what = f"{self.checkpoint_prefix} weights"
            # One trainer per checkpoint: a second run sharing the cache waits, then loads.
            # The repository's published weights, where it ships them, are copied instead.
            with build_lock(path, what=what):
                if not path.exists() and seed_from_shipped(path, ctx.cache_dir,
                                                           what=what) is None:
                    if not ctx.allow_training:
                        raise NotTrainedError(f"no {self.checkpoint_prefix} checkpoint at "
                                              f"{path}; run `musicbench train "
                                              f"{self.checkpoint_prefix}`")
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


# -- training defenses ----------------------------------------------------------------------------

DEFENDED_KEY_FORMAT = "1"
"""Bumped if what :func:`defended_key` hashes changes (every cached defended model is then
trained anew)."""


def defended_key(defense: TrainingDefense, base: TargetModel, data: Dataset) -> str:
    """The content address of the model ``defense`` fits to ``base`` on ``data``: 16 hex of the
    sha256 of (the defense's name, version and params; the base's name, version, params and
    :meth:`~TargetModel.weights_digest`; the training dataset's name, version, params and
    fingerprint). Training is a deterministic function of these on CPU (seeded, forked RNG),
    so the key names the defended weights without training them: the planner puts it in the
    cell key (as the defense's ``weights``), the cache files the weights under it, and new
    base weights (a retrained base) give a new key, hence new cells and a new fit."""
    blob = json.dumps([DEFENDED_KEY_FORMAT, defense.describe(), base.describe(),
                       base.weights_digest(), data.describe(), data.fingerprint()],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def defended_path(ctx: Context, defense: TrainingDefense, base: TargetModel,
                  data: Dataset) -> Path:
    """``<cache_dir>/defenses/<defense>/<base>-<defended_key>.safetensors``."""
    key = defended_key(defense, base, data)
    return ctx.cache_dir / "defenses" / defense.name / f"{base.name}-{key}.safetensors"


def train_command(defense: TrainingDefense, base: TargetModel, data: Dataset) -> str:
    """The ``musicbench train`` command line that fits ``defense`` to ``base`` on ``data``
    (parameters that differ from their defaults only)."""
    parts = ["musicbench", "train", defense.name, "--model", base.name]
    parts += _param_flags("--model-param", base)
    parts += ["--dataset", data.name]
    parts += _param_flags("--dataset-param", data)
    parts += _param_flags("-p", defense)
    return " ".join(parts)


def _param_flags(flag: str, component: Any) -> list[str]:
    params = getattr(component, "params", None)
    if not dataclasses.is_dataclass(params):
        return []
    try:
        defaults = dataclasses.asdict(type(params)())
    except TypeError:  # a Params without defaults: spell out every value
        defaults = {}
    out = []
    for key, value in dataclasses.asdict(params).items():
        if key in defaults and defaults[key] == value:
            continue
        out += [flag, shlex.quote(f"{key}={_toml(value)}")]
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def load_or_fit_defense(defense: TrainingDefense, base: TargetModel, data: Dataset,
                        ctx: Context) -> TargetModel:
    """The model ``defense`` fits to ``base`` on ``data``, frozen on ``ctx.device``: loaded
    from :func:`defended_path` when it is there; otherwise fitted and saved there (under the
    entry's build lock, so a second process waits and loads), or, when ``ctx.allow_training``
    is False, :class:`NotTrainedError` naming the ``musicbench train`` command that fits it.

    ``defense.fit`` runs with the global RNG forked and seeded with the defense's ``seed``
    parameter (0 without one), so dropout is reproducible and the caller's RNG untouched.
    It must not modify ``base`` (checked: the base is the undefended twin of the cell)."""
    path = defended_path(ctx, defense, base, data)
    what = f"{defense.name} weights for {base.name}"
    if not path.exists():
        with build_lock(path, what=what):
            if not path.exists() and seed_from_shipped(path, ctx.cache_dir, what=what) is None:
                if not ctx.allow_training:
                    raise NotTrainedError(
                        f"no {defense.name} weights for model '{base.name}' on dataset "
                        f"'{data.name}' at {path}; train them with "
                        f"`{train_command(defense, base, data)}`")
                return _fit_and_save(defense, base, data, ctx, path)
    model = defense.build(base, data, ctx=ctx)
    summary = load_module(model.module(), path, ctx.device)
    _freeze(model)
    saved = summary.get("weights_digest")
    if saved is not None and model.weights_digest() != saved:
        raise MusicbenchError(f"{path} does not hold the weights it was saved with (digest "
                              f"{model.weights_digest()} != {saved}); delete it to retrain")
    _attach(model, summary, path)
    return model


def _fit_and_save(defense: TrainingDefense, base: TargetModel, data: Dataset, ctx: Context,
                  path: Path) -> TargetModel:
    before = base.weights_digest()
    seed = int(getattr(defense.params, "seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = defense.fit(base, data, ctx=ctx)
    if not isinstance(model, TargetModel):
        raise TypeError(f"{type(defense).__name__}.fit returned {type(model).__name__}, not a "
                        "TargetModel")
    if base.weights_digest() != before:
        raise RuntimeError(f"{type(defense).__name__}.fit modified the base model "
                           f"'{base.name}' (its undefended twin in every cell); train a copy "
                           "(self.build(base, data, ctx=ctx))")
    if model.task != base.task or tuple(model.labels) != tuple(base.labels):
        raise RuntimeError(f"{type(defense).__name__}.fit returned a {model.task} model with "
                           f"labels {tuple(model.labels)[:5]}; the base is {base.task} with "
                           f"{tuple(base.labels)[:5]}")
    _freeze(model)
    summary = dict(getattr(model, "training_summary", {}) or {})
    summary |= {
        "key": defended_key(defense, base, data), "defense": defense.describe(),
        "base": base.describe(), "base_weights": before, "dataset": data.describe(),
        "dataset_fingerprint": data.fingerprint(), "device": str(ctx.device),
        "torch": torch.__version__, "weights_digest": model.weights_digest(),
    }
    save_module(model.module(), path, summary)
    _attach(model, summary, path)
    return model


def _freeze(model: TargetModel) -> None:
    net = model.module()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)


def _attach(model: TargetModel, summary: dict[str, Any], path: Path) -> None:
    model.training_summary = summary  # type: ignore[attr-defined]
    model.checkpoint = path  # type: ignore[attr-defined]
