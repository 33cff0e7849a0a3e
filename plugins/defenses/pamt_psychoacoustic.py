"""PAMT's psychoacoustic perturbation module: noise shaped to a Bark-band masking threshold.

PAMT (Liu et al., "Training a Perceptual Model for Evaluating Auditory Similarity in Music
Adversarial Attack", arXiv 2509.04985, CMMR 2025) perturbs the clean clip with a
"psychoacoustic perturbation module" and feeds its parameters to the projection head; the paper
does not say what the module does (docs/pamt.md, 'The paper'). Our reading: additive noise
shaped to the clip's **simultaneous-masking threshold per critical band**, computed with Johnston's
perceptual model (J. D. Johnston, "Transform coding of audio signals using perceptual noise
criteria", IEEE JSAC 6(2), 1988), per STFT frame:

1. power spectrum of a Hann-windowed STFT, calibrated so that a full-scale sine's peak bin is
   ``spl_full_scale_db`` dB SPL (the convention of ISO/IEC 11172-3 Annex D, MPEG-1
   psychoacoustic model 1: 96 dB);
2. energy per critical band, with Zwicker's band edges (E. Zwicker, "Subdivision of the audible
   frequency range into critical bands", JASA 33, 1961): band i spans Bark i .. i + 1;
3. spreading across bands with the Schroeder spreading function (M. R. Schroeder, B. S. Atal,
   J. L. Hall, "Optimizing digital speech coders by exploiting masking properties of the human
   ear", JASA 66(6), 1979): ``SF(dz) = 15.81 + 7.5 (dz + 0.474) - 17.5 sqrt(1 + (dz +
   0.474)^2)`` dB, ``dz`` = maskee band - masker band (Bark), then Johnston's renormalisation
   (divided by the spreading gain of a flat spectrum);
4. tonality-dependent offset (Johnston): spectral flatness ``SFM = 10 log10(geometric mean /
   arithmetic mean)`` of the power spectrum, tonality ``alpha = min(SFM / sfm_max_db, 1)``,
   offset ``O_i = alpha (14.5 + i) + (1 - alpha) 5.5`` dB for band number i = 1, 2, ...
   (tone-masking-noise vs noise-masking-tone);
5. the absolute threshold of hearing (E. Terhardt, "Calculating virtual pitch", Hearing
   Research 1, 1979: ``3.64 f^-0.8 - 6.5 exp(-0.6 (f - 3.3)^2) + 1e-3 f^4`` dB SPL, f in kHz)
   as a floor: per band, its lowest value over the band's bins, times the band's bin count.

The noise: white Gaussian noise filtered in the same STFT domain so that, per frame and per
selected band, its energy is the threshold times ``10^(level_db / 10)`` (spread evenly over
the band's bins, as Johnston's model spreads a band's threshold), resynthesised, and kept only
inside the time span ``[start, start + length)`` seconds. Perturbation parameters: level
relative to threshold (dB), which bands, the time span; :meth:`Perturbation.vector` is what
PAMT's parameter encoder (PPE) sees.

Every choice the papers leave open is a field of :class:`MaskingModel` or
:class:`PerturbationSpace`. Not differentiable by design (the threshold is computed under
``torch.no_grad``); batched; all randomness from the generator the caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ZWICKER_BAND_EDGES_HZ: tuple[float, ...] = (
    0, 100, 200, 300, 400, 510, 630, 770, 920, 1080, 1270, 1480, 1720, 2000, 2320, 2700,
    3150, 3700, 4400, 5300, 6400, 7700, 9500, 12000, 15500)
"""Critical-band edges (Zwicker 1961): 24 bands, band i spanning Bark i .. i + 1."""


@dataclass(frozen=True)
class MaskingModel:
    """The masking-threshold model (Johnston 1988 with the Schroeder spreading function).

    - ``sample_rate``: of the audio (Hz); bands above Nyquist are dropped, the last one cut.
    - ``n_fft``, ``hop``: STFT of the analysis and of the noise shaping (Hann window, centred
      frames). 512 / 256 at 16 kHz: 32 ms frames, 31.25 Hz bins (band 0 holds 4 bins).
    - ``spl_full_scale_db``: SPL of a full-scale sine (MPEG-1 model 1: 96 dB); it places the
      absolute threshold of hearing relative to the digital level (playback level unknown).
    - ``sfm_max_db``: SFM of a pure tone for the tonality index (Johnston: -60 dB).
    - ``tone_offset_base_db``, ``noise_offset_db``: Johnston's offsets, ``14.5 + i`` dB below
      a tonal masker, 5.5 dB below a noise masker.
    - ``tonality``: ``"frame"`` (one SFM per frame over all bins, as Johnston) or ``"band"``
      (an SFM per band: a tone in one band and noise in another each get their own offset).
    - ``renormalize_spreading``: divide the spread energy by the spreading gain of a flat
      spectrum (Johnston), so spreading does not add energy.
    - ``absolute_threshold``: floor the threshold by the absolute threshold of hearing.
    - ``band_edges_hz``: critical-band edges.
    """

    sample_rate: int = 16_000
    n_fft: int = 512
    hop: int = 256
    spl_full_scale_db: float = 96.0
    sfm_max_db: float = -60.0
    tone_offset_base_db: float = 14.5
    noise_offset_db: float = 5.5
    tonality: Literal["frame", "band"] = "frame"
    renormalize_spreading: bool = True
    absolute_threshold: bool = True
    band_edges_hz: tuple[float, ...] = ZWICKER_BAND_EDGES_HZ

    def __post_init__(self) -> None:
        if self.n_fft < 16 or self.hop < 1 or self.hop > self.n_fft:
            raise ValueError(f"need n_fft >= 16 and 1 <= hop <= n_fft, got {self.n_fft}, "
                             f"{self.hop}")
        if self.sfm_max_db >= 0:
            raise ValueError(f"sfm_max_db must be negative, got {self.sfm_max_db}")
        if self.tonality not in ("frame", "band"):
            raise ValueError(f"tonality must be 'frame' or 'band', got {self.tonality!r}")
        edges = self.band_edges_hz
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] != 0:
            raise ValueError(f"band_edges_hz must rise from 0, got {edges}")
        if self.n_bands < 1:
            raise ValueError(f"no critical band below Nyquist ({self.sample_rate / 2} Hz)")
        if int(self.band_matrix().sum(0).min()) < 1:
            raise ValueError(f"n_fft {self.n_fft} at {self.sample_rate} Hz leaves a critical "
                             "band without an FFT bin; use a larger n_fft")

    @property
    def n_bands(self) -> int:
        """Bands whose lower edge lies below Nyquist."""
        return sum(1 for lo in self.band_edges_hz[:-1] if lo < self.sample_rate / 2)

    def bin_frequencies(self) -> torch.Tensor:
        """``[bins]`` centre frequency of each rfft bin (Hz), float64."""
        return torch.arange(self.n_fft // 2 + 1, dtype=torch.float64) * self.sample_rate \
            / self.n_fft

    def band_matrix(self) -> torch.Tensor:
        """``[bins, bands]`` 0/1 float64: bin k belongs to band b (the top band takes every bin
        up to Nyquist)."""
        f = self.bin_frequencies()
        edges = torch.tensor(self.band_edges_hz[: self.n_bands + 1], dtype=torch.float64)
        band = torch.bucketize(f, edges, right=True) - 1
        band = band.clamp(0, self.n_bands - 1)
        return torch.nn.functional.one_hot(band, self.n_bands).double()

    def spreading_matrix(self) -> torch.Tensor:
        """``[maskee bands, masker bands]`` linear power gains of the Schroeder function."""
        i = torch.arange(self.n_bands, dtype=torch.float64)
        dz = i[:, None] - i[None, :] + 0.474
        return 10 ** ((15.81 + 7.5 * dz - 17.5 * torch.sqrt(1 + dz**2)) / 10)

    def window(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64, device=device)

    def power_scale(self) -> float:
        """Multiplier from ``|STFT|^2`` to SPL-calibrated power (a full-scale sine on a bin
        centre reads ``spl_full_scale_db``)."""
        ref = float(self.window().sum()) ** 2 / 4  # |X|^2 at the peak of a unit sine
        return 10 ** (self.spl_full_scale_db / 10) / ref


def absolute_threshold_db(freq_hz: torch.Tensor) -> torch.Tensor:
    """Terhardt's (1979) absolute threshold of hearing in dB SPL; ``freq_hz`` any shape (clamped
    to >= 20 Hz, where the formula is still meaningful)."""
    f = freq_hz.clamp_min(20.0) / 1000
    return 3.64 * f ** -0.8 - 6.5 * torch.exp(-0.6 * (f - 3.3) ** 2) + 1e-3 * f**4


def stft(audio: torch.Tensor, model: MaskingModel) -> torch.Tensor:
    """``audio[B, T]`` -> complex ``[B, bins, frames]`` (float64, Hann, centred frames)."""
    return torch.stft(audio.double(), model.n_fft, model.hop,
                      window=model.window(audio.device), center=True, return_complex=True)


def band_energy(audio: torch.Tensor, model: MaskingModel) -> torch.Tensor:
    """``audio[B, T]`` -> SPL-calibrated energy per band ``[B, frames, bands]`` (float64)."""
    power = stft(audio, model).abs().square().transpose(1, 2) * model.power_scale()
    return power @ model.band_matrix().to(audio.device)


@torch.no_grad()
def masking_threshold(audio: torch.Tensor, model: MaskingModel) -> torch.Tensor:
    """Simultaneous-masking threshold of ``audio[B, T]`` (in [-1, 1], at
    ``model.sample_rate``) per STFT frame and critical band: ``[B, frames, bands]`` float64,
    in the units of :func:`band_energy` (energy a noise in that band may have, summed over the
    band's bins). See the module docstring for the steps."""
    if audio.dim() != 2:
        raise ValueError(f"masking_threshold takes audio[B, T], got {tuple(audio.shape)}")
    device = audio.device
    power = stft(audio, model).abs().square().transpose(1, 2) * model.power_scale()
    bands = model.band_matrix().to(device)  # [bins, bands]
    counts = bands.sum(0)  # [bands]
    energy = power @ bands  # [B, frames, bands]
    spread = model.spreading_matrix().to(device)
    spread_energy = energy @ spread.T
    if model.renormalize_spreading:
        spread_energy = spread_energy / spread.sum(1)
    floor = 10 ** (-10 / 10)  # -10 dB SPL per bin: below hearing, keeps logs finite
    log_power = torch.log10(power + floor)
    if model.tonality == "frame":
        geo = log_power.mean(-1, keepdim=True)
        arith = torch.log10(power.mean(-1, keepdim=True) + floor)
    else:
        geo = (log_power @ bands) / counts
        arith = torch.log10((power @ bands) / counts + floor)
    sfm_db = 10 * (geo - arith)  # <= 0
    alpha = (sfm_db / model.sfm_max_db).clamp(0, 1)
    number = torch.arange(1, model.n_bands + 1, dtype=torch.float64, device=device)
    offset = alpha * (model.tone_offset_base_db + number) + (1 - alpha) * model.noise_offset_db
    threshold = spread_energy * 10 ** (-offset / 10)
    if model.absolute_threshold:
        ath = absolute_threshold_db(model.bin_frequencies().to(device))  # [bins]
        per_band = torch.where(bands > 0, ath[:, None], torch.inf).amin(0)  # [bands]
        threshold = torch.maximum(threshold, counts * 10 ** (per_band / 10))
    return threshold


@dataclass
class Perturbation:
    """Parameters of one perturbation per clip.

    Shapes: ``level_db[B]`` (noise energy relative to the masking threshold, dB),
    ``bands bool[B, n_bands]`` (bands that get noise), ``start[B]``, ``length[B]`` (seconds:
    the time span with noise). ``duration`` is the clip length in seconds.
    """

    level_db: torch.Tensor
    bands: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    duration: float

    LEVEL_SCALE_DB = 10.0
    """``vector`` divides the level by this, so its entries are O(1)."""

    def vector(self) -> torch.Tensor:
        """``[B, 3 + n_bands]`` float32: ``level_db / 10``, ``start / duration``, ``length /
        duration``, then the band mask (0/1): the input of PAMT's parameter encoder."""
        return torch.cat([
            (self.level_db / self.LEVEL_SCALE_DB)[:, None],
            (self.start / self.duration)[:, None],
            (self.length / self.duration)[:, None],
            self.bands.to(self.level_db.dtype)], dim=1).float()


def vector_size(model: MaskingModel) -> int:
    """Length of :meth:`Perturbation.vector` for ``model``."""
    return 3 + model.n_bands


@torch.no_grad()
def shaped_noise(audio: torch.Tensor, perturbation: Perturbation, model: MaskingModel,
                 generator: torch.Generator) -> torch.Tensor:
    """Noise ``[B, T]`` (float32) shaped to ``audio[B, T]``'s masking threshold: in each frame
    and selected band, energy ``threshold * 10^(level_db / 10)``; zero outside the bands and
    outside ``[start, start + length)``. Draws ``B * T`` normals from ``generator`` (on its
    device)."""
    b, t = audio.shape
    device = audio.device
    threshold = masking_threshold(audio, model)  # [B, frames, bands]
    bands = model.band_matrix().to(device)
    counts = bands.sum(0)
    gain_db = perturbation.level_db.to(device, torch.float64)[:, None, None]
    selected = perturbation.bands.to(device)[:, None, :].double()
    per_bin = (threshold * 10 ** (gain_db / 10) * selected / counts) @ bands.T  # [B, fr, bins]
    window = model.window(device)
    # white noise of unit variance has E|X_k|^2 = sum(w^2) in every bin
    gain = torch.sqrt(per_bin / model.power_scale() / window.square().sum())
    white = torch.randn(b, t, generator=generator, device=generator.device,
                        dtype=torch.float64).to(device)
    spec = stft(white, model) * gain.transpose(1, 2)
    noise = torch.istft(spec, model.n_fft, model.hop, window=window, center=True, length=t)
    time = torch.arange(t, device=device, dtype=torch.float64) / model.sample_rate
    start = perturbation.start.to(device, torch.float64)[:, None]
    end = start + perturbation.length.to(device, torch.float64)[:, None]
    return (noise * ((time >= start) & (time < end))).float()


@dataclass(frozen=True)
class PerturbationSpace:
    """How perturbation parameters are drawn per clip (the paper publishes none of this).

    - ``level_db``: level relative to the masking threshold, uniform on this range (dB):
      below 0 the noise should be inaudible, above it increasingly audible.
    - ``min_bands``, ``max_bands``: a contiguous run of this many bands (uniform count, uniform
      position); ``max_bands = 0`` means all bands.
    - ``span_fraction``: the time span's length as a fraction of the clip, uniform on this
      range; its start uniform over the rest.
    - ``clamp``: clip the perturbed audio to [-1, 1].
    """

    level_db: tuple[float, float] = (-20.0, 20.0)
    min_bands: int = 1
    max_bands: int = 0
    span_fraction: tuple[float, float] = (0.25, 1.0)
    clamp: bool = True

    def __post_init__(self) -> None:
        if not self.level_db[0] <= self.level_db[1]:
            raise ValueError(f"level_db must be (low, high), got {self.level_db}")
        if self.min_bands < 1 or self.max_bands < 0 or (
                self.max_bands and self.max_bands < self.min_bands):
            raise ValueError(f"need 1 <= min_bands <= max_bands (or max_bands 0), got "
                             f"{self.min_bands}, {self.max_bands}")
        lo, hi = self.span_fraction
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"span_fraction must satisfy 0 < low <= high <= 1, got "
                             f"{self.span_fraction}")


class PsychoacousticPerturbation:
    """Draws perturbation parameters and applies threshold-shaped noise.

    ``perturb(audio[B, T], generator) -> (perturbed[B, T], Perturbation)``; ``apply`` takes
    given parameters. Parameters are drawn on the CPU from ``generator``'s stream (noise on the
    generator's device), so one seed gives one perturbation.
    """

    def __init__(self, model: MaskingModel | None = None,
                 space: PerturbationSpace | None = None):
        self.model = model or MaskingModel()
        self.space = space or PerturbationSpace()
        if self.space.max_bands > self.model.n_bands or self.space.min_bands > \
                self.model.n_bands:
            raise ValueError(f"the model has {self.model.n_bands} bands; the space asks for "
                             f"{self.space.min_bands}..{self.space.max_bands}")

    def sample(self, batch: int, samples: int, generator: torch.Generator) -> Perturbation:
        """Parameters for ``batch`` clips of ``samples`` samples (tensors on the CPU)."""
        s, n = self.space, self.model.n_bands
        duration = samples / self.model.sample_rate

        def uniform(lo: float, hi: float) -> torch.Tensor:
            u = torch.rand(batch, generator=generator, device=generator.device).cpu()
            return lo + (hi - lo) * u.double()

        level = uniform(*s.level_db)
        hi = s.max_bands or n
        count = (s.min_bands + uniform(0, 1) * (hi - s.min_bands + 1)).floor().long()
        count = count.clamp(s.min_bands, hi)
        first = (uniform(0, 1) * (n - count + 1)).floor().long().clamp_min(0)
        idx = torch.arange(n)
        bands = (idx >= first[:, None]) & (idx < (first + count)[:, None])
        length = uniform(*s.span_fraction) * duration
        start = uniform(0, 1) * (duration - length)
        return Perturbation(level, bands, start, length, duration)

    def apply(self, audio: torch.Tensor, perturbation: Perturbation,
              generator: torch.Generator) -> torch.Tensor:
        """``audio[B, T]`` plus its shaped noise (clamped to [-1, 1] if ``space.clamp``)."""
        out = audio + shaped_noise(audio, perturbation, self.model, generator).to(audio.dtype)
        return out.clamp(-1, 1) if self.space.clamp else out

    def perturb(self, audio: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, Perturbation]:
        """Draw parameters, then apply them: ``(perturbed[B, T], Perturbation)``."""
        if audio.dim() != 2:
            raise ValueError(f"perturb takes audio[B, T], got {tuple(audio.shape)}")
        p = self.sample(audio.shape[0], audio.shape[1], generator)
        return self.apply(audio, p, generator), p

