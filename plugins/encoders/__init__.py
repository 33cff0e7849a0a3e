"""Built-in encoders (frame embeddings for FAD and PAMT)."""

from musicbench import hookimpl


@hookimpl
def register_encoders(register):
    register("musicnn", "musicbench_plugins.encoders.musicnn:MusicnnEncoder",
             summary="musicnn mid-end features, 753-d per 16 ms frame (MSD weights by default)")
    register("fad-vggish", "musicbench_plugins.encoders.fad_backbones:FadVggishEncoder",
             summary="VGGish (the FAD reference backbone), 128-d per 0.96 s; needs only its "
                     "local weights file (docs/fad.md)")
    register("fad-pann", "musicbench_plugins.encoders.fad_backbones:FadPannEncoder",
             summary="PANN CNN14 via frechet-audio-distance, 2048-d per clip; needs the [fad] "
                     "extra and local weights (docs/fad.md)")
    register("fad-clap", "musicbench_plugins.encoders.fad_backbones:FadClapEncoder",
             summary="LAION CLAP via frechet-audio-distance, 512-d per clip (48 kHz inside); "
                     "needs the [fad] extra and local weights (docs/fad.md)")
