"""Built-in target models."""

from musicbench import hookimpl


@hookimpl
def register_models(register):
    register("style-cnn", "musicbench_plugins.models.style_cnn:StyleCNN",
             summary="log-mel CNN style classifier trained on m21-styles")
    register("cover-net", "musicbench_plugins.models.cover_net:CoverNet",
             summary="CoverHunter-like pseudo-CQT embedder for cover-song retrieval (m21-covers)")
    register("musicnn-mtt", "musicbench_plugins.models.musicnn.target:MusicnnMTT",
             summary="pretrained musicnn tagger (MagnaTagATune), genre tags as classes")
    register("musicnn-msd", "musicbench_plugins.models.musicnn.target:MusicnnMSD",
             summary="pretrained musicnn tagger (Million Song Dataset), genre tags as classes")
