"""``denoise-unet``: a learned denoiser in front of the model (input purification), waveform in,
waveform out.

The network estimates the noise in the waveform and the defense subtracts it:
``clamp(x - n_hat(x), -1, 1)`` (residual prediction: a clean clip passes almost unchanged). It
is a mask-based waveform network in the encoder / mask / decoder layout of Conv-TasNet (Luo &
Mesgarani, "Conv-TasNet: Surpassing Ideal Time-Frequency Magnitude Masking for Speech
Separation", IEEE/ACM TASLP 2019) whose mask estimator is a 1-D U-Net over frames with Demucs's
blocks (Stoller, Ewert & Dixon, "Wave-U-Net", ISMIR 2018; Défossez, Usunier, Bottou & Bach,
"Music Source Separation in the Waveform Domain", 2019: strided convolution + ReLU + 1x1
convolution + GLU per level, transposed convolutions back up, additive skips):

1. analysis: a strided convolution with ``filters`` filters of length ``filters`` (hop half of
   it), fixed to a sqrt-Hann DFT pair with the synthesis, so the masked coefficients
   resynthesise exactly (learning the filters too, as Conv-TasNet does, stalled training here);
2. per bin, the log power of the coefficient pair (absolute level: the noise budgets are
   absolute, so there is no input normalisation);
3. the mask: a sigmoid of the U-Net's output plus a local branch of small 2-D convolutions over
   (bins, frames) of the log power (each bin's own level in its neighbourhood); a mask value is
   the share of the coefficient that is noise, a learned Wiener-like gain;
4. synthesis: the transposed convolution of the masked coefficients is the noise estimate.

Why not a plain Demucs / Wave-U-Net residual network: we trained one (16 channels, depth 5,
589k parameters, 10 epochs) and it learned nothing (valid SNR gain 0.02 dB). At the benchmark's
budgets the noise is 33-51 dB below the music, so a residual network must cancel the music in its
noise estimate to that precision through its nonlinearities; the masked filterbank cancels it
exactly by construction (mask 0 = identity) and learns only where the noise dominates. Even an
oracle Wiener filter (true clean power, 512-sample STFT) gains only 2.5-4.7 dB on m21-styles at
eps 0.0005-0.004: the rendered music is broadband and above sign noise in most bins.

Choices the papers leave open for this use, each a parameter (:class:`DenoiseUNetParams`):

* **Training noise.** Per training crop, one of Gaussian (sigma = eps, the RMS of sign noise at
  L-inf eps, so the same SNR), random sign (+-eps per sample: what a PGD step looks like) and
  uniform on [-eps, eps], drawn with weights ``noise_mix``; eps log-uniform on
  [``eps_min``, ``eps_max``] (the benchmark's L-inf budgets on [-1, 1] audio); a fraction
  ``clean_fraction`` of crops gets no noise (the mask should then be ~ 0).
* **Loss.** Per crop, the squared error of the noise estimate divided by the noise energy
  (``||n_hat - n||^2 / ||n||^2``: the inverse of the SNR improvement, so every eps counts the
  same); clean crops: ``||n_hat||^2`` divided by the energy of sign noise at ``eps_min``.

Training: Adam with a one-cycle schedule on random ``crop_seconds`` crops of the train split,
``epochs`` passes (one crop per clip per epoch); after each epoch the SNR gain is measured on a
fixed noisy subset of the valid split (``valid_clips`` clips) and the best epoch is kept. All
randomness comes from ``seed``.

How it is attacked: it is deterministic and differentiable, so the harness attacks the model
*through* it with plain gradients (an adaptive white-box attacker differentiates through the
denoiser); the output clamp has zero gradient only where it clips.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from musicbench.api import (
    Context,
    Dataset,
    Preprocessor,
    TrainedOnFirstUse,
    check_number,
    check_seed,
)
from musicbench_plugins._limits import (
    MAX_LEARNING_RATE,
    MAX_SECONDS,
    MAX_SIZE,
    MAX_STEPS,
    MAX_WEIGHT,
)

NOISE_KINDS = ("gaussian", "sign", "uniform")
"""The order of :attr:`DenoiseUNetParams.noise_mix`."""


@dataclass(frozen=True)
class DenoiseUNetParams:
    """Architecture and training recipe; every field is part of the checkpoint key.

    - ``filters``: length L of the fixed analysis / synthesis filters (samples; even). The
      filterbank has L channels (L / 2 bins, each a cosine and a sine filter), hop L / 2.
    - ``channels``: channels of the mask U-Net's first level; each level doubles them, up to
      ``max_channels``.
    - ``depth``: U-Net levels (each halves the frame rate).
    - ``local_channels``: channels of the local branch (a 5 x 5 convolution over bins and frames
      of the log power, added to the mask's logits: each bin's own level, smoothed);
      ``local_layers``: its hidden layers (the first 5 x 5, then 3 x 3 ones).
    - ``eps_min``, ``eps_max``: the L-inf noise levels trained on (log-uniform), on [-1, 1].
    - ``noise_mix``: weights of Gaussian, sign and uniform noise (:data:`NOISE_KINDS`).
    - ``clean_fraction``: share of training crops without noise.
    - ``crop_seconds``: length of the training crops.
    - ``epochs``, ``batch_size``, ``learning_rate``: Adam with a one-cycle schedule; an epoch
      is one random crop of every train clip.
    - ``valid_clips``: clips of the valid split (the test split if it has no valid split) the
      best epoch is chosen on; 0 keeps the last epoch.
    - ``seed``: every random draw of training (weights, crops, noise).
    """

    train_dataset: str = "m21-styles"
    train_dataset_params: dict[str, Any] = field(default_factory=dict)
    filters: int = 256
    channels: int = 32
    depth: int = 3
    max_channels: int = 128
    local_channels: int = 16
    local_layers: int = 2
    eps_min: float = 0.0005
    eps_max: float = 0.004
    noise_mix: tuple[float, ...] = (1.0, 1.0, 1.0)
    clean_fraction: float = 0.1
    crop_seconds: float = 1.0
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 3e-3
    valid_clips: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("filters", "channels", "depth", "max_channels", "local_channels",
                     "local_layers", "epochs",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.filters % 2 or self.filters < 4:
            raise ValueError(f"filters must be even and >= 4, got {self.filters}")
        if not 0 < self.eps_min <= self.eps_max < 1:
            raise ValueError(f"need 0 < eps_min <= eps_max < 1, got {self.eps_min}, "
                             f"{self.eps_max}")
        if len(self.noise_mix) != len(NOISE_KINDS) or min(self.noise_mix) < 0 \
                or sum(self.noise_mix) <= 0:
            raise ValueError(f"noise_mix needs {len(NOISE_KINDS)} weights >= 0 "
                             f"({', '.join(NOISE_KINDS)}) with a positive sum, got "
                             f"{self.noise_mix}")
        if not 0 <= self.clean_fraction < 1:
            raise ValueError(f"clean_fraction must lie in [0, 1), got {self.clean_fraction}")
        for name in ("crop_seconds", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.valid_clips < 0:
            raise ValueError(f"valid_clips must be >= 0, got {self.valid_clips}")
        for name in ("filters", "channels", "max_channels", "local_channels", "batch_size"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        for name in ("depth", "local_layers"):
            check_number(name, getattr(self, name), at_least=1, at_most=32, integer=True)
        check_number("epochs", self.epochs, at_least=1, at_most=MAX_STEPS, integer=True)
        for weight in self.noise_mix:
            check_number("noise_mix", weight, at_least=0, at_most=MAX_WEIGHT)
        check_number("crop_seconds", self.crop_seconds, above=0, at_most=MAX_SECONDS)
        check_number("learning_rate", self.learning_rate, above=0, at_most=MAX_LEARNING_RATE)
        check_number("valid_clips", self.valid_clips, at_least=0, at_most=MAX_SIZE, integer=True)
        check_seed("seed", self.seed)


def _dft_filters(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Analysis ``[L, 1, L]`` and synthesis ``[L, 1, L]`` filters of a sqrt-Hann STFT with hop
    L / 2 (cosine channels of bins 0 .. L/2-1, then their sine channels): a perfect
    reconstruction pair except for the Nyquist bin, where music has no energy."""
    n = torch.arange(length, dtype=torch.float64)
    k = torch.arange(length // 2, dtype=torch.float64)[:, None]
    window = torch.hann_window(length, periodic=True, dtype=torch.float64).sqrt()
    phase = 2 * math.pi * k * n / length
    analysis = torch.cat([window * torch.cos(phase), -window * torch.sin(phase)])
    weight = torch.full((length // 2, 1), 2.0 / length, dtype=torch.float64)
    weight[0] = 1.0 / length
    synthesis = torch.cat([weight * window * torch.cos(phase),
                           -weight * window * torch.sin(phase)])
    return analysis[:, None].float(), synthesis[:, None].float()


class DenoiseUNetNet(nn.Module):
    """``audio[B, T]`` -> estimated noise ``[B, T]`` (same units as the audio).

    ``analysis`` (a strided convolution, L filters of length L, hop L / 2) -> per bin the log
    power -> a 1-D U-Net over frames -> a mask in [0, 1] per bin and frame (the share of that
    coefficient that is noise) -> ``synthesis`` (transposed convolution) of the masked
    coefficients.
    """

    def __init__(self, filters: int = 256, channels: int = 32, depth: int = 3,
                 max_channels: int = 128, local_channels: int = 8, local_layers: int = 1):
        super().__init__()
        self.filters, self.hop, self.depth = filters, filters // 2, depth
        bins = filters // 2
        analysis, synthesis = _dft_filters(filters)
        # fixed, rebuilt from ``filters`` (not saved): learning them with Adam at the mask
        # network's rate broke the pair and stalled training (0.1 dB after 10 epochs)
        self.register_buffer("analysis", analysis, persistent=False)
        self.register_buffer("synthesis", synthesis, persistent=False)
        self.inp = nn.Sequential(nn.Conv1d(bins, channels, 3, padding=1), nn.ReLU())
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        c_in = channels
        for level in range(depth):
            c = min(channels * 2 ** (level + 1), max_channels)
            self.encoder.append(nn.Sequential(
                nn.Conv1d(c_in, c, 4, 2, padding=1), nn.ReLU(),
                nn.Conv1d(c, 2 * c, 1), nn.GLU(dim=1)))
            self.decoder.insert(0, nn.Sequential(
                nn.Conv1d(c, 2 * c, 1), nn.GLU(dim=1),
                nn.ConvTranspose1d(c, c_in, 4, 2, padding=1), nn.ReLU()))
            c_in = c
        self.out = nn.Conv1d(channels, bins, 1)
        hidden: list[nn.Module] = []
        for _ in range(local_layers - 1):
            hidden += [nn.Conv2d(local_channels, local_channels, 3, padding=1), nn.ReLU()]
        self.local = nn.Sequential(nn.Conv2d(1, local_channels, 5, padding=2), nn.ReLU(),
                                   *hidden, nn.Conv2d(local_channels, 1, 1))
        nn.init.zeros_(self.local[-1].weight)
        nn.init.zeros_(self.local[-1].bias)
        nn.init.zeros_(self.out.weight)  # the untrained mask is ~0: ~ the identity
        nn.init.constant_(self.out.bias, -6.0)

    def mask(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``coeffs[B, L, frames]`` (cosine then sine channels) -> mask ``[B, L / 2, frames]``."""
        bins = self.filters // 2
        power = coeffs[:, :bins].square() + coeffs[:, bins:].square()
        feats = (torch.log10(power + 1e-9) + 4.0) / 2.0  # ~[-2.5, 2] on [-1, 1] audio
        x = self.inp(feats)
        frames = x.shape[-1]
        x = F.pad(x, (0, -frames % 2**self.depth))
        skips = []
        for enc in self.encoder:
            skips.append(x)
            x = enc(x)
        for dec in self.decoder:
            x = dec(x) + skips.pop()
        return torch.sigmoid(self.out(x[..., :frames]) + self.local(feats[:, None])[:, 0])

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        t = audio.shape[-1]
        hop = self.hop
        right = hop + (-(t + 2 * hop - self.filters)) % hop  # every sample in two frames
        x = F.pad(audio[:, None], (hop, right))  # [B, 1, T']
        coeffs = F.conv1d(x, self.analysis, stride=hop)  # [B, L, frames]
        m = self.mask(coeffs).repeat(1, 2, 1)
        noise = F.conv_transpose1d(m * coeffs, self.synthesis, stride=hop)  # [B, 1, T']
        return noise[:, 0, hop : hop + t]


class DenoiseUNet(TrainedOnFirstUse, Preprocessor):
    """Learned residual waveform denoiser (16 kHz), trained on first use (or by ``musicbench
    train denoise-unet``). Deterministic and differentiable."""

    version = "1"
    native_sample_rate = 16_000
    randomized = False
    differentiable = True
    Params = DenoiseUNetParams
    checkpoint_prefix = "denoise-unet"
    checkpoint_folder = "defenses"

    def check_dataset(self, ds: Dataset) -> None:
        if ds.sample_rate != self.native_sample_rate:
            raise ValueError(f"denoise-unet trains on {self.native_sample_rate} Hz audio; "
                             f"'{ds.name}' is {ds.sample_rate} Hz")

    def make_net(self, ds: Dataset) -> DenoiseUNetNet:
        p = self.params
        return DenoiseUNetNet(p.filters, p.channels, p.depth, p.max_channels, p.local_channels,
                              p.local_layers)

    def freeze(self, net: nn.Module) -> None:
        net.eval()
        for q in net.parameters():  # attacks need input gradients only
            q.requires_grad_(False)
        self.net = net

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``audio[B, T]`` in [-1, 1] -> ``clamp(audio - noise_estimate, -1, 1)`` ``[B, T]``."""
        if self.net is None:
            raise RuntimeError("denoise-unet is not loaded; call load(ctx) first")
        if audio.dim() != 2:
            raise ValueError(f"denoise-unet takes audio[B, T], got shape {tuple(audio.shape)}")
        return (audio - self.net(audio)).clamp(-1.0, 1.0)

    # -- training -----------------------------------------------------------------------------

    def fit(self, ctx: Context) -> dict[str, Any]:
        """Train on random noisy crops of the train split, keep the epoch with the best SNR
        gain on the valid split, save, and return a summary."""
        p = self.params
        ds = self.training_dataset(ctx)
        device = ctx.device
        train = ds.examples("train")
        if not train:
            raise ValueError(f"'{ds.name}' has no train split to train denoise-unet on")
        crop = min(round(p.crop_seconds * ds.sample_rate), min(e.audio.shape[-1] for e in train))
        gen = torch.Generator().manual_seed(p.seed)
        valid_clean, valid_noisy = self._validation_set(ds, gen)
        net = self.build_net(ds, device)
        opt = torch.optim.Adam(net.parameters(), lr=p.learning_rate)
        batches = math.ceil(len(train) / p.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.learning_rate,
                                                    total_steps=p.epochs * batches)
        best_gain, best_state, best_epoch = -math.inf, None, -1
        history: list[dict[str, float]] = []
        t0 = time.perf_counter()
        with ctx.progress(f"training denoise-unet on {ds.name}",
                          total=p.epochs * batches) as task:
            for epoch in range(p.epochs):
                net.train()
                order = torch.randperm(len(train), generator=gen)
                total = 0.0
                for b in range(batches):
                    idx = order[b * p.batch_size : (b + 1) * p.batch_size]
                    clean = _crops([train[int(i)].audio for i in idx], crop, gen).to(device)
                    noise = self._training_noise(clean.shape, gen).to(device)
                    loss = _loss(net(clean + noise), noise, p.eps_min)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach())
                    task.advance()
                gain = (_snr_gain(net, valid_clean, valid_noisy, p.batch_size)
                        if valid_clean is not None else math.nan)
                history.append({"epoch": epoch + 1, "loss": round(total / batches, 5),
                                "valid_snr_gain_db": round(gain, 3)})
                task.update(description=f"training denoise-unet: epoch {epoch + 1}/{p.epochs}, "
                                        f"loss {total / batches:.4f}, valid SNR gain "
                                        f"{gain:+.2f} dB")
                if valid_clean is None or gain > best_gain:
                    best_gain, best_epoch = gain, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        assert best_state is not None
        net.load_state_dict(best_state)
        summary = {
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "best_epoch": best_epoch + 1,
            "valid_snr_gain_db": None if math.isnan(best_gain) else round(best_gain, 3),
            "history": history,
            "parameters": sum(q.numel() for q in net.parameters()),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "params": asdict(p),
        }
        return self.save_trained(ctx, ds, net, summary)

    def _training_noise(self, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        """Noise ``[B, T]`` per :class:`DenoiseUNetParams`: one kind and one eps per row, rows
        without noise with probability ``clean_fraction``."""
        p = self.params
        b, t = shape
        log_lo, log_hi = math.log(p.eps_min), math.log(p.eps_max)
        eps = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, 1, generator=gen))
        eps = eps * (torch.rand(b, 1, generator=gen) >= p.clean_fraction)
        kind = torch.multinomial(torch.tensor(p.noise_mix, dtype=torch.float64), b,
                                 replacement=True, generator=gen)[:, None]
        return eps * _unit_noise(kind, t, gen)

    def _validation_set(self, ds: Dataset, gen: torch.Generator
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Fixed ``(clean, noisy)`` ``[N, T]`` from the valid split (test if none): the three
        noise kinds in turn, eps on a log grid over [eps_min, eps_max]."""
        p = self.params
        split = "valid" if ds.examples("valid") else "test"
        clips = list(ds.examples(split))[: p.valid_clips]
        if not clips:
            return None, None
        clean = torch.stack([e.audio for e in clips])
        n = clean.shape[0]
        kind = (torch.arange(n) % len(NOISE_KINDS))[:, None]
        frac = torch.linspace(0, 1, n)[torch.randperm(n, generator=gen)][:, None]
        eps = p.eps_min * (p.eps_max / p.eps_min) ** frac
        noisy = clean + eps * _unit_noise(kind, clean.shape[1], gen)
        return clean, noisy


def _unit_noise(kind: torch.Tensor, t: int, gen: torch.Generator) -> torch.Tensor:
    """``[B, T]`` noise of L-inf scale 1 (Gaussian: RMS 1) per row's ``kind[B, 1]`` (an index
    into :data:`NOISE_KINDS`); every kind is drawn for every row so the stream does not
    depend on the kinds."""
    b = kind.shape[0]
    gauss = torch.randn(b, t, generator=gen)
    sign = torch.randint(0, 2, (b, t), generator=gen).float() * 2 - 1
    uniform = torch.rand(b, t, generator=gen) * 2 - 1
    return torch.where(kind == 0, gauss, torch.where(kind == 1, sign, uniform))


def _crops(clips: list[torch.Tensor], length: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``length`` window of each clip, stacked: ``[B, length]``."""
    starts = [int(torch.randint(0, c.shape[-1] - length + 1, (1,), generator=gen))
              for c in clips]
    return torch.stack([c[s : s + length] for c, s in zip(clips, starts, strict=True)])


def _loss(estimate: torch.Tensor, noise: torch.Tensor, eps_min: float) -> torch.Tensor:
    """Mean over rows of ``||n_hat - n||^2 / ||n||^2`` (clean rows: over the energy of sign
    noise at ``eps_min``)."""
    err = (estimate - noise).square().mean(dim=1)
    energy = noise.square().mean(dim=1).clamp_min(eps_min**2)
    return (err / energy).mean()


@torch.no_grad()
def _snr_gain(net: nn.Module, clean: torch.Tensor, noisy: torch.Tensor, bs: int) -> float:
    """Mean over clips of SNR(denoised) - SNR(noisy), in dB, against ``clean``."""
    from musicbench.api import snr_db

    net.eval()
    device = next(net.parameters()).device
    gains = []
    for i in range(0, clean.shape[0], bs):
        c, x = clean[i : i + bs].to(device), noisy[i : i + bs].to(device)
        y = (x - net(x)).clamp(-1.0, 1.0)
        gains.append(snr_db(c, y) - snr_db(c, x))
    return float(torch.cat(gains).mean())
