"""MP3 compression (encode and decode through a real codec): a deterministic,
non-differentiable preprocessing defense.

A perceptual codec drops what its psychoacoustic model deems inaudible, which is where
imperceptible perturbations live. Proposed as an audio adversarial defense by Das, Shanbhogue,
Chen, Chen, Kounavis & Chau, "ADAGIO: Interactive Experimentation with Adversarial Attack and
Defense for Audio", ECML-PKDD 2018 (MP3 and AMR compression), and studied by Andronic et al.,
"MP3 Compression to Diminish Adversarial Noise in End-to-End Speech Recognition", SPECOM 2020,
and Rajaratnam, Shah & Kalita, ROCLING 2018 (compression among their preprocessing methods).

Codec. libsndfile's MP3 support (LAME to encode, mpg123 to decode) through ``soundfile``,
which the project already depends on, rather than ``lameenc``: lameenc only encodes, so
decoding would need a second library anyway, and soundfile >= 0.13 exposes the constant
bitrate through ``compression_level``/``bitrate_mode``. libsndfile maps a compression level
c in [0, 1] linearly onto [top, bottom] kbps of the MPEG version the sample rate selects
(MPEG-1: 320..32, MPEG-2: 160..8, MPEG-2.5: 64..8) and LAME snaps it to the nearest legal
bitrate; we invert that map. Because the map is libsndfile's, not a documented contract,
``bind`` encodes a probe and checks that the file's size gives the requested bitrate.

Bitrates and rates. MPEG audio only exists at 8, 11.025, 12, 16, 22.05, 24, 32, 44.1 and
48 kHz, each version with its own bitrate set; MPEG-2 Layer III (16 to 24 kHz) allows only
8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144 and 160 kbps. Another rate or bitrate is
a :class:`ConfigError` at ``bind``, listing the legal ones.

Alignment. LAME delays the signal (encoder delay and frame padding) and mpg123 adds its own
decoder delay; when LAME writes its info tag (not at the lowest bitrates, whose frames are too
small for it) mpg123 removes both, otherwise the output is late by ~1105 samples. ``bind``
measures the delay on a probe (cross-correlation peak) for the bound rate and bitrate;
``forward`` drops that many samples and zero-pads the tail, so the output is sample-aligned
with the input and of the same length.

Attack. The codec runs on CPU numpy (one encode/decode per clip: the loop over rows is
unavoidable) and has no gradient, so the defense is declared non-differentiable and attacked
with BPDA (Athalye, Carlini & Wagner, ICML 2018) through :meth:`MP3.surrogate`: the codec's
own per-bin gain at the input being attacked, applied as a fixed linear filter. The surrogate
runs the codec on the input, takes the STFT (Hann, ``SURROGATE_N_FFT`` = 1024, hop 256) of its
output and of the input, and filters the input with ``min(|F(codec(x))| / |F(x)|, 1)`` per
bin and frame (detached): where the codec deletes a band, a masked tonal component or a frame's
quiet partials, the surrogate deletes them too, so its gradient tells the attack not to spend
its budget there; elsewhere it is the identity. A gain the codec raises (its quantisation noise
in a quiet bin) is capped at 1: the attack should not chase the codec's noise. The decoded clip
is kept for the ``forward`` call that BPDA makes next on the same input (used once, compared
sample by sample), so BPDA runs the codec once per step, as the plain forward does.

Measured (``benchmarks/masking_checks.py``, ``musicbench validate mp3``; BPDA fidelity
``‖f(x) − g(x)‖ / ‖f(x) − x‖``, median over clips, 1 for the identity): at 32 kbps 0.37 on the
two m21-styles test clips a run measures on (0.45 over the first 16), where version 1's low-pass
at the codec's measured bandwidth (7.2 kHz) gave 1.00, no closer than the identity (those
clips have almost nothing above 7.2 kHz, while the codec's changes are below it); at 8 kbps
0.67 against 0.92 (still flagged: the codec's noise in the bins it keeps is 14 % of its
output). Against style-cnn (m21-styles
test clips the model gets right through the codec, L-inf 0.002, PGD with BPDA), robust
accuracy at 32 kbps with 50 steps: 32 of 58 clips through this surrogate, 37 of 58 through the
low-pass; at 8 kbps with 20 steps: 36 of 40, against 39 of 40 (and 40 of 40 through the
identity). Better, not decisive: much of the codec's robustness comes from re-quantising the
perturbation, which no surrogate's gradient removes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from musicbench.api import Preprocessor
from musicbench_plugins.defenses._checks import bound_rate, config_error

MPEG1 = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MPEG2 = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
MPEG25 = (8, 16, 24, 32, 40, 48, 56, 64)
BITRATES = {rate: MPEG1 for rate in (32000, 44100, 48000)}
BITRATES |= {rate: MPEG2 for rate in (16000, 22050, 24000)}
BITRATES |= {rate: MPEG25 for rate in (8000, 11025, 12000)}
"""Legal Layer III bitrates (kbps) at each sample rate (ISO 11172-3, 13818-3, MPEG-2.5)."""

MAX_DELAY = 4096
"""Longest codec delay (samples) the alignment probe looks for."""

SURROGATE_N_FFT = 1024
"""STFT size of the surrogate's per-bin gain (64 ms at 16 kHz; MPEG-2 Layer III's long blocks
are 576 lines, 36 ms: no size follows the codec better, 0.45-0.46 over 16 m21-styles clips
at 256 to 2048 samples)."""

SURROGATE_HOP = 256
"""Hop of the surrogate's STFT (a quarter window: Hann overlap-add is exact)."""


@dataclass(frozen=True)
class MP3Params:
    """``bitrate_kbps``: the constant bitrate; it must be one the MPEG version of the model's
    rate allows (checked at bind; 32 kbps is legal at every MPEG rate)."""

    bitrate_kbps: int = 32

    def __post_init__(self) -> None:
        b = self.bitrate_kbps
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"bitrate_kbps must be a positive integer, got {b!r}")


def _compression_level(sample_rate: int, kbps: int) -> float:
    """libsndfile's compression level for ``kbps``: its linear map inverted, aimed half a kbps
    above so that the C truncation to an integer lands on ``kbps`` exactly."""
    legal = BITRATES[sample_rate]
    top, bottom = legal[-1], legal[0]
    return min(max((top - (kbps + 0.5)) / (top - bottom), 0.0), 1.0)


def _codec(clip: np.ndarray, sample_rate: int, level: float) -> tuple[np.ndarray, int]:
    """Encode ``clip[T]`` (float32) to MP3 in memory and decode it: (decoded, file bytes)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, clip, sample_rate, format="MP3", subtype="MPEG_LAYER_III",
             compression_level=level, bitrate_mode="CONSTANT")
    size = buffer.tell()
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32", always_2d=False)
    return decoded, size


def _fit(decoded: np.ndarray, delay: int, length: int) -> np.ndarray:
    """Drop the codec's ``delay`` and zero-pad or cut to ``length`` samples."""
    out = decoded[delay:delay + length]
    if out.shape[0] < length:
        out = np.pad(out, (0, length - out.shape[0]))
    return out


class MP3(Preprocessor):
    """Encode to MP3 at ``bitrate_kbps`` and decode (libsndfile via soundfile), aligned to the
    input; deterministic, non-differentiable (BPDA through the codec's per-bin gain).

    Shape: ``audio[B, T]`` -> ``[B, T]`` on the input's device, float32, clamped to [-1, 1].
    """

    name = "mp3"
    version = "2"  # 2: BPDA through the codec's per-bin gain instead of a low-pass
    differentiable = False
    Params = MP3Params

    delay: int = 0
    """Codec delay in samples at the bound rate and bitrate, measured by :meth:`bind`."""
    bandwidth_hz: float | None = None
    """The codec's measured bandwidth at the bound rate and bitrate (None: the full band)."""

    _decoded: tuple[torch.Tensor, torch.Tensor] | None = None
    """(input, output) of the codec run by :meth:`surrogate`, for the next :meth:`forward`."""

    def bind(self, sample_rate: int) -> None:
        import soundfile as sf

        super().bind(sample_rate)
        kbps = self.params.bitrate_kbps
        if "MP3" not in sf.available_formats():
            raise config_error(self, "bitrate_kbps",
                               f"this libsndfile ({sf.__libsndfile_version__}) was built "
                               "without MP3; install soundfile >= 0.13, whose wheels bundle it")
        if sample_rate not in BITRATES:
            raise config_error(
                self, "bitrate_kbps",
                f"MP3 has no {sample_rate} Hz mode (MPEG rates: "
                f"{', '.join(str(r) for r in sorted(BITRATES))} Hz); use a model at one of them")
        legal = BITRATES[sample_rate]
        if kbps not in legal:
            raise config_error(
                self, "bitrate_kbps",
                f"{kbps} kbps is not an MP3 bitrate at {sample_rate} Hz; choose one of "
                f"{', '.join(map(str, legal))}")
        self._level = _compression_level(sample_rate, kbps)
        self._calibrate(sample_rate, kbps, legal)

    def _calibrate(self, sample_rate: int, kbps: int, legal: tuple[int, ...]) -> None:
        """Measure delay, bitrate and bandwidth of the codec on two seconds of white noise."""
        from scipy.signal import correlate, welch

        probe = (0.1 * np.random.default_rng(0).standard_normal(2 * sample_rate))
        probe = probe.astype(np.float32)
        decoded, size = _codec(probe, sample_rate, self._level)
        measured = size * 8 / 2 / 1000
        if min(legal, key=lambda b: abs(b - measured)) != kbps:
            raise RuntimeError(
                f"asked libsndfile for {kbps} kbps at {sample_rate} Hz but the probe came out "
                f"at {measured:.1f} kbps: its compression-level mapping has changed")
        head = probe[: sample_rate]  # lag k scores sum_n head[n] * decoded[n + k]
        self.delay = int(np.argmax(correlate(decoded[: sample_rate + MAX_DELAY], head,
                                             mode="valid")))
        aligned = _fit(decoded, self.delay, len(probe))
        freqs, before = welch(probe, sample_rate, nperseg=1024)
        _, after = welch(aligned, sample_rate, nperseg=1024)
        passed = np.nonzero(after > 0.5 * before)[0]
        top = float(freqs[passed.max()]) if passed.size else sample_rate / 4
        self.bandwidth_hz = top if top < 0.49 * sample_rate else None

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kept, self._decoded = self._decoded, None
        clips = audio.detach().to("cpu", torch.float32)
        if kept is not None and kept[0].shape == clips.shape and torch.equal(kept[0], clips):
            out = kept[1]  # the surrogate just ran the codec on exactly this input
        else:
            out = self._encode_decode(clips)
        return out.to(audio.device, audio.dtype)

    def _encode_decode(self, clips: torch.Tensor) -> torch.Tensor:
        """``clips[B, T]`` on the CPU -> decoded, aligned, clamped ``[B, T]``."""
        rate, length = bound_rate(self), clips.shape[1]
        out = np.stack([_fit(_codec(clip, rate, self._level)[0], self.delay, length)
                        for clip in clips.numpy()])
        return torch.from_numpy(out).clamp_(-1, 1)

    def surrogate(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, T]`` filtered by the codec's per-bin gain at ``audio`` (detached),
        ``min(|STFT(codec(audio))| / |STFT(audio)|, 1)``: differentiable, linear in the
        audio, close to the codec's output (module docstring); the identity for clips
        shorter than half the STFT window."""
        if audio.shape[1] <= SURROGATE_N_FFT // 2:
            return audio
        clips = audio.detach().to("cpu", torch.float32)
        decoded = self._encode_decode(clips)
        self._decoded = (clips, decoded)
        window = torch.hann_window(SURROGATE_N_FFT, device=audio.device, dtype=audio.dtype)

        def stft(x: torch.Tensor) -> torch.Tensor:
            return torch.stft(x, SURROGATE_N_FFT, SURROGATE_HOP, window=window,
                              return_complex=True)

        with torch.no_grad():
            target = stft(decoded.to(audio.device, audio.dtype)).abs()
            gain = (target / stft(audio.detach()).abs().clamp_min(1e-8)).clamp_(max=1.0)
        return torch.istft(stft(audio) * gain, SURROGATE_N_FFT, SURROGATE_HOP, window=window,
                           length=audio.shape[1])
