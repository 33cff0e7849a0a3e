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
    network: ClassVar[str | None] = None
    """The family of pretrained network the component is built on (``"musicnn"``), if any: an
    FAD encoder of the same family as the target is flagged (the metric is then measured by
    the model under attack)."""

    def __init__(self, params: Any | None = None):
        self.params = params if params is not None else self.Params()

    def weights_digest(self) -> str | None:
        """A hash of the trained weights this component runs with, once loaded (part of cell
        keys: new weights make new cells), or None when it has none.

        Default: the state dicts of the ``torch.nn.Module`` attributes of this object, and the
        digests of the components it holds (an attack's inpainter), in attribute order.
        Override when weights live elsewhere.
        """
        from musicbench.checkpoints import state_digest

        parts = []
        for attr, value in sorted(vars(self).items()):
            if _is_module(value):
                parts.append(f"{attr}:{state_digest(value)}")
            elif isinstance(value, Component) and value is not self:
                digest = value.weights_digest()
                if digest is not None:
                    parts.append(f"{attr}:{digest}")
        if not parts:
            return None
        import hashlib

        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Name, version and parameters as plain data (goes into cell specs and cache keys)."""
        params = dataclasses.asdict(self.params) if dataclasses.is_dataclass(self.params) else {}
        return {"name": self.name, "version": self.version, "params": params}


def _is_module(value: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # no torch loaded: no module can exist
    return torch is not None and isinstance(value, torch.nn.Module)
