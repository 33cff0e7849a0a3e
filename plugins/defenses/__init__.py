"""Built-in defenses."""

from musicbench import hookimpl


@hookimpl
def register_defenses(register):
    register("none", "musicbench_plugins.defenses.none:NoDefense",
             summary="no defense: the model as it is")
    register("lowpass", "musicbench_plugins.defenses.lowpass:LowPass",
             summary="windowed-sinc low-pass filter (Rajaratnam et al. 2018)")
    register("resample", "musicbench_plugins.defenses.resample:Resample",
             summary="down-sample and up-sample, optionally at a random rate (Yang et al. "
                     "2019)")
    register("quantize", "musicbench_plugins.defenses.quantize:Quantize",
             summary="bit-depth reduction, BPDA through the identity (Yang et al. 2019)")
    register("mp3", "musicbench_plugins.defenses.mp3:MP3",
             summary="MP3 encode/decode, BPDA through the codec's per-bin gain (Das et al. "
                     "2018)")
    register("noise", "musicbench_plugins.defenses.noise:GaussianNoise",
             summary="additive Gaussian noise, randomized smoothing's input (Cohen et al. 2019)")
    register("time-shift", "musicbench_plugins.defenses.time_shift:TimeShift",
             summary="random circular or cropping time shift (after Xie et al. 2018)")
    register("denoise-spectral", "musicbench_plugins.defenses.denoise_spectral:SpectralGate",
             summary="spectral gating above a per-frequency noise floor (Sainburg et al. 2020)")
    register("denoise-unet", "musicbench_plugins.defenses.denoise_unet:DenoiseUNet",
             summary="learned residual denoiser, a U-Net mask on a filterbank (Stoller et al. "
                     "2018, Luo & Mesgarani 2019), trained on m21-styles against sign and "
                     "Gaussian noise")
    register("advtrain", "musicbench_plugins.defenses.advtrain:AdvTrain",
             summary="adversarial fine-tuning of the model on the waveform: PGD (Madry et al. "
                     "2018), TRADES (Zhang et al. 2019) or FGSM-RS (Wong et al. 2020)")
    register("pamt", "musicbench_plugins.defenses.pamt_defense:Pamt",
             summary="frozen encoder (musicnn) + PAMT head (InfoNCE on psychoacoustically "
                     "perturbed views, arXiv 2509.04985) + task head; not the base's weights")
    register("pamt-control", "musicbench_plugins.defenses.pamt_defense:PamtControl",
             summary="pamt's control: the same task head on the raw frozen encoder's "
                     "features; not the base's weights")
