"""What every executor shares around one cell: the result sink it hands records to
(:class:`ResultSink`), the shards a cell still needs, the clips its cascade already fooled and
the record of a cell that failed before it ran. Both executors (:mod:`musicbench.executors`,
:mod:`musicbench.ray_executor`) import it, so neither imports the other for it."""

from __future__ import annotations

import time
from typing import Any, Protocol

from musicbench.cells import CellSpec
from musicbench.errors import MusicbenchError
from musicbench.runner import cell_clip_count, now
from musicbench.shards import ShardResult, shard_ranges
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
