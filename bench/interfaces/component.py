"""The base every plugin component shares: a name, a version, and typed parameters."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


class Component:
    """Base of datasets, models, attacks, defenses, inpainters, encoders and metrics.

    Subclasses set ``version`` (bump it whenever results would change: it goes into cache keys
    and cell keys) and may declare a frozen ``Params`` dataclass; config keys are validated
    against it before any work. The harness sets ``name`` to the registered name.
    """

    name: str = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any | None = None):
        self.params = params if params is not None else self.Params()

    def describe(self) -> dict[str, Any]:
        """Name, version and parameters as plain data (goes into cell specs and cache keys)."""
        params = dataclasses.asdict(self.params) if dataclasses.is_dataclass(self.params) else {}
        return {"name": self.name, "version": self.version, "params": params}
