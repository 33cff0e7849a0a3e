"""The note synthesizer behind the embedded datasets: deterministic, bounded, in tune."""

from __future__ import annotations

import numpy as np
import pytest

from musicbench_plugins.datasets import synth

SR = 16_000
PHRASE = [
    synth.NoteEvent(0.0, 0.5, 60, 0.7, 0),
    synth.NoteEvent(0.0, 1.0, 64, 0.5, 1),
    synth.NoteEvent(0.5, 0.5, 67.3, 0.9, 0),
    synth.NoteEvent(1.0, 1.5, 43, 1.0, 2),
]


def _render(seed: int, timbre: str = "strings", **kw) -> np.ndarray:
    kw.setdefault("duration", 2.0)
    return synth.render(PHRASE, sample_rate=SR, timbre=timbre, rng=np.random.default_rng(seed),
                        **kw)


@pytest.mark.parametrize("timbre", sorted(synth.TIMBRES))
def test_same_seed_gives_identical_audio(timbre: str) -> None:
    assert np.array_equal(_render(3, timbre), _render(3, timbre))


@pytest.mark.parametrize("timbre", sorted(synth.TIMBRES))
def test_different_seeds_give_different_audio(timbre: str) -> None:
    assert not np.allclose(_render(1, timbre), _render(2, timbre))


@pytest.mark.parametrize("timbre", sorted(synth.TIMBRES))
def test_output_is_float32_finite_and_peak_normalised(timbre: str) -> None:
    y = _render(0, timbre)
    assert y.dtype == np.float32
    assert y.shape == (2 * SR,)
    assert np.isfinite(y).all()
    assert 0.5 - 1e-6 <= np.abs(y).max() <= 0.9 + 1e-6


def test_raw_level_stays_bounded_without_normalisation() -> None:
    y = _render(0, "organ", peak_range=None, room=False)
    assert np.isfinite(y).all() and 0 < np.abs(y).max() < 10


@pytest.mark.parametrize("timbre", sorted(synth.TIMBRES))
def test_a4_spectrum_peaks_at_440_hz(timbre: str) -> None:
    y = synth.render([synth.NoteEvent(0.0, 1.0, 69, 0.8, 0)], sample_rate=SR, timbre=timbre,
                     rng=np.random.default_rng(0), room=False, duration=1.0)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / SR)
    assert abs(freqs[np.argmax(spectrum)] - 440.0) < 5.0


def test_no_energy_above_nyquist_guard_for_a_high_note() -> None:
    # Band-limited tables: a high bright note must not alias into the low band.
    y = synth.render([synth.NoteEvent(0.0, 1.0, 96, 1.0, 0)], sample_rate=SR, timbre="strings",
                     rng=np.random.default_rng(0), room=False, duration=1.0)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size))) ** 2
    freqs = np.fft.rfftfreq(y.size, 1 / SR)
    f0 = float(synth.midi_to_hz(96))
    below = spectrum[freqs < 0.8 * f0].sum()
    assert below < 1e-3 * spectrum.sum()


def test_window_after_start_contains_notes_that_began_earlier() -> None:
    long_note = [synth.NoteEvent(0.0, 3.0, 57, 0.8, 0)]
    y = synth.render(long_note, sample_rate=SR, timbre="organ", rng=np.random.default_rng(0),
                     start=1.0, duration=1.0)
    assert y.shape == (SR,)
    assert np.sqrt(np.mean(y**2)) > 0.1


def test_no_notes_gives_silence_of_the_requested_length() -> None:
    y = synth.render([], sample_rate=SR, timbre="piano", rng=np.random.default_rng(0),
                     duration=0.5)
    assert y.shape == (SR // 2,) and not y.any()


def test_unknown_timbre_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="organ"):
        _render(0, "theremin")
