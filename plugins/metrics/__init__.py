"""Built-in metrics (definitions in docs/metrics.md): per-sample LSD, SNR, L-inf and L2 distance;
set-level FAD and retrieval mAP/MR1; per-sample PAMT distance (trained head, docs/pamt.md)."""

from musicbench import hookimpl


@hookimpl
def register_metrics(register):
    register("lsd", "musicbench_plugins.metrics.distances:LSD",
             summary="log-spectral distance (n_fft 2048, hop 512), lower = closer")
    register("snr", "musicbench_plugins.metrics.distances:SNR",
             summary="signal-to-noise ratio of the perturbation in dB, higher = quieter")
    register("linf", "musicbench_plugins.metrics.distances:LInf",
             summary="max absolute sample change")
    register("l2", "musicbench_plugins.metrics.distances:L2",
             summary="Euclidean norm of the perturbation")
    register("fad", "musicbench_plugins.metrics.fad:FAD",
             summary="Fréchet Audio Distance over a cell's attacked clips ([run] fad_encoder)")
    register("map", "musicbench_plugins.metrics.retrieval:MAP",
             summary="retrieval mAP and MR1 before and after the attack")
    register("pamt-distance", "musicbench_plugins.metrics.pamt_distance:PamtDistance",
             summary="cosine distance in PAMT feature space (trained on first use), "
                     "lower = closer")
