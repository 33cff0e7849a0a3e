"""``musicbench verify``: recompute cells of a stored run at this revision and compare them, clip
by clip, with what the store holds.

A published board names the clean revision its cells were computed at and ships its store, so
a reader can check it without trusting it: the run's config (kept in the store) is planned again
here, every stored cell whose key this revision reproduces can be recomputed, and the fresh
record is compared with the stored one — every clip's outcome, prediction, queries, steps and
metrics, the cell's figures and intervals, and its flags (timings and machine load are left
out). A cell whose key differs here cannot be compared: its key says why (the harness's
results version, a plugin's version, parameters or weights), and the verdict names the parts,
so the reader knows to check out the board's revision instead.

Recomputing is as costly as the cell was; by default only the cheapest cell (by its stored
seconds) is recomputed, ``cells`` or ``everything`` ask for more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musicbench.cache import cache_dir
from musicbench.cells import CELL_KINDS, CellSpec
from musicbench.config import parse_config
from musicbench.environment import describe_environment, resolve_device
from musicbench.executors import fooled_in
from musicbench.interfaces.context import NullProgress, Progress
from musicbench.leaderboard import planned_run
from musicbench.planner import plan_cells, resolve_only
from musicbench.plugins import PluginSystem
from musicbench.runner import run_cell
from musicbench.store import CellRecord
from musicbench.workspace import Workspace


@dataclass
class CellCheck:
    """One stored cell: ``verdict`` is ``identical``, ``differs``, ``key differs`` (this
    revision plans another cell for its labels), ``not recomputed`` (same key, not chosen) or
    ``not planned`` (the config here has no cell of its labels); ``details`` say what."""

    labels: tuple[str, str, str, str]
    key: str
    verdict: str
    details: list[str] = field(default_factory=list)
    causes: set[str] = field(default_factory=set)
    """For ``key differs``: ``cache`` (weights or data this machine's cache built otherwise)
    and/or ``code`` (the harness, a plugin's version or parameters, a run setting)."""


CACHED_FIELDS = ("weights", "fingerprint")
"""Parts of a component's key that the cache decides, not the code."""


def remedies(checks: list[CellCheck]) -> list[str]:
    """What to do so that the cells whose key differs here can be verified."""
    causes = set().union(*(c.causes for c in checks if c.verdict == "key differs"))
    out = ["check out the revision in its leaderboard's header"] if "code" in causes else []
    if "cache" in causes:
        out.append("seed the cache with the board's weights (leaderboards/README.md)")
    return out


def verify(out: Path, plugins: PluginSystem, *, cells: int = 1, everything: bool = False,
           only: Iterable[str] = (), rtol: float = 0.0, device: str | None = None,
           progress: Progress | None = None) -> list[CellCheck]:
    """Check the finished cells of the run in ``out`` (a folder or its ``results.sqlite``)
    against this revision; recompute the ``cells`` cheapest of those whose key it reproduces
    (all of them with ``everything``). ``rtol``: relative tolerance for real-valued figures
    (0: bit for bit, what one kind of CPU gives); discrete outcomes must always agree.
    ``device``: where to recompute; by default the device the run used (a CPU board is checked
    on the CPU of a GPU machine too)."""
    progress = progress or NullProgress()
    records, runs = planned_run(out)
    stored = [r for r in records if r.status == "ok"]
    run = runs[0]
    config = parse_config(run["config_text"], source=run["config_source"])
    device = resolve_device(device or run["settings"].get("device") or config.run.device)
    ws = Workspace(plugins, cache_dir=cache_dir(), device=device, progress=progress,
                   seed=config.run.seed, allow_training=config.run.allow_training)
    resolved = resolve_only(config, plugins, list(only))
    plan = plan_cells(resolved, ws, config.run, quick=bool(run["settings"].get("quick")))
    here = {spec.labels: spec for spec in plan.specs}

    checks: dict[str, CellCheck] = {}
    reproducible: list[tuple[CellRecord, CellSpec]] = []
    for record in stored:
        spec = here.get(record.spec.labels)
        if spec is None:
            if not only:  # with --only, cells outside it are simply not asked about
                checks[record.key] = CellCheck(record.spec.labels, record.key, "not planned",
                                               ["this revision plans no cell of these labels"])
            continue
        if spec.key != record.key:
            parts = key_differences(record.spec, spec)
            checks[record.key] = CellCheck(record.spec.labels, record.key, "key differs",
                                           [text for _, text in parts],
                                           {cause for cause, _ in parts})
            continue
        checks[record.key] = CellCheck(record.spec.labels, record.key, "not recomputed")
        reproducible.append((record, spec))

    # cheapest first: attack time (a run's first cell also pays for shared work)
    chosen = sorted(reproducible,
                    key=lambda pair: pair[0].attack_seconds or pair[0].seconds or 0.0)
    if not everything:
        chosen = chosen[:cells]
    environment = describe_environment(device)
    for record, spec in chosen:
        with progress(f"recomputing {' / '.join(spec.labels)}"):
            # a cell of a survivor cascade attacks what the stored cells before it left
            fresh = run_cell(spec, ws, environment, fooled_in(stored, spec.run.after))
        found = record_differences(record, fresh, rtol=rtol)
        checks[record.key] = CellCheck(record.spec.labels, record.key,
                                       "differs" if found else "identical", found)
    return list(checks.values())


def key_differences(stored: CellSpec, here: CellSpec) -> list[tuple[str, str]]:
    """What makes two specs of the same labels different cells, part by part: (cause, text),
    the cause ``cache`` or ``code`` (:attr:`CellCheck.causes`)."""
    out = []
    if stored.musicbench != here.musicbench:
        out.append(("code", f"harness: {stored.musicbench} stored, {here.musicbench} here"))
    for kind in CELL_KINDS:
        a, b = getattr(stored, kind).key_data(), getattr(here, kind).key_data()
        out += [("cache" if name in CACHED_FIELDS else "code",
                 (f"{kind} {getattr(here, kind).name}: {name} {a.get(name)!r} stored, "
                 f"{b.get(name)!r} here")) for name in sorted(a.keys() | b.keys())
                if a.get(name) != b.get(name)]
    a, b = stored.run.key_data(), here.run.key_data()
    out += [("code", f"run setting {name}: {a.get(name)!r} stored, {b.get(name)!r} here")
            for name in sorted(a.keys() | b.keys()) if a.get(name) != b.get(name)]
    return out or [("code", "the keys differ in a part this report does not name")]


def record_differences(stored: CellRecord, fresh: CellRecord, *, rtol: float = 0.0
                       ) -> list[str]:
    """Every way ``fresh`` (recomputed) differs from ``stored`` in what
    :meth:`CellRecord.comparable` keeps (timings and load left out) — per clip, per figure and
    in the flags; empty when they agree."""
    if fresh.status != "ok":
        return [f"recomputed cell failed: {fresh.error}"]
    was, now = stored.comparable(), fresh.comparable()
    out = []
    old = {s["sample_id"]: s for s in was["samples"]}
    new = {s["sample_id"]: s for s in now["samples"]}
    if old.keys() != new.keys():
        out.append(f"clips: {len(old)} stored, {len(new)} recomputed, "
                   f"{len(old.keys() ^ new.keys())} not in both")
    differing = []
    for clip in sorted(old.keys() & new.keys(), key=lambda c: old[c]["position"]):
        fields = [name for name in old[clip] if not _same(old[clip][name], new[clip][name],
                                                           rtol)]
        if fields:
            differing.append((clip, fields))
    if differing:
        clip, fields = differing[0]
        shown = ", ".join(f"{name} {old[clip][name]!r} → {new[clip][name]!r}"
                          for name in fields[:3])
        out.append(f"{len(differing)} of {len(old)} clips differ (first: {clip}: {shown})")
    for name in sorted(was["metrics"].keys() | now["metrics"].keys()):
        a, b = was["metrics"].get(name), now["metrics"].get(name)
        if a is None or b is None:
            out.append(f"figure {name}: only {'recomputed' if a is None else 'stored'}")
        elif not _same(a, b, rtol):
            out.append(f"figure {name}: {a[0]!r} {a[1]!r} stored, {b[0]!r} {b[1]!r} recomputed")
    if was["info"]["flags"] != now["info"]["flags"]:
        out.append(f"flags: {was['info']['flags']!r} stored, {now['info']['flags']!r} "
                   "recomputed")
    return out


def _same(a: Any, b: Any, rtol: float) -> bool:
    """Equal, NaN equal to NaN, reals within ``rtol``; containers element by element."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, rtol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rtol) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)
    return a == b
