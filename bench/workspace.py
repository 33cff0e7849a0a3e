"""Builds components from (name, parameters) and keeps prepared datasets and loaded models.

One Workspace lives for one process (driver or worker); nothing in it is global.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from musicbench.interfaces import Context, Dataset, Progress, TargetModel, TrainingDefense
from musicbench.interfaces.context import NullProgress
from musicbench.params import component_params
from musicbench.plugins import PluginSystem

KIND_TABLES = {"dataset": "datasets", "model": "models", "defense": "defenses",
               "attack": "attacks", "metric": "metrics", "inpainter": "inpainters",
               "encoder": "encoders"}


class Workspace:
    """Makes components and caches the expensive ones (datasets, models) by their parameters."""

    def __init__(
        self,
        plugins: PluginSystem,
        *,
        cache_dir: Path,
        device: torch.device,
        progress: Progress | None = None,
        allow_training: bool = True,
        seed: int = 0,
    ):
        self.plugins = plugins
        self.ctx = Context(
            cache_dir=Path(cache_dir), device=device, progress=progress or NullProgress(),
            dataset=self.dataset, inpainter=self.inpainter, allow_training=allow_training,
            seed=seed, encoder=self.encoder, memo=self.memo, model=self.model,
            attack=self.attack,
        )
        self._datasets: dict[str, Dataset] = {}
        self._models: dict[str, TargetModel] = {}
        self._defended: dict[str, TargetModel] = {}
        self._defenses: dict[str, Any] = {}
        self._metrics: dict[str, Any] = {}
        self._encoders: dict[str, Any] = {}
        self._inpainters: dict[str, Any] = {}
        self._memo: dict[tuple[str, ...], Any] = {}

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def factory(self, kind: str, name: str) -> tuple[str, Any]:
        """(canonical name, class) of a registered component; unknown names raise."""
        entry = self.plugins.get(kind, name)
        return entry.name, entry.load()

    def make(self, kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
        """A fresh component with validated parameters."""
        canonical, cls = self.factory(kind, name)
        checked = component_params(cls, params or {}, table=f"{KIND_TABLES[kind]}.{name}",
                                   what=f"{kind} '{name}'")
        obj = cls() if checked is None else cls(checked)
        obj.name = canonical
        return obj

    def dataset(self, name: str, params: dict[str, Any] | None = None) -> Dataset:
        """The prepared dataset (rendered or loaded from the cache once per process)."""
        key = _key("dataset", self.plugins.get("dataset", name).name, params)
        if key not in self._datasets:
            ds = self.make("dataset", name, params)
            ds.prepare(self.ctx)
            self._datasets[key] = ds
        return self._datasets[key]

    def model(self, name: str, params: dict[str, Any] | None = None) -> TargetModel:
        """The loaded model (trained on first use if it has no cached checkpoint)."""
        key = _key("model", self.plugins.get("model", name).name, params)
        if key not in self._models:
            model = self.make("model", name, params)
            model.load(self.ctx)
            self._models[key] = model
        return self._models[key]

    def attack(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """A fresh attack, prepared (its inpainter loaded): attacks keep no state between
        batches that matters, but a fresh one per caller keeps callers apart."""
        attack = self.make("attack", name, params)
        attack.prepare(self.ctx)
        return attack

    def encoder(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """The loaded encoder (FAD, PAMT backbones)."""
        key = _key("encoder", self.plugins.get("encoder", name).name, params)
        if key not in self._encoders:
            encoder = self.make("encoder", name, params)
            encoder.load(self.ctx)
            self._encoders[key] = encoder
        return self._encoders[key]

    def inpainter(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """The loaded inpainter (trained on first use if it has no cached checkpoint)."""
        key = _key("inpainter", self.plugins.get("inpainter", name).name, params)
        if key not in self._inpainters:
            inpainter = self.make("inpainter", name, params)
            inpainter.load(self.ctx)
            self._inpainters[key] = inpainter
        return self._inpainters[key]

    def defense(self, name: str, params: dict[str, Any] | None, sample_rate: int) -> Any:
        """A defense ready for use in front of a model at ``sample_rate``: a preprocessor is
        bound to the rate and loaded (weights on the device) once per process; a training
        defense is returned as made (the core fits it per base model)."""
        key = _key("defense", self.plugins.get("defense", name).name, params) + f"@{sample_rate}"
        if key not in self._defenses:
            defense = self.make("defense", name, params)
            if defense.kind == "preprocessor":
                defense.bind(sample_rate)
                defense.load(self.ctx)
            self._defenses[key] = defense
        return self._defenses[key]

    def metric(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """The metric, loaded (weights trained on first use) once per process."""
        key = _key("metric", self.plugins.get("metric", name).name, params)
        if key not in self._metrics:
            metric = self.make("metric", name, params)
            metric.load(self.ctx)
            self._metrics[key] = metric
        return self._metrics[key]

    def memo(self, key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` once per process for ``key``: e.g. the encoder frames of a clean clip,
        which every attack cell on the same dataset embeds for FAD (key = encoder, dataset,
        fingerprint, clip id)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def defended_model(
        self, defense: TrainingDefense, base: TargetModel, data: Dataset
    ) -> TargetModel:
        """The model ``defense`` fits to ``base`` on ``data``, once per process: loaded from
        the cache, or fitted first (:func:`musicbench.training.load_or_fit_defense`)."""
        from musicbench.training import defended_key, load_or_fit_defense

        key = f"{defense.name}:{base.name}:{defended_key(defense, base, data)}"
        if key not in self._defended:
            self._defended[key] = load_or_fit_defense(defense, base, data, self.ctx)
        return self._defended[key]


def _key(kind: str, name: str, params: dict[str, Any] | None) -> str:
    return kind + ":" + name + ":" + json.dumps(params or {}, sort_keys=True)
