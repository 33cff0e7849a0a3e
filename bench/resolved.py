"""A config entry checked against its plugin (:class:`Resolved`): the planner makes them and
the protocol rules (:mod:`musicbench.protocol`) read them to add their cells, so the type lives
below both and neither imports the other to name it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from musicbench.cells import ComponentRef
from musicbench.config import ComponentSpec


@dataclass(frozen=True)
class Resolved:
    """A config entry checked against its plugin: canonical name, class, validated params."""

    spec: ComponentSpec
    name: str
    cls: type
    params: Any
    provider: str

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params) if dataclasses.is_dataclass(self.params) else {}

    def ref(self, *, weights: str | None = None, fingerprint: str | None = None) -> ComponentRef:
        return ComponentRef(
            kind=self.spec.kind, name=self.name, label=self.spec.label,
            version=str(getattr(self.cls, "version", "1")), params=self.params_dict(),
            provider=self.provider, weights=weights, fingerprint=fingerprint,
        )
