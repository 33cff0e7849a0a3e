"""Named registries of plugin components, with provider tracking and did-you-mean errors."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from musicbench.errors import DuplicateNameError, PluginLoadError, UnknownNameError


class RegisterFn(Protocol):
    """The callback handed to every ``register_*`` hook."""

    def __call__(
        self, name: str, factory: Any, *, aliases: tuple[str, ...] = (), summary: str = ""
    ) -> None: ...


@dataclass
class Entry:
    """One registered component.

    ``factory`` is the class itself or an import string ``"pkg.module:Class"`` resolved lazily.
    """

    kind: str
    name: str
    factory: Any
    provider: str
    plugin: str
    aliases: tuple[str, ...] = ()
    summary: str = ""
    _resolved: Any = field(default=None, repr=False)

    def load(self) -> Any:
        """Return the factory, importing it on first use."""
        if self._resolved is None:
            if isinstance(self.factory, str):
                module_name, _, attr = self.factory.partition(":")
                try:
                    obj: Any = importlib.import_module(module_name)
                    for part in attr.split(".") if attr else ():
                        obj = getattr(obj, part)
                except Exception as exc:  # report import problems as the plugin's fault
                    raise PluginLoadError(
                        f"{self.kind} '{self.name}' (from {self.provider}) could not be loaded "
                        f"from '{self.factory}': {type(exc).__name__}: {exc}"
                    ) from exc
                self._resolved = obj
            else:
                self._resolved = self.factory
        return self._resolved

    @property
    def doc_summary(self) -> str:
        """The registered summary, or the first docstring line of an already-loaded factory."""
        if self.summary:
            return self.summary
        if not isinstance(self.factory, str):
            doc = (self.factory.__doc__ or "").strip()
            return doc.splitlines()[0] if doc else ""
        return ""


class Registry:
    """All components of one kind (``attack``, ``model``, ...), keyed by name and alias."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def add(self, entry: Entry) -> None:
        """Add ``entry``; a name or alias already taken raises :class:`DuplicateNameError`."""
        for key in (entry.name, *entry.aliases):
            holder = self._owner(key)
            if holder is not None:
                raise DuplicateNameError(
                    f"{self.kind} name '{key}' registered by {entry.provider} "
                    f"(plugin '{entry.plugin}') is already provided by {holder.provider} "
                    f"(plugin '{holder.plugin}'); rename one of them or disable a plugin with "
                    "MUSICBENCH_DISABLE_PLUGINS"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def remove(self, name: str) -> Entry:
        """Drop the entry registered as ``name`` (its canonical name) with its aliases, and
        return it. A name that is not registered, or an alias, raises :class:`KeyError`."""
        entry = self._entries.pop(name, None)
        if entry is None:
            what = f"an alias of '{self._aliases[name]}'" if name in self._aliases else "unknown"
            raise KeyError(f"cannot remove {self.kind} '{name}': {what}; remove an entry by "
                           f"its registered name ({', '.join(self.names()) or 'none registered'})")
        for alias in entry.aliases:
            del self._aliases[alias]
        return entry

    def _owner(self, key: str) -> Entry | None:
        if key in self._entries:
            return self._entries[key]
        if key in self._aliases:
            return self._entries[self._aliases[key]]
        return None

    def get(self, name: str) -> Entry:
        """The entry for ``name`` or an alias; unknown names raise with the closest matches."""
        entry = self._owner(name)
        if entry is None:
            raise UnknownNameError(self.unknown_message(name))
        return entry

    def unknown_message(self, name: str) -> str:
        known = sorted({*self._entries, *self._aliases})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "none registered"
        return f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {listing}."

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._owner(name) is not None

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
