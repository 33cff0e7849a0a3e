"""Executors run planned cells and hand each finished record to a callback.

``local`` runs cells one after another in this process (the default). The callback writes the
record to the store in one transaction and notifies ``cell_finished`` observers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from musicbench.cells import CellSpec
from musicbench.interfaces import Progress
from musicbench.runner import run_cell
from musicbench.store import CellRecord
from musicbench.workspace import Workspace


def cell_label(spec: CellSpec) -> str:
    return " / ".join(spec.labels)


class LocalExecutor:
    """In-process, in plan order."""

    name = "local"

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


EXECUTORS = {"local": LocalExecutor}
