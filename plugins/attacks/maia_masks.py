"""Regions and masks for MAIA: ranked time segments, the masks they make, and how an
inpainter's fill is put into a clip (full-band time segments or a time-frequency box).

Liu, Zhang, Sang, Li, Li, "An Inpainting-Based Approach for Music Adversarial Attacks",
ISMIR 2025 (arXiv 2509.04980). The paper's figures show the regenerated regions as
time-frequency boxes; it does not say how a box is cut out of a waveform inpainter's fill. Our
reading (docs/maia.md, ``mask="tf-box"``): inpaint the full-band time segment, then keep
the fill's STFT only inside the box and the clean STFT everywhere else, and resynthesise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from musicbench.interfaces import Inpainter

MaskKind = Literal["time", "tf-box"]


@dataclass(frozen=True)
class Regions:
    """Ranked regions of a batch of clips, the most important first.

    ``start[B, r]`` (long, samples) and ``length`` (samples, the same for every region) give the
    time span ``[start, start + length)``; ``valid bool[B, r]`` is False where a clip had room
    for fewer than ``r`` non-overlapping regions; ``score[B, r]`` is the importance that ranked
    them; ``band[B, r, 2]`` is the frequency band ``(low, high)`` in Hz that the tf-box mask
    keeps (the full band ``(0, sample_rate / 2)`` where the importance analysis has none).
    """

    start: torch.Tensor
    length: int
    valid: torch.Tensor
    score: torch.Tensor
    band: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.start.shape[1])

    def select(self, rows: torch.Tensor) -> Regions:
        """The regions of the clips ``rows`` (long ``[b]``)."""
        return Regions(self.start[rows], self.length, self.valid[rows], self.score[rows],
                       self.band[rows])

    def time_mask(self, samples: int, k: int | None = None) -> torch.Tensor:
        """``bool[B, samples]``: True inside region ``k`` (all valid regions when None)."""
        t = torch.arange(samples, device=self.start.device)
        ks = range(self.count) if k is None else (k,)
        mask = torch.zeros(self.start.shape[0], samples, dtype=torch.bool,
                           device=self.start.device)
        for j in ks:
            s = self.start[:, j : j + 1]
            inside = (t[None] >= s) & (t[None] < s + self.length)
            mask |= inside & self.valid[:, j : j + 1]
        return mask


def top_segments(curve: torch.Tensor, width: int, count: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy top-``count`` non-overlapping windows of ``width`` cells of ``curve[B, N]``.

    Returns ``(start[B, count]`` (cells), ``score[B, count]`` (window sums),
    ``valid bool[B, count])``; a window is never placed where it would overlap a better one,
    and ``valid`` is False once a clip has no room left. ``width`` is clipped to ``N``.
    """
    n = curve.shape[1]
    width = max(1, min(width, n))
    csum = torch.nn.functional.pad(curve.double().cumsum(1), (1, 0))
    sums = csum[:, width:] - csum[:, :-width]  # [B, N - width + 1]
    positions = torch.arange(sums.shape[1], device=curve.device)
    starts, scores, valid = [], [], []
    for _ in range(count):
        best = sums.argmax(1)
        value = sums.gather(1, best[:, None]).squeeze(1)
        starts.append(best)
        scores.append(value)
        valid.append(torch.isfinite(value))
        # A window starting within width cells of this one would overlap it.
        near = (positions[None] - best[:, None]).abs() < width
        sums = sums.masked_fill(near, float("-inf"))
    return (torch.stack(starts, 1), torch.stack(scores, 1).to(curve.dtype),
            torch.stack(valid, 1))


GACELA_GAP_SECONDS = 32 * 256 / 22_050
"""GACELA's shortest published gap (32 frames of hop 256 at 22.05 kHz, 372 ms): the gap for
inpainters that declare none."""


def latent_bounds(inpainter: Inpainter) -> tuple[float, float]:
    """The box the inpainter's latent codes live in: its ``latent_range`` attribute where it
    declares one; else the range of 1024 draws from its prior (a private generator, seed 0),
    which for a uniform prior is its support to within a fraction of a percent."""
    declared = getattr(inpainter, "latent_range", None)
    if declared is not None:
        lo, hi = declared
        return float(lo), float(hi)
    draws = inpainter.sample_latent(1024, torch.Generator().manual_seed(0))
    return float(draws.min()), float(draws.max())


def natural_gap_seconds(inpainter: Inpainter) -> float:
    """The gap the inpainter was built for: its ``gap_seconds`` attribute, else
    :data:`GACELA_GAP_SECONDS`. The attack's ``gap_seconds`` parameter overrides both."""
    gap = getattr(inpainter, "gap_seconds", None)
    return float(gap) if gap is not None else GACELA_GAP_SECONDS


class RegionFiller:
    """Puts an inpainter's fill into ranked regions, with a time or a tf-box mask.

    ``mask="time"``: the fill replaces the full-band segment. ``mask="tf-box"``: the fill is
    made for the full-band segment, then only the STFT bins inside the region's frequency band
    and frames whose centre lies in the segment are taken from it (Hann window ``n_fft``, hop
    ``n_fft // 4``); samples farther than ``n_fft // 2`` from the segment are copied from the
    input bit for bit (:meth:`support`). Everything is differentiable in the latent code and
    the audio.
    """

    def __init__(self, inpainter: Inpainter, mask: MaskKind = "time", n_fft: int = 1024):
        self.inpainter = inpainter
        self.kind = mask
        self.n_fft = n_fft
        self.hop = n_fft // 4
        self.sample_rate = inpainter.sample_rate

    def support(self, regions: Regions, samples: int, k: int | None = None) -> torch.Tensor:
        """``bool[B, samples]``: where filling region ``k`` (all when None) may change audio."""
        mask = regions.time_mask(samples, k)
        if self.kind == "time":
            return mask
        pad = self.n_fft // 2
        widened = torch.nn.functional.max_pool1d(mask[:, None].float(), 2 * pad + 1, 1, pad)
        return widened[:, 0] > 0

    def fill(self, audio: torch.Tensor, regions: Regions, k: int, z: torch.Tensor
             ) -> torch.Tensor:
        """``audio[B, T]`` with region ``k`` regenerated from ``z[B, latent_dim]``.

        Clips whose region ``k`` is not valid come back unchanged."""
        mask = regions.time_mask(audio.shape[1], k)
        filled = self.inpainter.inpaint(audio, mask, z)
        # The contract says unmasked samples come back unchanged; enforce it bit for bit.
        filled = torch.where(mask, filled, audio)
        if self.kind == "tf-box":
            filled = self.box(audio, filled, regions, k)
        return filled.clamp(-1, 1)

    def fill_all(self, audio: torch.Tensor, regions: Regions, z: torch.Tensor) -> torch.Tensor:
        """Regenerate every region in rank order, ``z[B, r, latent_dim]``; each region's fill
        sees the earlier fills as context."""
        out = audio
        for k in range(regions.count):
            out = self.fill(out, regions, k, z[:, k])
        return out

    def restrict(self, base: torch.Tensor, candidate: torch.Tensor, regions: Regions
                 ) -> torch.Tensor:
        """``candidate`` inside every region (time segment or box), ``base`` elsewhere."""
        if self.kind == "time":
            return torch.where(regions.time_mask(base.shape[1]), candidate, base)
        out = base
        for k in range(regions.count):
            out = self.box(out, torch.where(regions.time_mask(base.shape[1], k), candidate, out),
                           regions, k)
        return out

    def box(self, clean: torch.Tensor, filled: torch.Tensor, regions: Regions, k: int
            ) -> torch.Tensor:
        """``clean[B, T]`` with the STFT of ``filled[B, T]`` inside region ``k``'s box."""
        samples = clean.shape[1]
        window = torch.hann_window(self.n_fft, device=clean.device, dtype=clean.dtype)
        n_fft = self.n_fft
        if samples < n_fft // 2 + 1:  # too short for reflect-padded frames: time mask only
            return filled
        def spec(a: torch.Tensor) -> torch.Tensor:
            return torch.stft(a, n_fft, self.hop, window=window, return_complex=True)

        x, y = spec(clean), spec(filled)  # [B, F, frames]
        frames = x.shape[-1]
        centres = (torch.arange(frames, device=clean.device) * self.hop).clamp(max=samples - 1)
        in_time = regions.time_mask(samples, k)[:, centres]  # [B, frames]
        freqs = torch.linspace(0, self.sample_rate / 2, x.shape[1], device=clean.device)
        lo, hi = regions.band[:, k, 0:1], regions.band[:, k, 1:2]
        in_band = (freqs[None] >= lo) & (freqs[None] <= hi)  # [B, F]
        box = (in_band[:, :, None] & in_time[:, None, :]).to(x.real.dtype)
        mixed = x * (1 - box) + y * box
        out = torch.istft(mixed, n_fft, self.hop, window=window, length=samples)
        # Outside the frames that changed the round trip only adds float error: copy exactly.
        return torch.where(self.support(regions, samples, k), out, clean)
