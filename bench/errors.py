"""Exceptions the harness raises, each carrying what was wrong and what to do instead."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``options`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


class MusicbenchError(Exception):
    """Base class of every error musicbench raises on purpose."""


class ConfigError(MusicbenchError):
    """A config (or command line) asks for something impossible; nothing has been run.

    The CLI turns it into exit code 2.
    """

    def __init__(self, message: str, *, table: str | None = None, key: str | None = None):
        self.table = table
        self.key = key
        self.message = message
        where = ""
        if table is not None:
            where = f"[{table}]" + (f" key '{key}'" if key is not None else "") + ": "
        super().__init__(where + message)


class OutputInUseError(ConfigError):
    """Another ``musicbench run`` is writing the same output folder; nothing has been run
    (exit code 2, like a config error: the command line must change, or wait)."""


class StoreDamagedError(ConfigError):
    """A result store cannot be read: its file is damaged (truncated, overwritten, a table or
    row broken) or was written by a newer musicbench. Nothing has been read from it; exit code
    2, like a config error: the command must be pointed at another store (or another
    musicbench).

    The message is ``store PATH is damaged (WHAT): REMEDY``, one line."""

    def __init__(self, path: object, what: str, remedy: str | None = None):
        self.path = str(path)
        self.what = what
        self.remedy = remedy or (
            "restore it from a copy (a published store is leaderboards/runs/*.sqlite; "
            "`musicbench leaderboard --store-copy` writes one), or recompute it with "
            "`musicbench run CONFIG --out NEW_FOLDER`")
        super().__init__(f"store {self.path} is damaged ({what}): {self.remedy}")


class StorageFullError(ConfigError):
    """A file could not be written because its disk (or the user's quota) is full. Whatever
    was finished before is kept (a run's finished cells and shards are in its store, caches
    and outputs are replaced whole or not at all), so rerunning the same command once there is
    space resumes where it stopped. Exit code 2, like a config error: the remedy is the
    user's, and a traceback would say nothing more.

    The message is ``cannot write PATH: the disk is full (CAUSE); ...``, one line."""

    def __init__(self, path: object, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(
            f"cannot write {self.path}: the disk is full ({cause}); free space there and "
            "rerun the same command: it resumes where it stopped (finished work is kept)")


class UnknownNameError(ConfigError):
    """A plugin name that no registry holds; the message lists the closest matches."""


class DuplicateNameError(MusicbenchError):
    """Two providers registered the same name in one registry."""


class PluginLoadError(MusicbenchError):
    """A registered factory string could not be imported."""


class AttackContractError(MusicbenchError):
    """An attack returned audio that breaks the Attack contract (shape, range, bound,
    finiteness)."""


class DefenseContractError(MusicbenchError):
    """A defense returned audio that breaks the Preprocessor contract (shape, NaN, range)."""


class GradientRefusedError(MusicbenchError):
    """A black-box attack asked a Victim for gradients."""


class QueryBudgetExceededError(MusicbenchError):
    """An attack tried to query a Victim past its query budget."""


class NotTrainedError(MusicbenchError):
    """A target model has no checkpoint in the cache and was asked not to train one."""
