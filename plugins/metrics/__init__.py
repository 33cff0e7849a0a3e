"""Built-in per-sample metrics: LSD, SNR, L-inf and L2 distance (definitions in DESIGN.md 5)."""

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
