"""Mask bookkeeping the inpainters share: gaps as sample ranges, crossfade curves, the
input checks of ``Inpainter.inpaint`` and the final composite that keeps unmasked samples
bit-identical."""

from __future__ import annotations

import math

import torch


def gap_runs(mask_row: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in ``mask_row[T]`` as ``[(start, end), ...]`` (end exclusive),
    left to right."""
    m = mask_row.detach().to(device="cpu", dtype=torch.int8)
    edges = torch.diff(torch.nn.functional.pad(m, (1, 1)))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, ends, strict=True))


def equal_power(n: int, *, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """``(fade_out[n], fade_in[n])`` with fade_out² + fade_in² = 1 (equal-power crossfade),
    sampled at the centres of ``n`` steps so neither end is exactly 0 or 1."""
    t = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) / max(n, 1)
    return (torch.cos(0.5 * math.pi * t).to(dtype), torch.sin(0.5 * math.pi * t).to(dtype))


def check_inputs(audio: torch.Tensor, mask: torch.Tensor, z: torch.Tensor,
                 latent_dim: int) -> None:
    """Raise ValueError on shapes or dtypes that break ``inpaint``'s contract."""
    if audio.dim() != 2:
        raise ValueError(f"inpaint takes audio[B, T], got shape {tuple(audio.shape)}")
    if mask.shape != audio.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool[B, T] like audio {tuple(audio.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    if z.dim() != 2 or z.shape != (audio.shape[0], latent_dim):
        raise ValueError(f"z must be [B, latent_dim] = ({audio.shape[0]}, {latent_dim}), got "
                         f"{tuple(z.shape)}")


def composite(audio: torch.Tensor, filled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``audio`` where ``mask`` is False (bit-identical, gradient passes straight through),
    ``filled`` clamped to [-1, 1] where it is True. All ``[B, T]``."""
    return torch.where(mask, filled.clamp(-1.0, 1.0), audio)
