"""Built-in inpainters, one module each (MAIA regenerates the regions a model relies on)."""

from musicbench import hookimpl


@hookimpl
def register_inpainters(register):
    pass  # registrations are added as the inpainter modules land
