"""Typed records between the stages of a run: what the planner resolves (``CellSpec``) and what
the runner found out about a cell besides its figures (``CellInfo``).

Both are plain data: they round-trip through JSON (the store keeps them as JSON columns; a
distributed executor ships them), and nothing downstream reads them by string keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any

from musicbench.interfaces.attack import ThreatModel

CELL_KINDS = ("dataset", "model", "defense", "attack")


@dataclass(frozen=True)
class ComponentRef:
    """One resolved component of a cell: enough to rebuild it, and what keys its results.

    ``weights``: a hash of the trained weights the component runs with (a model's state dict,
    the inpainter an attack loads), None when it has none. ``fingerprint``: a dataset's
    content hash. ``label`` is presentation only and never part of a key or a seed.
    """

    kind: str
    name: str
    label: str
    version: str
    params: dict[str, Any]
    provider: str
    weights: str | None = None
    fingerprint: str | None = None

    def key_data(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": self.params,
                "provider": self.provider, "weights": self.weights,
                "fingerprint": self.fingerprint}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ComponentRef:
        return ComponentRef(**{f.name: data.get(f.name) for f in fields(ComponentRef)})


@dataclass(frozen=True)
class CellRun:
    """The run settings that change a cell's result (``keep_audio`` only changes what is kept
    for listening, so it is not part of the key)."""

    seed: int
    samples: int
    batch_size: int
    keep_audio: int
    fad_encoder: str
    metrics: tuple[str, ...]
    pseudo_labels: bool = False
    # How the harness attacks and judges the cell's defense (docs/architecture.md,
    # 'Evaluation protocol'), as the planner decided from the defense's measured behaviour: EOT
    # draws per gradient or score
    # call, BPDA through the surrogate, draws success is judged over, and whether the attack
    # was meant to be adaptive at all. The defaults are "nothing to adapt to".
    eot_samples: int = 1
    eval_draws: int = 1
    bpda: bool = False
    adaptive: bool = True
    oblivious: bool = False  # the attack crafts on the undefended model (a contrast)
    # (metric name, weights digest) of the metrics that have weights (pamt-distance): new
    # weights, new cells
    metric_weights: tuple[tuple[str, str], ...] = ()
    amp: str = ""  # "bf16": forward passes under bfloat16 autocast
    # The survivor cascade and the sanity gates (docs/protocol.md): keys
    # of the cells of the row whose fooled clips this cell does not attack again (AutoAttack's
    # rule: each attack runs only on the clips every earlier one left correct), and the part
    # the harness planned this cell to play: "" (a config entry), "large-radius" (the first
    # gradient attack at 10x its radius: must reach ~100 %), "identity-bpda" (BPDA through
    # the identity: beats exact gradients only under gradient masking), "convergence" (the
    # survivors re-attacked with more restarts, steps and EOT draws).
    after: tuple[str, ...] = ()
    role: str = ""

    def key_data(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("keep_audio")
        data["metrics"] = list(self.metrics)
        data["metric_weights"] = [list(p) for p in self.metric_weights]
        data["after"] = list(self.after)
        # Settings at their no-op value stay out of the key, so cells of deterministic,
        # differentiable defenses keep the keys they had before these settings existed.
        for name, noop in _EVALUATION_NOOPS.items():
            if data[name] == noop:
                data.pop(name)
        return data

    @property
    def contrast(self) -> bool:
        """A cell that is not a real evaluation of its defense (non-adaptive or oblivious),
        shown only for contrast: never part of a worst case or a sanity flag's yardstick."""
        return self.oblivious or not self.adaptive

    @property
    def sanity(self) -> bool:
        """A cell that checks the attack (10x the radius), not the defense: kept out of worst
        cases and threat-model columns; its result flags the row."""
        return self.role in SANITY_ROLES

    @property
    def adaptive_label(self) -> str:
        """What the leaderboard's ``adaptive`` column says: ``eot``, ``bpda``, ``eot+bpda``,
        ``none`` (nothing to adapt to), ``non-adaptive`` or ``oblivious``."""
        if self.oblivious:
            return "oblivious"
        if not self.adaptive:
            return "non-adaptive"
        used = [n for n, on in (("eot", self.eot_samples > 1), ("bpda", self.bpda)) if on]
        return "+".join(used) or "none"


_EVALUATION_NOOPS = {"eot_samples": 1, "eval_draws": 1, "bpda": False, "adaptive": True,
                     "oblivious": False, "metric_weights": [], "amp": "", "after": [],
                     "role": ""}

ROLES = ("", "large-radius", "identity-bpda", "convergence")
"""What a planned cell is for (:attr:`CellRun.role`)."""

SANITY_ROLES = ("large-radius",)
"""Roles of cells that check the attack rather than evaluate the defense: never part of a
worst case or a threat model's column; they raise flags on their row."""


@dataclass(frozen=True)
class CellSpec:
    """One (dataset, model, defense, attack) cell, fully resolved by the planner.

    ``threat`` is the attack's access (white-box or black-box); ``threat_model`` its budget,
    the unit of worst cases and sanity flags.
    """

    dataset: ComponentRef
    model: ComponentRef
    defense: ComponentRef
    attack: ComponentRef
    run: CellRun
    threat: str
    threat_model: ThreatModel
    musicbench: str

    @cached_property
    def key(self) -> str:
        """Hash of everything that changes the result: components (name, version, params,
        provider, weights, dataset fingerprint), run settings, musicbench version."""
        body = {k: getattr(self, k).key_data() for k in CELL_KINDS}
        body["run"] = self.run.key_data()
        body["musicbench"] = self.musicbench
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    @property
    def seed(self) -> int:
        """The cell's RNG seed: from the run seed and the components' names and parameters,
        independent of cell order and of labels."""
        parts = [self.run.seed] + [[getattr(self, k).name, getattr(self, k).params]
                                   for k in CELL_KINDS]
        return derive_seed(json.dumps(parts, sort_keys=True))

    @property
    def row_seed(self) -> int:
        """The seed of the cell's row, (dataset, model, defense), shared by every attack on it:
        clean scoring under a randomized defense draws from it, so clean accuracy is the same
        in every cell of the row."""
        parts = [self.run.seed] + [[getattr(self, k).name, getattr(self, k).params]
                                   for k in CELL_KINDS[:3]]
        return derive_seed(json.dumps(parts, sort_keys=True))

    def stream(self, name: str) -> int:
        """An independent seed for one random stream of the cell besides the attack's own
        (which is :attr:`seed`): ``"defense"`` (draws while attacked), ``"judge"``,
        ``"probe"``; the defense's draws must not share a stream with the attack's."""
        return derive_seed(f"{self.seed}:{name}")

    @property
    def labels(self) -> tuple[str, str, str, str]:
        """(dataset, model, defense, attack) as tables name them."""
        return (self.dataset.label, self.model.label, self.defense.label, self.attack.label)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: asdict(getattr(self, k)) for k in CELL_KINDS}
        out["run"] = asdict(self.run) | {"metrics": list(self.run.metrics),
                                         "metric_weights": [list(p) for p in
                                                            self.run.metric_weights],
                                         "after": list(self.run.after)}
        out["threat"] = self.threat
        out["threat_model"] = self.threat_model.to_dict()
        out["musicbench"] = self.musicbench
        out["key"] = self.key
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CellSpec:
        run = dict(data["run"])
        run["metrics"] = tuple(run.get("metrics", ()))
        run["metric_weights"] = tuple(tuple(p) for p in run.get("metric_weights", ()))
        run["after"] = tuple(run.get("after", ()))
        return CellSpec(
            **{k: ComponentRef.from_dict(data[k]) for k in CELL_KINDS},
            run=CellRun(**run),
            threat=data["threat"],
            threat_model=ThreatModel.from_dict(data["threat_model"]),
            musicbench=data["musicbench"],
        )


def derive_seed(text: str) -> int:
    """A 63-bit seed from ``text`` (SHA-256), for independent, order-free random streams."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass
class CellInfo:
    """What the runner learnt about a cell besides its figures.

    ``n``: clips drawn; ``n_attacked``: the clean-correct ones the attack ran on;
    ``n_success``: those it fooled (the count LSD/SNR are averaged over); ``set_metrics``: per
    set-level metric, the clips it stands on, why it is NaN (``note``) and the encoder it used
    (``{"fad": {"n": 41, "note": None, "encoder": "musicnn"}}``); ``adaptive``: ``none``,
    ``eot``, ``bpda``, ``eot+bpda`` or ``non-adaptive`` (:attr:`CellRun.adaptive_label`);
    ``flags``: warnings the runner raised (the leaderboard adds its own).
    """

    n: int = 0
    n_attacked: int = 0
    n_success: int = 0
    task: str = ""
    adaptive: str = "none"
    flags: list[str] = field(default_factory=list)
    pseudo_labels: bool = False
    labels: list[str] = field(default_factory=list)
    sample_rate: int = 16_000
    device: str = ""
    set_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    load_average: list[float] | None = None
    cpus: int | None = None
    # Defenses (docs/defenses.md): the defense's declared and measured flags
    # (:class:`musicbench.defense_checks.DefenseBehaviour` as a dict, preprocessors only); the
    # undefended model's clean accuracy on the same clips (what the defense costs); the median
    # input-gradient norm at clean clips through the defended model (white-box cells).
    defense_behaviour: dict[str, Any] | None = None
    clean_accuracy_undefended: float | None = None
    input_gradient_median: float | None = None
    input_gradient_median_undefended: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CellInfo:
        known = {f.name for f in fields(CellInfo)}
        return CellInfo(**{k: v for k, v in data.items() if k in known})
