"""Built-in inpainters, one module each (MAIA regenerates the regions a model relies on)."""

from musicbench import hookimpl


@hookimpl
def register_inpainters(register):
    register("baseline", "musicbench_plugins.inpainters.baseline:BaselineInpainter",
             summary="non-learned: copies the passage of the clip whose context matches the gap")
    register("gacela", "musicbench_plugins.inpainters.gacela:GacelaInpainter",
             summary="GACELA-style context-encoder WGAN-GP with a latent code, trained on "
                     "m21-styles")
