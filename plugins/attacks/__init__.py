"""Built-in attacks, one module each."""

from musicbench import hookimpl


@hookimpl
def register_attacks(register):
    register("pgd", "musicbench_plugins.attacks.pgd:PGD",
             summary="projected gradient descent, L-inf on the waveform (Madry et al. 2018)")
    register("fgsm", "musicbench_plugins.attacks.fgsm:FGSM",
             summary="fast gradient sign method, one L-inf step (Goodfellow et al. 2015)")
