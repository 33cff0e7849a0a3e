"""Built-in encoders (frame embeddings for FAD and PAMT)."""

from musicbench import hookimpl


@hookimpl
def register_encoders(register):
    register("musicnn", "musicbench_plugins.encoders.musicnn:MusicnnEncoder",
             summary="musicnn mid-end features, 753-d per 16 ms frame (MSD weights by default)")
