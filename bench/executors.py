"""Executors run planned cells and hand each finished record to the run's result sink.

``local`` runs cells one after another in this process (the default); ``ray`` runs them as
tasks on a Ray cluster (:mod:`musicbench.ray_executor`). A cell may be split into clip shards
(``[run] shard_clips``, :mod:`musicbench.shards`): each shard runs as its own task, is kept in
the store as it finishes (a rerun runs only the missing ones), and the cell record is made
from all of them. The sink writes the record to the store in one transaction and notifies
``cell_finished`` observers. An executor is built from the run's ``[run]`` settings.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from musicbench.cells import CellSpec
from musicbench.config import RunSettings
from musicbench.errors import MusicbenchError
from musicbench.interfaces import Progress
from musicbench.runner import cell_clip_count, finish_cell, now, run_cell, run_shard
from musicbench.shards import ShardResult, effective_shard_clips, shard_ranges
from musicbench.store import CellRecord
from musicbench.workspace import Workspace


class ResultSink(Protocol):
    """Where an executor puts what it finishes (only the driver writes the store)."""

    def cell(self, record: CellRecord) -> None: ...

    def shard(self, cell_key: str, shard: ShardResult) -> None: ...

    def kept_shards(self, cell_key: str) -> list[ShardResult]: ...

    def fooled(self, keys: tuple[str, ...]) -> frozenset[str]:
        """The clip ids the finished cells ``keys`` fooled (the survivor cascade's input);
        raises :class:`MusicbenchError` when one of them has no successful record."""
        ...


def fooled_before(spec: CellSpec, sink: ResultSink) -> frozenset[str]:
    """The clips the cells before ``spec`` in its cascade fooled (none outside a cascade):
    they are not attacked again (:mod:`musicbench.protocol`)."""
    return sink.fooled(spec.run.after) if spec.run.after else frozenset()


def fooled_in(records: list[CellRecord], keys: tuple[str, ...]) -> frozenset[str]:
    """:meth:`ResultSink.fooled` over ``records`` (those found for ``keys``)."""
    found = {r.key: r for r in records if r.key in keys}
    for key in keys:
        record = found.get(key)
        if record is None or record.status != "ok":
            state = "has not run" if record is None else f"is {record.status}"
            raise MusicbenchError(
                f"this cell attacks the survivors of cell {key[:12]}, which {state}: rerun "
                "to compute it first (the cascade runs a row's attacks in config order)")
    return frozenset(s.sample_id for r in found.values() for s in r.samples if s.success)


def cell_label(spec: CellSpec) -> str:
    return " / ".join(spec.labels)


def plan_shards(spec: CellSpec, ws: Workspace, shard_clips: int,
                sink: ResultSink) -> tuple[list[tuple[int, int]], dict[tuple[int, int],
                                                                       ShardResult]]:
    """The cell's clip ranges and the good shards already kept for it (those whose range is
    still one of them: a changed ``shard_clips`` starts the cell over)."""
    ranges = shard_ranges(cell_clip_count(spec, ws), spec.run.batch_size, shard_clips)
    kept = {(s.lo, s.hi): s for s in sink.kept_shards(spec.key)
            if s.error is None and (s.lo, s.hi) in ranges}
    return ranges, kept


def failed_record(spec: CellSpec, environment: dict[str, Any], started: str, t0: float,
                  error: str, trace: str | None) -> CellRecord:
    """The record of a cell that failed outside ``run_cell`` (its clips could not be counted,
    or its task could not be run), timed from ``t0``."""
    return CellRecord(spec=spec, status="failed", started=started, finished=now(),
                      seconds=round(time.perf_counter() - t0, 3), environment=environment,
                      error=error, traceback=trace)


class LocalExecutor:
    """In-process, in plan order; shard by shard when ``shard_clips`` asks for shards."""

    name = "local"

    def __init__(self, settings: RunSettings | None = None):
        self.settings = settings
        self.shard_clips = effective_shard_clips(
            settings.shard_clips if settings is not None else 0, self.name)

    def run(
        self,
        specs: list[CellSpec],
        ws: Workspace,
        environment: dict[str, Any],
        sink: ResultSink,
        progress: Progress,
    ) -> None:
        with progress("cells", total=len(specs)) as overall:
            for spec in specs:
                overall.update(description=f"cell {cell_label(spec)}")
                if self.shard_clips:
                    sink.cell(self._sharded(spec, ws, environment, sink))
                else:
                    sink.cell(self._whole(spec, ws, environment, sink))
                overall.advance()

    @staticmethod
    def _whole(spec: CellSpec, ws: Workspace, environment: dict[str, Any],
               sink: ResultSink) -> CellRecord:
        started, t0 = now(), time.perf_counter()
        try:
            fooled = fooled_before(spec, sink)
        except MusicbenchError as exc:  # an earlier cell of its cascade failed
            return failed_record(spec, environment, started, t0, str(exc), None)
        return run_cell(spec, ws, environment, fooled)

    def _sharded(self, spec: CellSpec, ws: Workspace, environment: dict[str, Any],
                 sink: ResultSink) -> CellRecord:
        started, t0 = now(), time.perf_counter()
        try:
            ranges, kept = plan_shards(spec, ws, self.shard_clips, sink)
            fooled = fooled_before(spec, sink)
        except Exception as exc:  # the cell fails, the run goes on
            return failed_record(spec, environment, started, t0,
                                 f"{type(exc).__name__}: {exc}", traceback.format_exc())
        shards = []
        for lo, hi in ranges:
            shard = kept.get((lo, hi)) or run_shard(spec, ws, lo, hi, fooled)
            shards.append(shard)
            if shard.error is not None:
                break  # the cell fails; the rerun starts from here
            if (lo, hi) not in kept:
                sink.shard(spec.key, shard)
        return finish_cell(spec, ws, environment, shards)


def _ray(settings: RunSettings) -> Any:
    from musicbench.ray_executor import RayExecutor

    return RayExecutor(settings)


EXECUTORS: dict[str, Callable[[RunSettings], Any]] = {"local": LocalExecutor, "ray": _ray}
