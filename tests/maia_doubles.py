"""Test doubles for the MAIA tests: a deterministic, differentiable inpainter and a target
whose decision is driven by loudness in time (so the "important" region is known)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from musicbench.interfaces import Context, Inpainter, TargetModel


class PatternInpainter(Inpainter):
    """Fills the mask with ``amplitude * tanh(z @ W)`` (a period of ``period`` samples) tiled
    over time: differentiable in ``z``, blind to the gap content (like a GACELA generator),
    uniform latent prior on [-1, 1]."""

    sample_rate = 16_000
    latent_dim = 8
    gap_seconds = 0.05
    latent_range = (-1.0, 1.0)

    def __init__(self, params=None, *, period: int = 64, amplitude: float = 0.5, seed: int = 0):
        super().__init__(params)
        self.name = "pattern"
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(self.latent_dim, period, generator=g)
        self.amplitude = amplitude
        self.calls = 0

    def load(self, ctx: Context) -> None:
        self.weight = self.weight.to(ctx.device)

    def sample_latent(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(batch, self.latent_dim, generator=generator) * 2 - 1

    def inpaint(self, audio: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        period = self.weight.shape[1]
        pattern = self.amplitude * torch.tanh(z @ self.weight.to(z.device))  # [B, period]
        reps = -(-audio.shape[1] // period)
        tiled = pattern.repeat(1, reps)[:, : audio.shape[1]]
        return torch.where(mask, tiled, audio)


def context_with(inpainter: Inpainter, tmp: Path) -> Context:
    """A CPU Context whose ``inpainter(name, params)`` hands back ``inpainter``."""
    return Context(cache_dir=tmp, device=torch.device("cpu"),
                   inpainter=lambda name, params: inpainter)


class _Loudness(nn.Module):
    """``audio[B, T]`` -> frame energies ``[B, 1, frames]`` (the cam layer) -> 2 logits:
    class 1 rises with the loudest frames, class 0 is a constant threshold."""

    def __init__(self, hop: int = 160):
        super().__init__()
        self.hop = hop
        self.energy = nn.Identity()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio[:, : audio.shape[1] // self.hop * self.hop].reshape(
            audio.shape[0], -1, self.hop)
        e = self.energy(frames.square().mean(-1)[:, None])  # [B, 1, frames]
        score = 50 * e.mean((1, 2))
        return torch.stack([torch.full_like(score, 0.5), score], 1)


class LoudnessClassifier(TargetModel):
    """Two classes, 0.5 s inputs: "loud" (class 1) when the mean frame energy * 50 exceeds
    0.5. Its only cam layer is the frame-energy curve, so Grad-CAM is the energy profile."""

    task = "classification"
    sample_rate = 16_000
    input_seconds = 0.5
    cam_layer = "energy"

    def __init__(self):
        super().__init__(None)
        self.name = "loudness"
        self.labels = ("quiet", "loud")
        self.net = _Loudness()

    def load(self, ctx: Context | None = None) -> None:
        self.net.eval()

    def module(self) -> nn.Module:
        return self.net

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.net(audio)
