"""The hooks a musicbench plugin may implement.

Every ``register_*`` hook is handed a ``register`` callback owned by the core, so the core decides
about names, aliases and collisions and remembers which distribution provided each name::

    from musicbench import hookimpl

    @hookimpl
    def register_attacks(register):
        register("my-attack", MyAttack, summary="one line shown by `musicbench list`")

``register(name, factory, *, aliases=(), summary="")``: ``factory`` is a class (or an import
string ``"package.module:Class"``, resolved on first use so that ``musicbench list`` stays fast)
whose optional ``Params`` dataclass declares the parameters a config may set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from musicbench.registry import RegisterFn
    from musicbench.store import CellRecord

PROJECT_NAME = "musicbench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- registration hooks, called once when the plugin manager is built ------------------------


@hookspec
def register_attacks(register: RegisterFn) -> None:
    """Register :class:`musicbench.interfaces.Attack` classes.

    :param register: ``register(name, factory, *, aliases=(), summary="")``.
    """


@hookspec
def register_models(register: RegisterFn) -> None:
    """Register :class:`musicbench.interfaces.TargetModel` classes (classifiers, retrieval nets).

    :param register: ``register(name, factory, *, aliases=(), summary="")``.
    """


@hookspec
def register_defenses(register: RegisterFn) -> None:
    """Register :class:`musicbench.interfaces.Defense` classes (preprocessors or training).

    :param register: ``register(name, factory, *, aliases=(), summary="")``.
    """


@hookspec
def register_datasets(register: RegisterFn) -> None:
    """Register :class:`musicbench.interfaces.Dataset` classes.

    :param register: ``register(name, factory, *, aliases=(), summary="")``.
    """


@hookspec
def register_inpainters(register: RegisterFn) -> None:
    """Register :class:`musicbench.interfaces.Inpainter` classes (used by MAIA).

    :param register: ``register(name, factory, *, aliases=(), summary="")``.
    """


@hookspec
def register_encoders(register: RegisterFn) -> None:
    """Register :class:`musicbench.interfaces.Encoder` classes (FAD, PAMT backbones).

    :param register: ``register(name, factory, *, aliases=(), summary="")``.
    """


@hookspec
def register_metrics(register: RegisterFn) -> None:
    """Register :class:`musicbench.interfaces.Metric` classes.

    Per-sample metrics are computed on (clean, adversarial) pairs of every cell and stored per
    clip; set-level metrics are computed when a cell finishes.

    :param register: ``register(name, factory, *, aliases=(), summary="")``.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add sub-commands to the ``musicbench`` command line.

    :param app: the root :class:`typer.Typer`; call ``app.command()`` or ``app.add_typer()``.
    """


# -- observer hooks ---------------------------------------------------------------------------


@hookspec
def cell_finished(record: CellRecord) -> None:
    """Called in the driver process after a cell's record was committed to the store.

    Observers must not mutate the record. An exception raised here is reported and ignored.

    :param record: the finished cell (status ``ok`` or ``failed``) with its samples and metrics.
    """


REGISTER_HOOKS: dict[str, str] = {
    "attack": "register_attacks",
    "model": "register_models",
    "defense": "register_defenses",
    "dataset": "register_datasets",
    "inpainter": "register_inpainters",
    "encoder": "register_encoders",
    "metric": "register_metrics",
}
"""Component kind -> the hook that registers it."""

__all__: list[Any] = [
    "PROJECT_NAME",
    "REGISTER_HOOKS",
    "hookimpl",
    "hookspec",
]
