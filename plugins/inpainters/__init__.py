"""Built-in inpainters, one module each (MAIA regenerates the regions a model relies on)."""

from musicbench import hookimpl


@hookimpl
def register_inpainters(register):
    register("baseline", "musicbench_plugins.inpainters.baseline:BaselineInpainter",
             summary="non-learned: copies the passage of the clip whose context matches the gap")
