"""The plugin manager: entry-point discovery, per-plugin load status, and the registries.

This module holds the only global state of musicbench: one lazily built :class:`PluginSystem`.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import pluggy

from musicbench import hookspecs
from musicbench.errors import DuplicateNameError
from musicbench.registry import Entry, Registry

DISABLE_ENV = "MUSICBENCH_DISABLE_PLUGINS"
"""Comma-separated plugin (entry-point) names that are not loaded."""

Status = Literal["loaded", "failed", "disabled"]


@dataclass
class PluginInfo:
    """What happened to one plugin: where it came from and whether it loaded."""

    name: str
    provider: str
    status: Status
    error: str | None = None
    traceback: str | None = None
    registered: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


@dataclass(frozen=True)
class HookFailure:
    """One plugin's hook implementation raised ``error`` (see :meth:`PluginSystem.call_each`)."""

    plugin: str
    error: Exception

    def __str__(self) -> str:
        return f"{self.plugin}: {type(self.error).__name__}: {self.error}"


class PluginSystem:
    """A pluggy manager plus one :class:`Registry` per component kind.

    Build with :func:`get_plugins` (entry points) or directly with ``discover=False`` and
    :meth:`add_plugin` (tests).
    """

    def __init__(self, *, discover: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {k: Registry(k) for k in hookspecs.REGISTER_HOOKS}
        if discover:
            self._discover()

    # -- discovery --------------------------------------------------------------------------

    def _discover(self) -> None:
        disabled = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        # We walk the entry points ourselves instead of pm.load_setuptools_entrypoints so that
        # one plugin failing to import is recorded and skipped rather than aborting discovery.
        # Built-ins first: a third-party plugin that reuses a built-in name then fails on its
        # own, instead of knocking a whole built-in family out.
        eps = sorted(metadata.entry_points(group=hookspecs.PROJECT_NAME),
                     key=lambda e: (_distribution(e) != hookspecs.PROJECT_NAME, e.name))
        seen: dict[str, str] = {}  # entry-point name -> provider that took it
        for ep in eps:
            provider = _distribution_name(ep)
            if ep.name in seen:
                if _distribution(ep) == seen[ep.name].split(" ")[0]:
                    continue  # the same distribution visible twice on sys.path
                self.plugins[f"{ep.name} ({provider})"] = PluginInfo(
                    ep.name, provider, "failed",
                    f"entry-point name '{ep.name}' is already used by {seen[ep.name]}; "
                    "one of the two packages must rename its entry point",
                )
                continue
            seen[ep.name] = provider
            if ep.name in disabled:
                self.plugins[ep.name] = PluginInfo(ep.name, provider, "disabled")
                continue
            try:
                module = ep.load()
            except Exception as exc:
                self.plugins[ep.name] = PluginInfo(
                    ep.name, provider, "failed", f"import failed: {type(exc).__name__}: {exc}",
                    traceback.format_exc(),
                )
                continue
            self.add_plugin(module, ep.name, provider=provider)

    def add_plugin(self, plugin: Any, name: str, *, provider: str = "local") -> PluginInfo:
        """Register ``plugin`` (a module or object with hookimpls) and run its register hooks.

        A plugin whose registration raises, or that registers a name already taken, is marked
        ``failed``, none of its components are kept, and it is unregistered from pluggy.
        """
        info = PluginInfo(name, provider, "loaded")
        self.plugins[name] = info
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            return info
        staged: list[Entry] = []
        try:
            for kind, hook_name in hookspecs.REGISTER_HOOKS.items():
                self._caller_of(plugin, hook_name)(register=_stager(staged, kind, info))
            self._commit(staged)
        except Exception as exc:
            self.pm.unregister(plugin)
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            info.registered = []
            return info
        info.registered = [(e.kind, e.name) for e in staged]
        return info

    def _commit(self, staged: list[Entry]) -> None:
        added: list[Entry] = []
        try:
            for entry in staged:
                self.registries[entry.kind].add(entry)
                added.append(entry)
        except DuplicateNameError:
            for entry in added:  # roll back: a failed plugin contributes nothing
                self.registries[entry.kind].remove(entry.name)
            raise

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin added with :meth:`add_plugin` and drop its components (tests)."""
        info = self.plugins.pop(name, None)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        for kind, comp in (info.registered if info else []):
            self.registries[kind].remove(comp)

    # -- calling hooks ----------------------------------------------------------------------

    def _caller_of(self, plugin: object, hook_name: str) -> pluggy.HookCaller:
        """Hook ``hook_name`` as pluggy calls it, restricted to ``plugin``'s implementation:
        what one plugin returns or raises is its own, never another's."""
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def call_each(self, hook_name: str, **kwargs: Any) -> list[HookFailure]:
        """Call ``hook_name`` once per plugin that implements it, in pluggy's order
        (``tryfirst``/``trylast``, then last registered first), each through pluggy. A plugin
        that raises does not stop the others: its error is returned, and nothing else is."""
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook_name)
        order: list[object] = []
        for impl in reversed(caller.get_hookimpls()):  # the order pluggy itself calls them in
            if not any(impl.plugin is p for p in order):
                order.append(impl.plugin)
        failures = []
        for plugin in order:
            try:
                self._caller_of(plugin, hook_name)(**kwargs)
            except Exception as exc:
                failures.append(HookFailure(self.pm.get_name(plugin) or repr(plugin), exc))
        return failures

    # -- lookup -----------------------------------------------------------------------------

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def get(self, kind: str, name: str) -> Entry:
        """The entry of ``kind`` called ``name``; unknown names raise with suggestions."""
        return self.registries[kind].get(name)

    def describe(self) -> dict[str, dict[str, str]]:
        """Every discovered plugin by name: ``provider`` (distribution and version), ``status``
        and, unless loaded, ``error`` (what a run records in its metadata)."""
        out = {}
        for key, info in sorted(self.plugins.items()):
            entry = {"provider": info.provider, "status": info.status}
            if info.error:
                entry["error"] = info.error
            out[key] = entry
        return out

    def failure_lines(self) -> list[str]:
        """One line per plugin that failed to load, naming it, its provider and the error."""
        return [f"plugin '{info.name}' ({info.provider}) failed to load, its components are "
                f"unavailable: {' '.join((info.error or 'unknown error').split())} "
                "(`musicbench list` for details)"
                for info in self.plugins.values() if info.status == "failed"]

    def notify_cell_finished(self, record: Any) -> list[str]:
        """Call every ``cell_finished`` observer; returns the errors they raised (never raises).
        One failing observer does not keep the record from the others."""
        return [str(f) for f in self.call_each("cell_finished", record=record)]


def _stager(staged: list[Entry], kind: str, info: PluginInfo):
    def register(
        name: str, factory: Any, *, aliases: tuple[str, ...] = (), summary: str = ""
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{kind} names must be non-empty strings, got {name!r}")
        if isinstance(aliases, str):  # a lone string would otherwise split into letters
            aliases = (aliases,)
        staged.append(
            Entry(kind, name, factory, info.provider, info.name, tuple(aliases), summary)
        )

    return register


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else ep.value.split(":")[0]


def _distribution_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is not None:
        return f"{dist.metadata['Name']} {dist.version}"
    return ep.value.split(":")[0]


_SYSTEM: PluginSystem | None = None


def get_plugins(*, reload: bool = False) -> PluginSystem:
    """The process-wide plugin system, discovered from entry points on first use."""
    global _SYSTEM
    if _SYSTEM is None or reload:
        _SYSTEM = PluginSystem()
    return _SYSTEM
