"""Validate plugin parameters from config mappings against each plugin's ``Params`` dataclass."""

from __future__ import annotations

import dataclasses
import math
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
        _check_finite(kwargs[key], table=table, key=key)
    try:
        return params_type(**kwargs)
    except Exception as exc:  # the plugin's own checks (__post_init__) rejected the values
        message = _rejection(params_type, exc)
        # "eps must be > 0, got -1.0" is about key 'eps': say so, as for the checks above
        first = message.split(" ", 1)[0]
        raise ConfigError(message, table=table, key=first if first in fields else None) from exc


def _check_finite(value: Any, *, table: str, key: str) -> None:
    """Infinity and NaN are valid TOML floats but never a meaningful parameter: ``eps = inf``
    would pass a plugin's ``not eps > 0`` check and publish a row without a budget. Rejected
    here for every float anywhere in every ``Params`` field, so each plugin's own checks see
    finite numbers only (third-party plugins included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"expected a finite number, got {value}", table=table, key=key)
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(item, table=table, key=key)
    elif isinstance(value, dict):
        for item in value.values():
            _check_finite(item, table=table, key=key)


#: Seeds are ints in [0, MAX_SEED] (what numpy's and torch's generators all accept).
MAX_SEED = 2**32 - 1


def check_number(name: str, value: Any, *, above: float | None = None,
                 at_least: float | None = None, below: float | None = None,
                 at_most: float | None = None, integer: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number within the given bounds
    (``TypeError`` when it is not a number, or not an int with ``integer=True``).

    The range check for a plugin's ``Params.__post_init__`` (public as
    ``musicbench.api.check_number``): ``check_number("eps", self.eps, above=0, at_most=1)``.
    Written so that NaN and infinity fail every bound (``not x > 0`` alone lets ``inf``
    through).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    low = (f"> {_bound(above)}" if above is not None else
           f">= {_bound(at_least)}" if at_least is not None else None)
    high = (f"< {_bound(below)}" if below is not None else
            f"<= {_bound(at_most)}" if at_most is not None else None)
    ok = ((above is None or value > above) and (at_least is None or value >= at_least)
          and (below is None or value < below) and (at_most is None or value <= at_most))
    if not ok:
        bounds = " and ".join(b for b in (low, high) if b)
        raise ValueError(f"{name} must be {bounds}, got {value}")


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_seed(name: str, value: Any) -> None:
    """``check_number`` for a seed: an int in [0, MAX_SEED]."""
    check_number(name, value, at_least=0, at_most=MAX_SEED, integer=True)


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
