"""Validate plugin parameters from config mappings against each plugin's ``Params`` dataclass."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from musicbench.errors import ConfigError, did_you_mean


def build_params(params_type: type, values: Mapping[str, Any], *, table: str) -> Any:
    """Instantiate ``params_type`` from ``values``; unknown keys and wrong types raise.

    :param table: where the values came from, for messages (e.g. ``"attacks.pgd"``).
    :raises ConfigError: naming the table and key, with the accepted keys or expected type.
    """
    if not dataclasses.is_dataclass(params_type):
        raise TypeError(f"Params of {table} must be a dataclass, got {params_type!r}")
    fields = {f.name: f for f in dataclasses.fields(params_type) if f.init}
    hints = typing.get_type_hints(params_type)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            hint = did_you_mean(key, list(fields))
            accepted = ", ".join(sorted(fields)) or "none"
            raise ConfigError(
                f"unknown parameter.{hint} Accepted parameters: {accepted}.", table=table, key=key
            )
        kwargs[key] = coerce(value, hints[key], table=table, key=key)
    try:
        return params_type(**kwargs)
    except Exception as exc:  # the plugin's own checks (__post_init__) rejected the values
        raise ConfigError(_rejection(params_type, exc), table=table) from exc


def _rejection(params_type: type, exc: Exception) -> str:
    """One line for values a ``Params`` dataclass refused to build from.

    Building a ``Params`` runs nothing but the plugin's own checks, so whatever they raise
    means "not these values", whatever its type (``ValueError`` and ``TypeError`` by our
    convention; ``AssertionError``, ``KeyError``, ... in plugins that chose otherwise, or a bug
    in those checks). Either way nothing has run and the table is where to look: the user gets
    a config error naming it, not a traceback into the harness (the original stays chained as
    ``__cause__``). A message that says nothing on its own is prefixed with its type.
    """
    message = str(exc)
    if isinstance(exc, (TypeError, ValueError, AssertionError)) and message:
        return message
    check = ".__post_init__" if hasattr(params_type, "__post_init__") else ""
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"{params_type.__qualname__}{check} rejected the values: {detail}"


def component_params(cls: type, values: Mapping[str, Any], *, table: str, what: str) -> Any:
    """The validated ``Params`` of component class ``cls`` from a config mapping: the one
    place parameters are checked (the planner and the workspace both come here).

    :param what: how messages name the component, e.g. ``"attack 'pgd'"``.
    """
    params_type = getattr(cls, "Params", None)
    if params_type is None:
        if values:
            raise ConfigError(f"{what} takes no parameters", table=table, key=next(iter(values)))
        return None
    return build_params(params_type, values, table=table)


def coerce(value: Any, annotation: Any, *, table: str, key: str) -> Any:
    """Check ``value`` against ``annotation``; int -> float is the only conversion allowed."""
    ok, converted = _check(value, annotation)
    if not ok:
        raise ConfigError(
            f"expected {_type_name(annotation)}, got {type(value).__name__} {value!r}",
            table=table,
            key=key,
        )
    return converted


def _check(value: Any, ann: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if ann is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, conv = _check(value, arg)
            if ok:
                return True, conv
        return False, None
    if ann is type(None):
        return value is None, value
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args), value
    if ann is bool:
        return isinstance(value, bool), value
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if ann is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, None
    if ann is str:
        return isinstance(value, str), value
    if origin in (tuple, list) or ann in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, None
        if not args:
            return True, tuple(value) if origin is tuple or ann is tuple else list(value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                return False, None
            items = [_check(v, a) for v, a in zip(value, args, strict=True)]
        else:
            items = [_check(v, args[0]) for v in value]
        if not all(ok for ok, _ in items):
            return False, None
        conv = [c for _, c in items]
        return True, tuple(conv) if origin is tuple else conv
    if origin is dict or ann is dict:
        return isinstance(value, dict), value
    return isinstance(value, ann) if isinstance(ann, type) else True, value


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "nothing"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann)


def params_schema(params_type: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each parameter, for ``musicbench list`` and docs."""
    hints = typing.get_type_hints(params_type)
    rows = []
    for f in dataclasses.fields(params_type):
        default = f.default if f.default is not dataclasses.MISSING else None
        rows.append((f.name, _type_name(hints[f.name]), default))
    return rows
