"""Turn a config into cells: validate every name and parameter first, then expand the grid.

A cell is one (dataset, model, defense, attack). Its key hashes the resolved spec, the dataset
fingerprint, the plugin versions and the musicbench version, so a changed plugin or dataset
makes new cells while a rerun of the same command finds its finished ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import musicbench
from musicbench.config import KINDS, TABLES, ComponentSpec, RunConfig
from musicbench.errors import ConfigError, did_you_mean
from musicbench.params import build_params
from musicbench.plugins import PluginSystem


@dataclass(frozen=True)
class Resolved:
    """A config entry checked against its plugin: canonical name, class, validated params."""

    spec: ComponentSpec
    name: str
    cls: type
    params: Any
    provider: str

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params) if dataclasses.is_dataclass(self.params) else {}

    def ref(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.spec.label if self.spec.label != self.spec.name else self.name,
            "version": str(getattr(self.cls, "version", "1")),
            "params": self.params_dict(),
            "provider": self.provider,
        }


def resolve(config: RunConfig, plugins: PluginSystem) -> dict[str, list[Resolved]]:
    """Check every component of ``config``; raises :class:`ConfigError` before any work."""
    out: dict[str, list[Resolved]] = {}
    for kind in KINDS:
        items = []
        for spec in config.components[kind]:
            try:
                entry = plugins.get(kind, spec.name)
            except ConfigError as exc:
                raise ConfigError(str(exc), table=TABLES[kind], key="name") from exc
            cls = entry.load()
            params_type = getattr(cls, "Params", None)
            if params_type is None:
                if spec.params:
                    raise ConfigError(
                        f"{kind} '{spec.name}' takes no parameters", table=spec.table,
                        key=next(iter(spec.params)),
                    )
                params = None
            else:
                params = build_params(params_type, spec.params, table=spec.table)
            items.append(Resolved(spec, entry.name, cls, params, entry.provider))
        out[kind] = items
    _check_model_datasets(out)
    if config.run.fad_encoder:
        try:
            plugins.get("encoder", config.run.fad_encoder)
        except ConfigError as exc:
            raise ConfigError(str(exc), table="run", key="fad_encoder") from exc
    return out


def _check_model_datasets(resolved: dict[str, list[Resolved]]) -> None:
    dataset_names = [r.name for r in resolved["dataset"]]
    for model in resolved["model"]:
        for name in model.spec.datasets or ():
            if name not in dataset_names:
                hint = did_you_mean(name, dataset_names)
                raise ConfigError(
                    f"dataset '{name}' is not in this config's [[datasets]].{hint}",
                    table=model.spec.table, key="datasets",
                )


def apply_only(resolved: dict[str, list[Resolved]], only: list[str]) -> dict[str, list[Resolved]]:
    """Keep only the components named by ``--only KIND=NAME`` (repeatable; union per kind)."""
    wanted: dict[str, set[str]] = {}
    for item in only:
        kind, sep, name = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS or not name.strip():
            raise ConfigError(
                f"--only takes KIND=NAME with KIND one of {', '.join(KINDS)}; got '{item}'"
            )
        wanted.setdefault(kind, set()).add(name.strip())
    out = dict(resolved)
    for kind, names in wanted.items():
        present = {r.name for r in resolved[kind]} | {r.spec.label for r in resolved[kind]}
        for name in names:
            if name not in present:
                hint = did_you_mean(name, sorted(present))
                raise ConfigError(
                    f"--only {kind}={name}: no such {kind} in this config.{hint} "
                    f"The config has: {', '.join(sorted(present))}."
                )
        out[kind] = [r for r in resolved[kind] if r.name in names or r.spec.label in names]
    return out


def model_dataset_pairs(
    resolved: dict[str, list[Resolved]],
) -> list[tuple[Resolved, Resolved]]:
    """(dataset, model) pairs to evaluate: the model's ``datasets`` or every dataset of its task."""
    pairs = []
    for model in resolved["model"]:
        for ds in resolved["dataset"]:
            if model.spec.datasets is not None:
                if ds.name not in model.spec.datasets and ds.spec.name not in model.spec.datasets:
                    continue
                if ds.cls.task != model.cls.task:
                    raise ConfigError(
                        f"model '{model.name}' ({model.cls.task}) cannot be evaluated on dataset "
                        f"'{ds.name}' ({ds.cls.task})", table=model.spec.table, key="datasets",
                    )
            elif ds.cls.task != model.cls.task:
                continue
            pairs.append((ds, model))
    return pairs


def cell_spec(
    dataset: Resolved,
    fingerprint: str,
    model: Resolved,
    defense: Resolved,
    attack: Resolved,
    *,
    seed: int,
    samples: int,
    batch_size: int,
    keep_audio: int,
    fad_encoder: str = "",
) -> dict[str, Any]:
    """The plain-data spec of one cell, with its ``key``."""
    spec: dict[str, Any] = {
        "dataset": {**dataset.ref(), "fingerprint": fingerprint},
        "model": model.ref(),
        "defense": defense.ref(),
        "attack": attack.ref(),
        "run": {"seed": seed, "samples": samples, "batch_size": batch_size,
                "keep_audio": keep_audio, "fad_encoder": fad_encoder},
        "musicbench": musicbench.__version__,
    }
    spec["key"] = cell_key(spec)
    return spec


def cell_key(spec: dict[str, Any]) -> str:
    body = {k: ({kk: vv for kk, vv in v.items() if kk != "label"} if isinstance(v, dict) else v)
            for k, v in spec.items() if k != "key"}
    # keep_audio changes only the listening material kept, not a result.
    body["run"] = {k: v for k, v in body["run"].items() if k != "keep_audio"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cell_seed(spec: dict[str, Any]) -> int:
    """The cell's RNG seed: from the run seed and the components, independent of cell order."""
    parts = [spec["run"]["seed"]] + [
        [spec[k]["name"], spec[k]["params"]] for k in ("dataset", "model", "defense", "attack")
    ]  # labels are presentation only: they change neither the key nor the seed
    blob = json.dumps(parts, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)
