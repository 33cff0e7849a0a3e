"""Time-frequency views for ``gacela``: a non-centred STFT on a frame grid the caller anchors,
log-magnitude and mel views scaled to [-1, 1], their inverse, overlap-add resynthesis, and
phase reconstruction (phase-vocoder continuation + Griffin-Lim with known samples fixed).

Frame ``j`` of a segment covers samples ``[j * hop, j * hop + n_fft)`` of that segment (Hann
window). Log-magnitudes are in dB relative to a per-example reference level ``ref`` (dB) and
mapped linearly so that ``ref`` -> 1 and ``ref - range_db`` (and below) -> -1, as GACELA's
"50 dB range scaled to [-1, 1]"; a reference per example makes the views gain-invariant.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from musicbench_plugins.models.frontends import mel_filterbank

MAG_FLOOR = 1e-7  # keeps log10 and its gradient finite on digital silence
MIN_REF_DB = -20.0  # reference level of a context that is (nearly) silent


class SpectralView(nn.Module):
    """STFT ``n_fft``/``hop`` (Hann, non-centred) with ``bins = n_fft // 2`` kept (the
    Nyquist bin is dropped, as GACELA keeps 512 of 513) and an ``n_mels`` HTK-mel view."""

    def __init__(self, n_fft: int, hop: int, n_mels: int, range_db: float,
                 sample_rate: int = 16_000):
        super().__init__()
        self.n_fft, self.hop, self.range_db = n_fft, hop, range_db
        self.bins = n_fft // 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        fb = mel_filterbank(sample_rate, n_fft, n_mels)[:, : self.bins]
        self.register_buffer("mel_fb", fb, persistent=False)

    def samples(self, frames: int) -> int:
        """Segment length that holds exactly ``frames`` frames."""
        return (frames - 1) * self.hop + self.n_fft

    def stft(self, seg: torch.Tensor) -> torch.Tensor:
        """``seg[B, N]`` -> ``complex[B, n_fft // 2 + 1, frames]``."""
        return torch.stft(seg, self.n_fft, self.hop, window=self.window, center=False,
                          return_complex=True)

    def overlap_add(self, spec: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`stft`: ``complex[B, n_fft // 2 + 1, frames]`` -> ``[B, N]``
        (weighted overlap-add, divided by the summed squared window; edge samples covered by
        few frames are only as good as that coverage)."""
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[:, None]
        n = self.samples(spec.shape[-1])
        fold = nn.functional.fold
        y = fold(frames, (1, n), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        ones = self.window.square()[None, :, None].expand(1, -1, spec.shape[-1])
        wsum = fold(ones, (1, n), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        return y / wsum.clamp(min=1e-8)

    @staticmethod
    def db(mag: torch.Tensor) -> torch.Tensor:
        return 20 * torch.log10(mag + MAG_FLOOR)

    def mel(self, mag: torch.Tensor) -> torch.Tensor:
        """``magnitude[B, bins, frames]`` -> ``mel magnitude[B, n_mels, frames]``."""
        return torch.matmul(self.mel_fb, mag)

    def scale(self, db: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """dB ``[B, ..., frames]`` with ``ref[B]`` -> [-1, 1]."""
        ref = ref.reshape(-1, *([1] * (db.dim() - 1)))
        return (2 * (db - ref) / self.range_db + 1).clamp(-1.0, 1.0)

    def unscale_magnitude(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Scaled ``[B, bins, frames]`` -> magnitude: the inverse of ``scale(db(mag))`` minus
        the magnitude of the floor, so that -1 (everything at or below ``ref - range_db``)
        becomes silence instead of a noise floor ``range_db`` under the loudest bin."""
        ref = ref.reshape(-1, *([1] * (x.dim() - 1)))
        level = 10 ** (ref / 20)
        return level * (10 ** ((x - 1) * self.range_db / 40) - 10 ** (-self.range_db / 20))

    @staticmethod
    def reference(db: torch.Tensor) -> torch.Tensor:
        """``[B]``: the loudest value of ``db[B, ...]`` (no gradient), at least MIN_REF_DB."""
        return db.detach().flatten(1).amax(1).clamp(min=MIN_REF_DB)


def continue_phase(spec: torch.Tensor, frames: int, hop: int, n_fft: int) -> torch.Tensor:
    """Phase-vocoder continuation: ``phase[B, F, frames]`` for the ``frames`` frames that
    follow the last frame of ``spec`` (``complex[B, F, >= 2]``), each bin advancing by its
    instantaneous frequency measured between the last two frames."""
    bins = spec.shape[1]
    omega = 2 * math.pi * torch.arange(bins, device=spec.device, dtype=torch.float32) / n_fft
    expected = (omega * hop)[None, :]
    last, before = torch.angle(spec[..., -1]), torch.angle(spec[..., -2])
    deviation = torch.remainder(last - before - expected + math.pi, 2 * math.pi) - math.pi
    advance = expected + deviation  # [B, F]
    steps = torch.arange(1, frames + 1, device=spec.device, dtype=torch.float32)
    return last[..., None] + advance[..., None] * steps


@torch.no_grad()
def griffin_lim_known(view: SpectralView, known: torch.Tensor, free: torch.Tensor,
                      left: torch.Tensor, right: torch.Tensor, mag: torch.Tensor,
                      phase: torch.Tensor, iterations: int) -> torch.Tensor:
    """Griffin-Lim on the unknown frames with the known samples held fixed.

    ``known[B, N]``: the region's samples (whatever is not ``free``), ``free bool[B, N]``: the
    samples to reconstruct; ``left``/``right``: ``complex[B, F, k]`` known frames either side;
    ``mag[B, F, U]``: target magnitudes of the ``U`` unknown frames; ``phase[B, F, U]``: the
    initial phase. Each iteration resynthesises the region, puts the known samples back, and
    keeps the phase of the unknown frames' re-analysis. Returns ``phase[B, F, U]``.
    """
    k = left.shape[-1]
    u = mag.shape[-1]
    for _ in range(iterations):
        y = view.overlap_add(torch.cat([left, torch.polar(mag, phase), right], dim=-1))
        y = torch.where(free, y, known)
        phase = torch.angle(view.stft(y)[..., k : k + u])
    return phase
