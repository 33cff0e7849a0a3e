"""Tiny, weight-free stand-ins for conformance checks and tests (no training, no data files).

``TinyClassifier`` is a small random-weight waveform classifier with a spectral front end, so
attacks, defenses and the Victim can be exercised in milliseconds.
"""

from __future__ import annotations

import torch
from torch import nn

from musicbench.interfaces import Context, TargetModel


class _TinyNet(nn.Module):
    def __init__(self, n_classes: int, n_fft: int = 256, hop: int = 128):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.conv = nn.Sequential(nn.Conv1d(n_fft // 2 + 1, 32, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(32, n_classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, self.hop, window=self.window, return_complex=True)
        feats = torch.log1p(100 * spec.abs())  # [B, F, frames]
        return self.head(self.conv(feats).mean(-1))


class TinyClassifier(TargetModel):
    """A random-weight classifier over ``n_classes`` labels, 0.25 s inputs at 16 kHz."""

    task = "classification"
    sample_rate = 16_000
    input_seconds = 0.25
    cam_layer = "conv"

    def __init__(self, n_classes: int = 3, seed: int = 0):
        super().__init__(None)
        self.name = "tiny-classifier"
        self.labels = tuple(f"class-{i}" for i in range(n_classes))
        self.seed = seed
        self.n_classes = n_classes
        self.net: _TinyNet | None = None

    def load(self, ctx: Context | None = None) -> None:
        device = ctx.device if ctx is not None else torch.device("cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _TinyNet(self.n_classes)
        net.eval().requires_grad_(False)
        self.net = net.to(device)

    def module(self) -> nn.Module:
        assert self.net is not None, "call load() first"
        return self.net

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.module()(audio)


def tone_batch(
    batch: int, samples: int, *, seed: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``Tensor[batch, samples]`` of seeded harmonic tones plus a little noise, peak <= 0.8."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16_000
    f0 = 110 * 2 ** (torch.rand(batch, 1, generator=g) * 3)
    x = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 5))
    x = x + 0.05 * torch.randn(batch, samples, generator=g)
    x = 0.8 * x / x.abs().amax(1, keepdim=True)
    return x.to(device=device, dtype=torch.float32)
