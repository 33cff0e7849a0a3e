"""The evaluation protocol of one row: the survivor cascade and the sanity gates it plans.

A row is the cells of one (dataset, model, defense), in config order. Two things are planned
here rather than written in configs, so that no defense is judged by the goodwill of whoever
wrote its config (docs/protocol.md):

- **Survivor cascade** (``[run] cascade = true``; AutoAttack's rule, Croce & Hein 2020):
  within one threat model the attacks run in config order and each attacks only the clips
  that every earlier one left correct (:attr:`CellRun.after` holds the keys of the cells
  before it). A cell's ``n att`` is then the survivors it received and ``n ok`` the clips it
  added; the last cell's robust accuracy is the row's worst case, exact by construction.
- **Sanity gates** (``[run] sanity``, on by default; rows with a defense only: the identity
  preprocessor of the undefended row has nothing to check). For each bounded threat model
  (an L∞/L2 radius or an SNR budget), its first white-box gradient attack ``G`` also runs
  (1) at 10× its radius, or 20 dB less SNR (``large-radius``: an attack that cannot fool
  nearly every clip there is too weak for its figure to mean robustness; Carlini et al. 2019,
  "On evaluating adversarial robustness", §5); (2) through the identity with BPDA where the
  defense is attacked with exact gradients (``identity-bpda``: beating exact gradients means
  they were masked; Athalye, Carlini & Wagner 2018; Tramèr et al. 2020); (3) on the clips
  that survive every attack of the threat model, with 5 restarts, 2× steps and 2× EOT draws
  (``convergence``: clips that fall show the figure had not converged). (2) and (3) are
  evaluations of the defense and join the worst case; (1) only raises flags.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from musicbench.cells import CellSpec, ComponentRef
from musicbench.config import MAX_DRAWS
from musicbench.interfaces.attack import ThreatModel

if TYPE_CHECKING:
    from musicbench.defense_checks import DefenseBehaviour
    from musicbench.resolved import Resolved

RADIUS_FACTOR = 10
"""The large-radius gate multiplies an L∞/L2 radius by this ..."""

SNR_DROP_DB = 20.0
"""... or lowers an SNR budget by this many dB (the same factor of 10 in amplitude)."""

CONVERGENCE_RESTARTS = 5
CONVERGENCE_FACTOR = 2
"""The convergence gate's attack: 5 random restarts (where the attack has restarts), twice
the steps and twice the EOT draws of the attack it repeats."""

BOUNDED = ("norm", "snr")


def protocol_row(row: list[tuple[CellSpec, Resolved]], *, cascade: bool, sanity: bool,
                 behaviour: DefenseBehaviour | None) -> list[CellSpec]:
    """The row's cells as the protocol runs them: the configured ones (chained when
    ``cascade``), then the gates of each bounded threat model when ``sanity``.

    ``row``: the row's cells in config order, each with its resolved attack entry;
    ``behaviour``: the preprocessor's measured behaviour (None for a training defense)."""
    by_tm: dict[ThreatModel, list[tuple[CellSpec, Resolved]]] = {}
    for spec, attack in row:
        if not spec.run.contrast:
            by_tm.setdefault(spec.threat_model, []).append((spec, attack))
    chained: dict[str, CellSpec] = {}  # original key -> the cell as planned
    for cells in by_tm.values():
        before: list[str] = []
        for spec, _ in cells:
            planned = _after(spec, tuple(before)) if cascade else spec
            chained[spec.key] = planned
            before.append(planned.key)
    out = [chained.get(spec.key, spec) for spec, _ in row]
    if not sanity:
        return out
    for tm, cells in by_tm.items():
        gradient = next(((spec, attack) for spec, attack in cells
                         if spec.threat == "white-box"
                         and not getattr(attack.cls, "transfer", False)), None)
        if tm.kind not in BOUNDED or gradient is None:
            continue
        first, attack = chained[gradient[0].key], gradient[1]
        evaluated = [chained[spec.key].key for spec, _ in cells]
        large = large_radius_cell(first, attack)
        if large is not None:
            out.append(large)
        if behaviour is not None and not first.run.bpda:
            identity = _role(first, "identity-bpda", "BPDA identity", bpda=True,
                             after=tuple(evaluated) if cascade else ())
            out.append(identity)
            evaluated.append(identity.key)
        stronger = convergence_cell(first, attack, tuple(evaluated))
        if stronger is not None:
            out.append(stronger)
    return out


def large_radius_cell(first: CellSpec, attack: Resolved) -> CellSpec | None:
    """``first`` at 10× its radius (or 20 dB less SNR); None when its parameters name no
    radius the gate knows (``eps``, ``snr_db``) or the larger one is out of range."""
    tm = first.threat_model
    params = attack.params
    fields = {f.name for f in dataclasses.fields(params)} if dataclasses.is_dataclass(
        params) else set()
    try:
        if tm.kind == "snr" and "snr_db" in fields:
            changed = dataclasses.replace(params, snr_db=float(tm.snr_db) - SNR_DROP_DB)
            new_tm = ThreatModel("snr", norm=tm.norm, snr_db=float(tm.snr_db) - SNR_DROP_DB)
            label = f"{first.attack.label}, SNR −{SNR_DROP_DB:g} dB"
        elif tm.kind == "norm" and "eps" in fields:
            eps = float(tm.eps) * RADIUS_FACTOR
            changed = dataclasses.replace(params, eps=eps)
            new_tm = ThreatModel("norm", norm=tm.norm, eps=eps)
            label = f"{first.attack.label}, {RADIUS_FACTOR}×ε"
        else:
            return None
    except ValueError:  # the larger radius is outside the attack's own limits
        return None
    ref = dataclasses.replace(first.attack, label=label, params=dataclasses.asdict(changed))
    run = dataclasses.replace(first.run, role="large-radius", after=())
    return dataclasses.replace(first, attack=ref, run=run, threat_model=new_tm)


def convergence_cell(first: CellSpec, attack: Resolved, after: tuple[str, ...]
                     ) -> CellSpec | None:
    """``first`` with 5 restarts, 2× steps and 2× EOT draws, on the clips that survive the
    cells ``after``; None when the attack has neither ``restarts`` nor ``steps``."""
    params = attack.params
    if not dataclasses.is_dataclass(params):
        return None
    fields = {f.name for f in dataclasses.fields(params)}
    changes: dict[str, Any] = {}
    if "restarts" in fields:
        changes["restarts"] = max(CONVERGENCE_RESTARTS, params.restarts)
    if "steps" in fields:
        changes["steps"] = CONVERGENCE_FACTOR * params.steps
    if not changes:
        return None
    try:
        stronger = dataclasses.replace(params, **changes)
    except ValueError:
        return None
    eot = first.run.eot_samples
    cell = _role(first, "convergence", "converged", after=after,
                 eot_samples=min(MAX_DRAWS, CONVERGENCE_FACTOR * eot) if eot > 1 else 1)
    ref: ComponentRef = dataclasses.replace(cell.attack, params=dataclasses.asdict(stronger))
    return dataclasses.replace(cell, attack=ref)


def _role(first: CellSpec, role: str, suffix: str, **run_changes: Any) -> CellSpec:
    run = dataclasses.replace(first.run, role=role, **run_changes)
    ref = dataclasses.replace(first.attack, label=f"{first.attack.label}, {suffix}")
    return dataclasses.replace(first, attack=ref, run=run)


def _after(spec: CellSpec, keys: tuple[str, ...]) -> CellSpec:
    return dataclasses.replace(spec, run=dataclasses.replace(spec.run, after=keys))
