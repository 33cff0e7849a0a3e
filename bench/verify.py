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

Before any of that, every stored cell is checked against itself, which is cheap: its figures
(clean accuracy, ASR, robust accuracy and their intervals, the per-clip metrics' means, the
clip counts) are derived again from its stored clips by the runner's own function, and its
stored spec must still hash to the key it is stored under. A cell that fails either was edited
(``inconsistent``, ``edited``), and so is one that the stored config plans otherwise at the
same harness and plugin versions (its config was edited).

Recomputing is as costly as the cell was; by default only the cheapest cell (by its stored
seconds) is recomputed, ``cells`` or ``everything`` ask for more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from musicbench.cache import cache_dir
from musicbench.cell_tasks import fooled_in
from musicbench.cells import CELL_KINDS, CellInfo, CellSpec
from musicbench.config import parse_config
from musicbench.environment import describe_environment, resolve_device
from musicbench.interfaces.context import NullProgress, Progress
from musicbench.leaderboard import planned_run
from musicbench.planner import harness_version, plan_cells, resolve_only
from musicbench.plugins import PluginSystem
from musicbench.runner import _cell_metrics, run_cell
from musicbench.store import CellRecord, Store
from musicbench.workspace import Workspace


@dataclass
class CellCheck:
    """One stored cell: ``verdict`` is ``identical``, ``differs``, ``inconsistent`` (its
    stored figures are not those of its stored clips), ``edited`` (its stored spec no longer
    hashes to its key, or the stored config plans it otherwise at the same versions),
    ``key differs`` (this revision plans another cell for its labels), ``not recomputed``
    (same key, not chosen) or ``not planned`` (the config here has no cell of its labels);
    ``details`` say what. :data:`FAILURES` are the verdicts that fail a store."""

    labels: tuple[str, str, str, str]
    key: str
    verdict: str
    details: list[str] = field(default_factory=list)
    causes: set[str] = field(default_factory=set)
    """For ``key differs``: ``cache`` (weights or data this machine's cache built otherwise)
    and/or ``code`` (the harness, a plugin's version or parameters, a run setting)."""


FAILURES = ("differs", "inconsistent", "edited")
"""Verdicts that fail a store whatever the other cells say."""

RATES = ("clean_accuracy", "asr", "robust_accuracy")
"""Figures whose definition every results version shares (but clean accuracy under pseudo
labels, NaN before results version 3): re-derived in every cell."""

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
    edited = _edited_specs(out)
    for record in stored:
        labels, key = record.spec.labels, record.key
        if key in edited:
            checks[key] = CellCheck(labels, key, "edited", [edited[key]])
            continue
        # a failure whatever follows; recomputing the cell (if chosen) says more
        found = rederive_differences(record, rtol=rtol)
        spec = here.get(labels)
        if spec is None:
            if found:
                checks[key] = CellCheck(labels, key, "inconsistent", found)
            elif not only:  # with --only, cells outside it are simply not asked about
                checks[key] = CellCheck(labels, key, "not planned",
                                        ["this revision plans no cell of these labels"])
            continue
        if spec.key != key:
            parts = key_differences(record.spec, spec)
            texts = [text for _, text in parts]
            if found:
                checks[key] = CellCheck(labels, key, "inconsistent",
                                        found + [f"not recomputed: {t}" for t in texts])
            elif _same_versions(record.spec, spec):
                why = ("the stored config plans this cell otherwise at the harness and "
                       "plugin versions it was computed at: its config or its spec was edited "
                       "(or this machine measured a defense otherwise)")
                checks[key] = CellCheck(labels, key, "edited", [why, *texts])
            else:
                checks[key] = CellCheck(labels, key, "key differs", texts,
                                        {cause for cause, _ in parts})
            continue
        checks[key] = CellCheck(labels, key, "inconsistent" if found else "not recomputed",
                                found)
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
        check = checks[record.key]
        if check.verdict == "inconsistent":
            check.details += [f"recomputed: {text}" for text in found or ["identical"]]
        else:
            checks[record.key] = CellCheck(record.spec.labels, record.key,
                                           "differs" if found else "identical", found)
    return list(checks.values())


def rederive_differences(record: CellRecord, *, rtol: float = 0.0) -> list[str]:
    """Every way a stored cell's figures differ from those derived again from its stored clips
    by the runner's own :func:`musicbench.runner._cell_metrics` (a survivor cascade's clips
    not attacked, intervals clustered by work, as the runner did): the clip counts and the
    rates in every cell (clean accuracy under pseudo labels only at this results version);
    their intervals, the per-clip metrics' means and intervals and the
    mean queries only in cells of this revision's harness version (another results version
    may have computed them otherwise). Set-level metrics (FAD) need the audio: only
    recomputing checks them. Empty when they agree."""
    info = CellInfo()
    names = sorted({name for s in record.samples if s.attacked for name in s.metrics})
    try:
        derived = _cell_metrics(record.samples, names, record.attack_seconds,
                                record.info.pseudo_labels, info)
    except ValueError as exc:  # e.g. an attacked clip that is clean-wrong
        return [f"its clips contradict each other: {exc}"]
    out = [f"info {name}: {getattr(record.info, name)!r} stored, {getattr(info, name)!r} "
           "from its clips" for name in ("n", "n_attacked", "n_success")
           if getattr(record.info, name) != getattr(info, name)]
    full = record.spec.musicbench == harness_version()
    rates = [r for r in RATES
             if full or not (r == "clean_accuracy" and record.info.pseudo_labels)]
    for name in [*rates, *names, "mean_queries"] if full else rates:
        mine = derived[name]
        kept = record.metrics.get(name)
        if kept is None:
            out.append(f"figure {name}: not stored, {mine.value!r} from its clips")
            continue
        a, b = _figure(kept.value, kept.ci), _figure(mine.value, mine.ci)
        if not (_same(a[0], b[0], rtol) and (not full or _same(a[1], b[1], rtol))):
            out.append(f"figure {name}: {kept.value!r} {kept.ci!r} stored, {mine.value!r} "
                       f"{mine.ci!r} from its clips")
    return out


def _edited_specs(out: Path) -> dict[str, str]:
    """Stored cells whose spec no longer hashes to the key they are stored under, by the key
    their spec hashes to (what :class:`CellRecord` reports): what was edited."""
    db = out if out.suffix == ".sqlite" else out / "results.sqlite"
    store = Store(db, readonly=True)
    try:
        rows = store.conn.execute("SELECT key, spec FROM cells WHERE status='ok'").fetchall()
    finally:
        store.close()
    found = {}
    for key, text in rows:
        hashed = CellSpec.from_dict(json.loads(text)).key
        if hashed != key:
            found[hashed] = (f"its stored spec hashes to {hashed}, not to the key {key} it is "
                             "stored under: the spec was edited after the cell was computed")
    return found


def _same_versions(stored: CellSpec, here: CellSpec) -> bool:
    """Same harness, and every component at the same version, provider, weights and data: a
    key that differs then differs by what the config says (parameters, run settings)."""
    fixed = ("name", "version", "provider", *CACHED_FIELDS)
    return stored.musicbench == here.musicbench and all(
        getattr(stored, kind).key_data()[f] == getattr(here, kind).key_data()[f]
        for kind in CELL_KINDS for f in fixed)


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
        elif not _same(_figure(*a), _figure(*b), rtol):
            out.append(f"figure {name}: {a[0]!r} {a[1]!r} stored, {b[0]!r} {b[1]!r} recomputed")
    if was["info"]["flags"] != now["info"]["flags"]:
        out.append(f"flags: {was['info']['flags']!r} stored, {now['info']['flags']!r} "
                   "recomputed")
    return out


def _figure(value: float | None, ci: tuple[float, float] | None
            ) -> tuple[float | None, tuple[float, float] | None]:
    """A figure as compared: an interval of NaNs is no interval (stores written before NaN
    ends were kept read such an interval back as none)."""
    if ci is not None and all(isinstance(x, float) and math.isnan(x) for x in ci):
        ci = None
    return value, ci


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
