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
from typing import Any

from musicbench.cell_tasks import (
    ResultSink,
    cell_label,
    failed_record,
    fooled_before,
    plan_shards,
)
from musicbench.cells import CellSpec
from musicbench.config import RunSettings
from musicbench.errors import MusicbenchError
from musicbench.interfaces import Progress
from musicbench.runner import finish_cell, now, run_cell, run_shard
from musicbench.shards import effective_shard_clips
from musicbench.store import CellRecord
from musicbench.workspace import Workspace


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
