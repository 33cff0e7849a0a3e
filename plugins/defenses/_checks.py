"""Parameter checks shared by the built-in preprocessing defenses.

``Params.__post_init__`` raises ``ValueError`` (``TypeError`` for a wrong type; the harness
turns either into a config error naming the table); checks that need the sample rate run in
``bind`` and raise :class:`ConfigError` naming the table and key.
"""

from __future__ import annotations

import math

from musicbench.api import ConfigError, Preprocessor


def check_number(name: str, value: float, *, above: float | None = None,
                 at_least: float | None = None, at_most: float | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number within the given bounds
    (``TypeError`` when it is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if above is not None and not value > above:
        raise ValueError(f"{name} must be > {above}, got {value}")
    if at_least is not None and not value >= at_least:
        raise ValueError(f"{name} must be >= {at_least}, got {value}")
    if at_most is not None and not value <= at_most:
        raise ValueError(f"{name} must be <= {at_most}, got {value}")


def config_error(defense: Preprocessor, key: str, message: str) -> ConfigError:
    """A :class:`ConfigError` for parameter ``key`` of ``defense`` (raised at ``bind``)."""
    return ConfigError(message, table=f"defenses.{defense.name}", key=key)


def bound_rate(defense: Preprocessor) -> int:
    """The rate ``defense`` was bound to; a clear error when ``bind`` was never called."""
    if defense.sample_rate is None:
        raise RuntimeError(f"defense '{defense.name}': call bind(sample_rate) before forward")
    return defense.sample_rate
