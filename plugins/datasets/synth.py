"""A small deterministic synthesizer that turns note events into 16 kHz-style mono audio.

Used by the embedded datasets (``m21-styles``, ``m21-covers``) to render symbolic music from the
music21 corpus without downloading any samples. Everything is numpy; randomness comes only from
the ``numpy.random.Generator`` passed to :func:`render`, so the same notes, timbre and generator
state always give the same samples on the same platform.

How a note is made (all vectorised over the note's samples, no per-sample Python loop):

* **Oscillator** - wavetable lookup with a continuous phase. Each timbre defines a harmonic
  spectrum; one single-cycle table is built per (timbre, pitch band, sample rate) with every
  harmonic above ~0.45 x sample rate removed, so no table aliases in its band. Two tables per
  timbre: a *bright* and a *dark* spectrum. Sustained timbres mix them by velocity (louder is
  brighter); decaying timbres cross-fade from bright to dark over time (high partials die first).
* **Envelope** - ADSR (sustained timbres) or exponential decay with a damper release (plucked
  and piano-like timbres); decay time shortens with pitch.
* **Vibrato** - delayed sinusoidal pitch modulation (strings, flute), random rate and phase.
* **Breath** - band-passed noise following the note envelope (flute).
* **Room** - the dry mix convolved with a short synthetic impulse response: seeded white noise
  under an exponential decay (RT60 0.15-0.8 s), gently low-passed (air absorption), after a
  short pre-delay; mixed in at a random wet level.
* **Level** - the clip is scaled to a random peak in ``peak_range`` so it stays in [-1, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: Bump whenever rendered samples would change for the same inputs (datasets hash it into
#: their cache keys).
SYNTH_VERSION = "1"

_TABLE_SIZE = 4096
#: Pitch bands (in semitones) that share one band-limited wavetable.
_BAND_SEMITONES = 3.0
#: Highest harmonic frequency kept, as a fraction of the sample rate (Nyquist is 0.5).
_MAX_HARMONIC_FRACTION = 0.45
_MAX_HARMONICS = 512


class NoteEvent(NamedTuple):
    """One note: ``onset`` and ``duration`` in seconds, ``pitch`` in MIDI semitones (float ok,
    69 = A4 = 440 Hz), ``velocity`` in [0, 1], ``voice`` a small non-negative part index."""

    onset: float
    duration: float
    pitch: float
    velocity: float
    voice: int = 0


@dataclass(frozen=True)
class Timbre:
    """How one instrument sounds.

    Spectra are amplitude-per-harmonic functions of (harmonic number ``k`` >= 1, harmonic
    frequency in Hz). ``decay`` > 0 makes the timbre percussive: amplitude ``exp(-t / tau)``
    with ``tau = decay * 2 ** (-(pitch - 60) / 24)`` seconds, and the spectrum cross-fades from
    bright to dark with time constant ``bright_decay * tau``.
    """

    name: str
    bright: str
    dark: str
    attack: float  # seconds
    decay_time: float  # ADSR decay, seconds
    sustain: float  # ADSR sustain level, 0..1
    release: float  # seconds after note-off
    decay: float = 0.0  # percussive decay time constant at middle C, seconds (0 = sustained)
    bright_decay: float = 0.25
    vibrato_cents: float = 0.0
    vibrato_delay: float = 0.2  # seconds before vibrato fades in
    breath: float = 0.0  # breath-noise level relative to the tone
    gain: float = 1.0  # rough loudness equalisation between timbres


def _spectrum(kind: str, k: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Harmonic amplitudes ``float64[K]`` for harmonic numbers ``k`` at frequencies ``f`` (Hz)."""
    odd = (k % 2) == 1
    if kind == "organ":
        # Drawbar-like registration: 8', 4', 2 2/3', 2', 1 3/5', 1 1/3', 1'.
        amps = {1: 1.0, 2: 0.75, 3: 0.45, 4: 0.4, 5: 0.12, 6: 0.2, 8: 0.15}
        return np.array([amps.get(int(i), 0.0) for i in k])
    if kind == "organ-dark":
        amps = {1: 1.0, 2: 0.5, 3: 0.2, 4: 0.15}
        return np.array([amps.get(int(i), 0.0) for i in k])
    if kind == "saw":
        # Bowed string: sawtooth with a gentle 2nd-order low-pass around 3.5 kHz.
        return (1.0 / k) / np.sqrt(1.0 + (f / 3500.0) ** 4)
    if kind == "saw-dark":
        return (1.0 / k) / np.sqrt(1.0 + (f / 1500.0) ** 4)
    if kind == "flute":
        return np.where(k == 1, 1.0, np.where(k == 2, 0.22, np.where(k == 3, 0.08, 0.03 / k)))
    if kind == "flute-dark":
        return np.where(k == 1, 1.0, np.where(k == 2, 0.1, 0.0))
    if kind == "clarinet":
        # Closed-pipe reed: odd harmonics dominate, weak even ones, low-passed.
        return np.where(odd, 1.0 / k, 0.08 / k) / np.sqrt(1.0 + (f / 2500.0) ** 4)
    if kind == "clarinet-dark":
        return np.where(odd, 1.0 / k**1.5, 0.03 / k) / np.sqrt(1.0 + (f / 1200.0) ** 4)
    if kind == "piano":
        return k**-1.1 / np.sqrt(1.0 + (f / 5000.0) ** 4)
    if kind == "piano-dark":
        return k**-2.5
    if kind == "harp":
        # Plucked near the middle-ish of the string: every 5th harmonic is weak.
        return np.where(k % 5 == 0, 0.1, 1.0) * k**-1.4 / np.sqrt(1.0 + (f / 6000.0) ** 4)
    if kind == "harp-dark":
        return np.where(k == 1, 1.0, 0.15 * k**-2.0)
    raise ValueError(f"unknown spectrum {kind!r}")


#: The timbres a clip can be rendered with (names are stable: datasets record them in meta).
TIMBRES: dict[str, Timbre] = {
    t.name: t
    for t in (
        Timbre("organ", "organ", "organ-dark", attack=0.015, decay_time=0.05, sustain=0.9,
               release=0.08, gain=0.6),
        Timbre("strings", "saw", "saw-dark", attack=0.08, decay_time=0.1, sustain=0.85,
               release=0.18, vibrato_cents=14.0, vibrato_delay=0.15, gain=1.0),
        Timbre("flute", "flute", "flute-dark", attack=0.05, decay_time=0.08, sustain=0.8,
               release=0.1, vibrato_cents=18.0, vibrato_delay=0.2, breath=0.06, gain=1.0),
        Timbre("clarinet", "clarinet", "clarinet-dark", attack=0.03, decay_time=0.06,
               sustain=0.85, release=0.07, vibrato_cents=3.0, vibrato_delay=0.3, gain=1.0),
        Timbre("piano", "piano", "piano-dark", attack=0.003, decay_time=0.0, sustain=1.0,
               release=0.12, decay=1.6, bright_decay=0.2, gain=1.0),
        Timbre("harp", "harp", "harp-dark", attack=0.002, decay_time=0.0, sustain=1.0,
               release=0.35, decay=0.9, bright_decay=0.3, gain=1.0),
    )
}


def midi_to_hz(pitch: np.ndarray | float) -> np.ndarray | float:
    """Frequency in Hz of MIDI pitch(es) (69 = A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69.0) / 12.0)


@functools.lru_cache(maxsize=1024)
def _wavetable(spectrum: str, band: int, sample_rate: int) -> np.ndarray:
    """Single-cycle table ``float64[_TABLE_SIZE + 1]`` (last sample repeats the first, for
    interpolation) for notes in pitch ``band``; harmonics that would exceed
    ``_MAX_HARMONIC_FRACTION * sample_rate`` at the band's top pitch (plus vibrato) are dropped.
    The table's fundamental has amplitude 1 so timbres keep comparable loudness."""
    top_hz = float(midi_to_hz((band + 1) * _BAND_SEMITONES)) * 1.02
    n_harm = int(np.floor(_MAX_HARMONIC_FRACTION * sample_rate / top_hz))
    n_harm = min(_MAX_HARMONICS, max(1, n_harm))
    k = np.arange(1, n_harm + 1, dtype=np.float64)
    centre_hz = float(midi_to_hz((band + 0.5) * _BAND_SEMITONES))
    amps = _spectrum(spectrum, k, k * centre_hz)
    coeffs = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)
    # Sine phase for every harmonic: irfft of -i*A/2*N gives sum A_k sin(2 pi k x).
    coeffs[1 : n_harm + 1] = -0.5j * amps * _TABLE_SIZE
    table = np.fft.irfft(coeffs, n=_TABLE_SIZE)
    table = table / max(amps[0], 1e-9)
    return np.append(table, table[0])


def _lookup(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Linear-interpolated table read at ``phase`` (cycles, any real value) -> same shape."""
    pos = (phase % 1.0) * _TABLE_SIZE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] + frac * (table[i + 1] - table[i])


def _envelope(t: np.ndarray, duration: float, pitch: float, timbre: Timbre) -> np.ndarray:
    """Amplitude envelope ``float64[n]`` at times ``t`` (s from note onset)."""
    if timbre.decay > 0:
        tau = timbre.decay * 2.0 ** (-(pitch - 60.0) / 24.0)
        body = np.exp(-t / tau) * np.minimum(1.0, t / max(timbre.attack, 1e-4))
        level_off = np.exp(-duration / tau)
    else:
        a, d, s = timbre.attack, timbre.decay_time, timbre.sustain
        xs = [0.0, a, a + d] if d > 0 else [0.0, a]
        ys = [0.0, 1.0, s] if d > 0 else [0.0, 1.0]
        body = np.interp(t, xs, ys)
        level_off = float(np.interp(duration, xs, ys))
    # Linear release from the level reached at note-off; the release starts at `duration`.
    after = level_off * np.clip(1.0 - (t - duration) / timbre.release, 0.0, 1.0)
    return np.where(t < duration, body, after)


def _note(
    event: NoteEvent,
    timbre: Timbre,
    sample_rate: int,
    rng: np.random.Generator,
    detune_cents: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one note from its onset: ``(tone float64[n], breath float64[n] | None)`` where
    ``n`` covers the note plus its release."""
    length = event.duration + timbre.release
    n = max(1, int(round(length * sample_rate)))
    t = np.arange(n, dtype=np.float64) / sample_rate
    pitch = float(event.pitch) + detune_cents / 100.0
    f0 = float(midi_to_hz(pitch))
    start_phase = rng.random()
    if timbre.vibrato_cents > 0:
        rate = rng.uniform(4.5, 6.5)
        vib_phase = rng.uniform(0.0, 2.0 * np.pi)
        ramp = np.clip((t - timbre.vibrato_delay) / 0.3, 0.0, 1.0)
        cents = timbre.vibrato_cents * ramp * np.sin(2.0 * np.pi * rate * t + vib_phase)
        freq = f0 * 2.0 ** (cents / 1200.0)
        phase = start_phase + np.cumsum(freq) / sample_rate
    else:
        phase = start_phase + f0 * t
    band = int(np.floor(pitch / _BAND_SEMITONES))
    bright = _lookup(_wavetable(timbre.bright, band, sample_rate), phase)
    dark = _lookup(_wavetable(timbre.dark, band, sample_rate), phase)
    vel = float(np.clip(event.velocity, 0.0, 1.0))
    if timbre.decay > 0:
        tau = timbre.bright_decay * timbre.decay * 2.0 ** (-(pitch - 60.0) / 24.0)
        w = np.exp(-t / tau) * (0.5 + 0.5 * vel)
    else:
        w = 0.35 + 0.65 * vel
    env = _envelope(t, event.duration, pitch, timbre)
    # Loudness grows faster than linearly with velocity (roughly 30 dB over the range).
    amp = timbre.gain * (0.03 + 0.97 * vel**1.5)
    tone = amp * env * (w * bright + (1.0 - w) * dark)
    breath = None
    if timbre.breath > 0:
        breath = timbre.breath * amp * env * rng.standard_normal(n)
    return tone, breath


def _room_ir(sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A synthetic room impulse response ``float64[L]`` (unit energy) and its wet gain."""
    from scipy.signal import lfilter

    rt60 = rng.uniform(0.15, 0.8)
    predelay = rng.uniform(0.004, 0.02)
    wet = rng.uniform(0.08, 0.3)
    length = int((predelay + rt60) * sample_rate)
    t = np.arange(length, dtype=np.float64) / sample_rate
    ir = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    # One-pole low-pass: the tail of a real room is darker than white noise.
    cutoff = rng.uniform(2000.0, 6000.0)
    a = float(np.exp(-2.0 * np.pi * cutoff / sample_rate))
    ir = lfilter([1.0 - a], [1.0, -a], ir)
    ir[: int(predelay * sample_rate)] = 0.0
    ir /= np.sqrt(np.sum(ir**2)) + 1e-12
    return ir, wet


def render(
    notes: Sequence[NoteEvent] | Sequence[tuple[float, float, float, float, int]],
    *,
    sample_rate: int,
    timbre: str,
    rng: np.random.Generator,
    start: float = 0.0,
    duration: float | None = None,
    room: bool = True,
    peak_range: tuple[float, float] | None = (0.5, 0.9),
) -> np.ndarray:
    """Render note events to mono audio.

    Args:
        notes: events ``(onset s, duration s, MIDI pitch, velocity 0..1, voice)``; onsets may
            lie before ``start`` (such notes sound into the window, e.g. their release).
        sample_rate: output rate in Hz.
        timbre: a key of :data:`TIMBRES`.
        rng: the only source of randomness (phases, vibrato, breath noise, room, level, voice
            detune); consumed in a fixed order, so equal state gives equal output.
        start: time (s) of the first output sample.
        duration: output length in seconds; ``None`` renders until every note and the room
            tail have died away.
        room: convolve with a random short room impulse response. Material from up to 1 s
            before ``start`` is rendered so the room tail entering the window is present.
        peak_range: scale the output to a peak drawn uniformly from this range; ``None`` keeps
            the raw level (which may exceed 1).

    Returns:
        ``float32[round(duration * sample_rate)]`` audio; all zeros if nothing sounds.
    """
    if timbre not in TIMBRES:
        raise ValueError(f"unknown timbre {timbre!r}; choose one of {sorted(TIMBRES)}")
    spec = TIMBRES[timbre]
    ev = [NoteEvent(*map(float, e[:4]), int(e[4]) if len(e) > 4 else 0) for e in notes]
    pre = 1.0 if room else 0.0
    if duration is None:
        end = max((e.onset + e.duration for e in ev), default=start) + spec.release
        duration = max(0.0, end - start) + (0.9 if room else 0.0)
    n_out = int(round(duration * sample_rate))
    origin = start - pre
    n_buf = n_out + int(round(pre * sample_rate))
    # Random per-clip choices are drawn first and in a fixed order (reproducibility).
    n_voices = max((e.voice for e in ev), default=0) + 1
    detune = rng.normal(0.0, 3.0, size=n_voices)  # cents: ensembles are never exactly in tune
    voice_gain = 10.0 ** (rng.uniform(-2.0, 2.0, size=n_voices) / 20.0)
    ir, wet = _room_ir(sample_rate, rng) if room else (None, 0.0)
    peak = rng.uniform(*peak_range) if peak_range is not None else None

    buf = np.zeros(n_buf, dtype=np.float64)
    noise = np.zeros(n_buf, dtype=np.float64) if spec.breath > 0 else None
    for e in ev:
        if e.duration <= 0 or e.onset >= start + duration:
            continue
        if e.onset + e.duration + spec.release <= origin:
            continue
        tone, breath = _note(e, spec, sample_rate, rng, detune[e.voice])
        tone *= voice_gain[e.voice]
        i0 = int(round((e.onset - origin) * sample_rate))
        lo, hi = max(i0, 0), min(i0 + tone.size, n_buf)
        if hi <= lo:
            continue
        buf[lo:hi] += tone[lo - i0 : hi - i0]
        if noise is not None and breath is not None:
            noise[lo:hi] += breath[lo - i0 : hi - i0] * voice_gain[e.voice]
    if noise is not None:
        from scipy.signal import butter, sosfilt

        sos = butter(2, [1200.0, min(6000.0, 0.45 * sample_rate)], btype="band", fs=sample_rate,
                     output="sos")
        buf += sosfilt(sos, noise)
    if ir is not None:
        from scipy.signal import fftconvolve

        buf = buf + wet * fftconvolve(buf, ir)[:n_buf]
    out = buf[n_buf - n_out :]
    top = float(np.max(np.abs(out))) if out.size else 0.0
    if peak is not None and top > 0:
        out = out * (peak / top)
    return out.astype(np.float32)
