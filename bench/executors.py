"""Executors run planned cells and hand each finished record to a callback.

``local`` runs cells one after another in this process (the default); ``ray`` runs them as
tasks on a Ray cluster (:mod:`musicbench.ray_executor`). The callback writes the record to the
store in one transaction and notifies ``cell_finished`` observers. An executor is built from
the run's ``[run]`` settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from musicbench.cells import CellSpec
from musicbench.config import RunSettings
from musicbench.interfaces import Progress
from musicbench.runner import run_cell
from musicbench.store import CellRecord
from musicbench.workspace import Workspace


def cell_label(spec: CellSpec) -> str:
    return " / ".join(spec.labels)


class LocalExecutor:
    """In-process, in plan order."""

    name = "local"

    def __init__(self, settings: RunSettings | None = None):
        self.settings = settings

    def run(
        self,
        specs: list[CellSpec],
        ws: Workspace,
        environment: dict[str, Any],
        on_record: Callable[[CellRecord], None],
        progress: Progress,
    ) -> None:
        with progress("cells", total=len(specs)) as overall:
            for spec in specs:
                overall.update(description=f"cell {cell_label(spec)}")
                on_record(run_cell(spec, ws, environment))
                overall.advance()


def _ray(settings: RunSettings) -> Any:
    from musicbench.ray_executor import RayExecutor

    return RayExecutor(settings)


EXECUTORS: dict[str, Callable[[RunSettings], Any]] = {"local": LocalExecutor, "ray": _ray}
