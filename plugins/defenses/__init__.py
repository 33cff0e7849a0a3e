"""Built-in defenses."""

from musicbench import hookimpl


@hookimpl
def register_defenses(register):
    register("none", "musicbench_plugins.defenses.none:NoDefense",
             summary="no defense: the model as it is")
