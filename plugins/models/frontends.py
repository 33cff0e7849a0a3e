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
