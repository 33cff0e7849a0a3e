"""Surrogate x target transfer matrices of a stored run of leaderboards/configs/transfer.toml.

For each white-box attack crafted through ``transfer`` (PGD, C&W, MAIA-WB), a matrix whose rows
are surrogates and whose columns are targets: ASR on the target with its exact (Clopper–Pearson)
95% interval and the clip counts (successes / clean-correct clips attacked). The first row is
the attack run directly on the target (white-box, its own gradients, no confidence margin),
the reference a transfer is read against.

Each transfer is then compared with the direct attack on the same target, paired on the clips
both attacked (``musicbench.compare``: Newcombe interval, exact McNemar p), Holm-adjusted over
**every** comparison this script prints (the number is stated). A surrogate is matched to a
target model when the registered names agree and the surrogate's parameters, completed with
the model's defaults, equal the target's. Reads the store only::

    python benchmarks/transfer_matrix.py leaderboards/runs/transfer.sqlite   # or a run folder
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from musicbench.compare import compare_cells
from musicbench.leaderboard import planned_records
from musicbench.metrics import clopper_pearson
from musicbench.params import component_params
from musicbench.plugins import PluginSystem
from musicbench.stats import holm
from musicbench.store import CellRecord


def _full_params(plugins: PluginSystem, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the model's defaults, as the planner stores them."""
    import dataclasses

    cls = plugins.get("model", name).load()
    checked = component_params(cls, dict(params), table=f"models.{name}", what=name)
    return dataclasses.asdict(checked) if checked is not None else {}


def _normal(value: Any) -> Any:
    """Lists and tuples compare equal (TOML lists vs dataclass tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def surrogate_label(record: CellRecord, targets: dict[str, CellRecord],
                    plugins: PluginSystem) -> str:
    """The model label of this transfer cell's surrogate (or its name and parameters when the
    run has no such target)."""
    params = record.spec.attack.params
    name, given = params["surrogate"], params.get("surrogate_params") or {}
    full = _normal(_full_params(plugins, name, given))
    for label, cell in targets.items():
        if cell.spec.model.name == name and _normal(cell.spec.model.params) == full:
            return label
    extra = ", ".join(f"{k}={v}" for k, v in given.items())
    return f"{name} ({extra})" if extra else name


def matrices(records: list[CellRecord], plugins: PluginSystem) -> dict[str, Any]:
    """{inner attack: {"targets": [...], "rows": {surrogate: {target: record}}}}, and the
    paired comparisons with the direct attack (``"pairs"``)."""
    ok = [r for r in records if r.status == "ok"]
    any_cell: dict[str, CellRecord] = {}
    for r in ok:
        any_cell.setdefault(r.names[1], r)
    out: dict[str, Any] = {}
    for r in ok:
        if r.spec.attack.name != "transfer":
            continue
        inner = r.spec.attack.params["attack"]
        entry = out.setdefault(inner, {"targets": [], "rows": defaultdict(dict)})
        target = r.names[1]
        if target not in entry["targets"]:
            entry["targets"].append(target)
        entry["rows"][surrogate_label(r, any_cell, plugins)][target] = r
    for inner, entry in out.items():
        direct = {r.names[1]: r for r in ok
                  if r.spec.attack.name == inner and r.names[1] in entry["targets"]}
        entry["direct"] = direct
    return out


def paired(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Every transfer cell against the direct attack on its target, Holm over all of them."""
    rows = []
    for inner, entry in out.items():
        for target, direct in entry["direct"].items():
            transfers = {f"{s}": cells[target] for s, cells in entry["rows"].items()
                         if target in cells}
            if not transfers:
                continue
            cells = {direct.names[3]: direct} | {c.names[3]: c for c in transfers.values()}
            labels = [direct.names[3], *[c.names[3] for c in transfers.values()]]
            comparison = compare_cells(cells, labels, source="", dataset=direct.names[0],
                                       model=target, varying="attack", fixed=direct.names[2])
            for pair in comparison.pairs:
                rows.append({"attack": inner, "target": target, "pair": pair})
    for row, p in zip(rows, holm([r["pair"].p for r in rows]), strict=True):
        row["p_holm"] = p
    return rows


def _asr(record: CellRecord | None) -> str:
    if record is None:
        return "—"
    k, n = record.info.n_success, record.info.n_attacked
    if not n:
        return "— (0 attacked)"
    lo, hi = clopper_pearson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def render(out: dict[str, Any], pairs: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for inner, entry in out.items():
        targets = entry["targets"]
        threat = next(iter(next(iter(entry["rows"].values())).values())).spec.threat_model.label
        lines += [f"### {inner} ({threat})", "",
                  ("ASR % on the target [exact 95% CI] (fooled / attacked). Rows: where the "
                   "clip was crafted."), "",
                  "| crafted on \\ target | " + " | ".join(targets) + " |",
                  "|---|" + "---|" * len(targets)]
        lines.append("| *the target itself, directly* | "
                     + " | ".join(_asr(entry["direct"].get(t)) for t in targets) + " |")
        for surrogate, cells in entry["rows"].items():
            lines.append(f"| {surrogate} (transfer) | "
                         + " | ".join(_asr(cells.get(t)) for t in targets) + " |")
        lines.append("")
    if pairs:
        lines += [(f"Transfer vs the direct attack on the same target, paired on the clips "
                   f"both attacked: {len(pairs)} comparisons, Holm-adjusted together."), "",
                  ("| attack | target | transfer | n | direct | transfer ASR | diff [95% CI] | "
                   "Holm p |"), "|---|---|---|---|---|---|---|---|"]
        for row in pairs:
            p = row["pair"]
            lines.append(
                f"| {row['attack']} | {row['target']} | {p.b} | {p.n} | {100 * p.rate_a:.1f} | "
                f"{100 * p.rate_b:.1f} | {100 * (p.rate_b - p.rate_a):+.1f} "
                f"[{-100 * p.ci_high:+.1f}, {-100 * p.ci_low:+.1f}] | {row['p_holm']:.3g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a run folder or its results.sqlite")
    args = parser.parse_args()
    try:
        records = planned_records(args.out)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    out = matrices(records, PluginSystem())
    print(render(out, paired(out)), end="")


if __name__ == "__main__":
    main()
