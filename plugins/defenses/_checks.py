"""Parameter checks shared by the built-in preprocessing defenses.

``Params.__post_init__`` raises ``ValueError`` (``TypeError`` for a wrong type; the harness
turns either into a config error naming the table); checks that need the sample rate run in
``bind`` and raise :class:`ConfigError` naming the table and key.
"""

from __future__ import annotations

from musicbench.api import ConfigError, Preprocessor, check_number

__all__ = ["bound_rate", "check_number", "config_error"]


def config_error(defense: Preprocessor, key: str, message: str) -> ConfigError:
    """A :class:`ConfigError` for parameter ``key`` of ``defense`` (raised at ``bind``)."""
    return ConfigError(message, table=f"defenses.{defense.name}", key=key)


def bound_rate(defense: Preprocessor) -> int:
    """The rate ``defense`` was bound to; a clear error when ``bind`` was never called."""
    if defense.sample_rate is None:
        raise RuntimeError(f"defense '{defense.name}': call bind(sample_rate) before forward")
    return defense.sample_rate
