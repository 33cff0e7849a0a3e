"""Built-in datasets."""

from musicbench import hookimpl


@hookimpl
def register_datasets(register):
    register("m21-styles", "musicbench_plugins.datasets.m21_styles:M21Styles",
             summary="music21 corpus works in 6 styles, rendered by our synthesizer (16 kHz)")
    register("m21-covers", "musicbench_plugins.datasets.m21_covers:M21Covers",
             summary="music21 corpus works in 4 rendered versions each: cover retrieval (16 kHz)")
    register("gtzan", "musicbench_plugins.datasets.gtzan:GTZAN",
             summary="GTZAN genres from a local copy (root=...), optional filtered split files")
    register("folder", "musicbench_plugins.datasets.folder:FolderDataset",
             summary="your audio files for classification: CSV manifest path,label[,split]")
    register("folder-retrieval", "musicbench_plugins.datasets.folder:FolderRetrievalDataset",
             summary="your audio files for retrieval: CSV manifest path,work_id[,split][,role]")
