"""musicbench-example-plugin: registers the ``noise`` attack.

This module is what the ``musicbench`` entry point names, so it is imported every time the
plugins are discovered (``musicbench list`` included). It therefore imports nothing heavy and
registers the attack by import string; ``noise.py`` (and torch) is imported only when a run or
a check actually uses the attack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from musicbench import hookimpl

if TYPE_CHECKING:  # musicbench.api imports torch: not at discovery time
    from musicbench.api import RegisterFn

__version__ = "0.1.0"


@hookimpl
def register_attacks(register: RegisterFn) -> None:
    register(
        "noise",
        "musicbench_example_plugin.noise:NoiseAttack",
        summary="black-box baseline: uniform L-inf noise, best of `tries` random draws",
    )
