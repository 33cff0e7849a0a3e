"""Built-in datasets."""

from musicbench import hookimpl


@hookimpl
def register_datasets(register):
    register("m21-styles", "musicbench_plugins.datasets.m21_styles:M21Styles",
             summary="music21 corpus works in 6 styles, rendered by our synthesizer (16 kHz)")
