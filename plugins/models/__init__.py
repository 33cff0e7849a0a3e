"""Built-in target models."""

from musicbench import hookimpl


@hookimpl
def register_models(register):
    register("style-cnn", "musicbench_plugins.models.style_cnn:StyleCNN",
             summary="log-mel CNN style classifier trained on m21-styles")
