"""Built-in attacks, one module each."""

from musicbench import hookimpl


@hookimpl
def register_attacks(register):
    register("pgd", "musicbench_plugins.attacks.pgd:PGD",
             summary="projected gradient descent, L-inf or L2 on the waveform (Madry et al. "
                     "2018)")
    register("fgsm", "musicbench_plugins.attacks.fgsm:FGSM",
             summary="fast gradient sign method, one L-inf step (Goodfellow et al. 2015)")
    register("cw", "musicbench_plugins.attacks.cw:CW",
             summary="Carlini & Wagner L2 with binary search over c (Carlini & Wagner 2017)")
    register("apgd", "musicbench_plugins.attacks.apgd:APGD",
             summary="Auto-PGD: momentum, step halving at checkpoints, CE, DLR or targeted "
                     "DLR (APGD-T) loss, restarts; L-inf or L2 (Croce & Hein 2020)")
    register("nes", "musicbench_plugins.attacks.nes:NES",
             summary="black-box NES gradient estimates + L-inf PGD steps (Ilyas et al. 2018)")
    register("zoo", "musicbench_plugins.attacks.zoo:ZOO",
             summary="black-box ZOO-ADAM, finite differences over random coordinate blocks "
                     "(Chen et al. 2017)")
    register("square", "musicbench_plugins.attacks.square:Square",
             summary="black-box Square Attack, L-inf random search; a square on a waveform "
                     "is a tone over a window (Andriushchenko et al. 2020)")
    register("maia-wb", "musicbench_plugins.attacks.maia_wb:MAIAWB",
             summary="MAIA white-box: Grad-CAM regions re-inpainted under gradient steps "
                     "(Liu et al. 2025)")
    register("maia-bb", "musicbench_plugins.attacks.maia_bb:MAIABB",
             summary="MAIA black-box: occlusion regions, CMA-ES over the inpainter's latent "
                     "(Liu et al. 2025)")
    register("transfer", "musicbench_plugins.attacks.transfer:Transfer",
             summary="transfer: a white-box attack crafted on a surrogate model, zero queries "
                     "to the target (Papernot et al. 2016; Liu et al. 2017)")
    register("external", "musicbench_plugins.attacks.external:External",
             summary="adversarial audio made elsewhere: one file per clip id, checked against "
                     "the bound it claims, judged like any attack (zero queries)")
