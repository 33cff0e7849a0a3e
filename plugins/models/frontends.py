"""Spectral front ends in torch, differentiable from the waveform (inside the models)."""

from __future__ import annotations

import torch
from torch import nn


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular HTK-mel filters ``[n_mels, n_fft // 2 + 1]`` (unit peak)."""
    f_max = f_max if f_max is not None else sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(torch.tensor(f_min)).item(),
                          hz_to_mel(torch.tensor(f_max)).item(), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - low) / (centre - low)
    falling = (high - freqs[None]) / (high - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class LogMel(nn.Module):
    """``audio[B, T]`` -> ``log-mel[B, 1, n_mels, frames]``: log(mel power + floor).

    Hann window, centred frames; the floor keeps the log and its gradient finite on silence.
    """

    def __init__(self, sample_rate: int = 16_000, n_fft: int = 1024, hop: int = 256,
                 n_mels: int = 64, floor: float = 1e-6):
        super().__init__()
        self.n_fft, self.hop, self.floor = n_fft, hop, floor
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(sample_rate, n_fft, n_mels),
                             persistent=False)

    def frames(self, samples: int) -> int:
        return 1 + samples // self.hop

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, self.hop, window=self.window, center=True,
                          return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, F, frames]
        mel = torch.matmul(self.filters, power)
        return torch.log(mel + self.floor).unsqueeze(1)


def log_frequency_filterbank(
    sample_rate: int, n_fft: int, f_min: float, bins_per_octave: int, n_bins: int
) -> torch.Tensor:
    """Triangular filters ``[n_bins, n_fft // 2 + 1]`` centred on a geometric (constant-Q)
    grid f_k = f_min * 2^(k / bins_per_octave); each filter spans its neighbours' centres and
    is normalised to unit area, so the output is a pseudo-CQT of the power spectrum."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    k = torch.arange(-1, n_bins + 1, dtype=torch.float64)
    centres = f_min * 2.0 ** (k / bins_per_octave)
    if centres[-1] >= sample_rate / 2:
        raise ValueError(f"{n_bins} bins from {f_min} Hz exceed Nyquist at {sample_rate} Hz")
    low, mid, high = centres[:-2, None], centres[1:-1, None], centres[2:, None]
    rising = (freqs[None] - low) / (mid - low)
    falling = (high - freqs[None]) / (high - mid)
    tri = torch.clamp(torch.minimum(rising, falling), min=0.0)
    # The lowest bins can fall between STFT bins: give them the nearest bin instead of nothing.
    empty = tri.sum(1) == 0
    if empty.any():
        nearest = (freqs[None] - mid[empty]).abs().argmin(1)
        tri[empty.nonzero().squeeze(1), nearest] = 1.0
    return (tri / tri.sum(1, keepdim=True)).to(torch.float32)


class LogFrequencySpectrogram(nn.Module):
    """``audio[B, T]`` -> ``log-power[B, 1, n_bins, frames]`` on a constant-Q frequency grid
    (a pseudo-CQT: triangular log-frequency filters over one long-window STFT).

    Transposing by one semitone shifts the picture by ``bins_per_octave / 12`` rows, which is
    what lets a cover model learn key invariance by rolling along that axis. With
    ``fold_octaves`` the octaves are summed into ``bins_per_octave`` pitch classes (a chroma),
    where a transposition is an exact circular shift.
    """

    def __init__(self, sample_rate: int = 16_000, n_fft: int = 4096, hop: int = 320,
                 f_min: float = 65.4, bins_per_octave: int = 12, n_bins: int = 72,
                 floor: float = 1e-6, fold_octaves: bool = False):
        super().__init__()
        if fold_octaves and n_bins % bins_per_octave:
            raise ValueError("folding octaves needs a whole number of octaves")
        self.n_fft, self.hop, self.floor = n_fft, hop, floor
        self.fold = bins_per_octave if fold_octaves else 0
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer(
            "filters",
            log_frequency_filterbank(sample_rate, n_fft, f_min, bins_per_octave, n_bins),
            persistent=False,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, self.hop, window=self.window, center=True,
                          return_complex=True)
        power = spec.real.square() + spec.imag.square()
        bands = torch.matmul(self.filters, power)  # [B, n_bins, frames]
        if self.fold:  # chroma: sum the octaves of each pitch class
            bands = bands.reshape(bands.shape[0], -1, self.fold, bands.shape[-1]).sum(1)
        return torch.log(bands + self.floor).unsqueeze(1)
