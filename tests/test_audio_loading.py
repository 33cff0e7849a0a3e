"""``musicbench.audio.load_audio``: one waveform form for every file, a specific reason for
every broken one. Every file is made here, in tmp_path."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicbench.audio import BadAudioError, load_audio
from musicbench.errors import MusicbenchError


def _tone(seconds: float, rate: int, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _write(path: Path, data: np.ndarray, rate: int, **kw) -> Path:
    sf.write(str(path), data, rate, **kw)
    return path


def _bad(path: Path, **kw) -> BadAudioError:
    with pytest.raises(BadAudioError) as info:
        load_audio(path, 16_000, **kw)
    assert isinstance(info.value, MusicbenchError)
    assert str(path) in str(info.value)
    return info.value


# -- good files ----------------------------------------------------------------------------------


def test_stereo_44k1_is_downmixed_and_resampled_to_16k_with_the_tone_kept(tmp_path: Path) -> None:
    n = 44_100 * 2 + 17  # odd length: the output length is ceil(n * 160 / 441)
    t = np.arange(n) / 44_100
    left = 0.6 * np.sin(2 * np.pi * 440.0 * t)
    right = 0.2 * np.sin(2 * np.pi * 440.0 * t)
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], 1), 44_100, subtype="PCM_16")

    audio = load_audio(path, 16_000)

    assert audio.dtype == torch.float32 and audio.dim() == 1
    assert audio.shape[0] == math.ceil(n * 160 / 441)
    spectrum = np.abs(np.fft.rfft(audio.numpy() * np.hanning(audio.shape[0])))
    peak_hz = np.argmax(spectrum) * 16_000 / audio.shape[0]
    assert abs(peak_hz - 440.0) < 1.0
    middle = audio[2000:-2000]
    assert abs(float(middle.abs().max()) - 0.4) < 0.01  # the average of 0.6 and 0.2


def test_downmix_averages_channels_rather_than_taking_the_first(tmp_path: Path) -> None:
    x = _tone(0.5, 16_000)
    path = _write(tmp_path / "phase.wav", np.stack([x, -x], 1), 16_000, subtype="FLOAT")
    assert float(load_audio(path, 16_000).abs().max()) == 0.0


def test_same_rate_is_returned_unchanged(tmp_path: Path) -> None:
    x = _tone(0.25, 16_000)
    path = _write(tmp_path / "mono.wav", x, 16_000, subtype="FLOAT")
    assert torch.equal(load_audio(path, 16_000), torch.from_numpy(x))


@pytest.mark.parametrize("ext,fmt,subtype", [("flac", "FLAC", "PCM_16"), ("au", "AU", "PCM_16"),
                                             ("ogg", "OGG", "VORBIS")])
def test_flac_au_and_ogg_are_read(tmp_path: Path, ext: str, fmt: str, subtype: str) -> None:
    path = _write(tmp_path / f"x.{ext}", _tone(1.0, 22_050), 22_050, format=fmt, subtype=subtype)
    audio = load_audio(path, 16_000)
    assert audio.shape[0] == 16_000 and float(audio.abs().max()) > 0.3


def test_float_file_above_full_scale_is_scaled_not_clipped(tmp_path: Path) -> None:
    x = _tone(0.25, 16_000, amp=2.0)
    path = _write(tmp_path / "hot.wav", x, 16_000, subtype="FLOAT")
    audio = load_audio(path, 16_000)
    assert float(audio.abs().max()) == pytest.approx(1.0)
    np.testing.assert_allclose(audio.numpy(), x / np.abs(x).max(), atol=1e-6)


def test_min_seconds_boundary_is_inclusive(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.wav", _tone(1.0, 22_050), 22_050)
    assert load_audio(path, 16_000, min_seconds=1.0).shape[0] == 16_000


# -- broken files --------------------------------------------------------------------------------


def test_corrupt_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.wav", _tone(0.5, 16_000), 16_000)
    data = bytearray(path.read_bytes())
    data[8:12] = b"XXXX"  # RIFF....WAVE -> RIFF....XXXX
    path.write_bytes(bytes(data))
    exc = _bad(path)
    assert exc.kind == "corrupt" and "corrupt header" in exc.reason


@pytest.mark.parametrize("ext,fmt,subtype", [("wav", "WAV", "PCM_16"), ("au", "AU", "PCM_16"),
                                             ("flac", "FLAC", "PCM_16")])
def test_truncated_data(tmp_path: Path, ext: str, fmt: str, subtype: str) -> None:
    path = _write(tmp_path / f"t.{ext}", _tone(1.0, 16_000), 16_000, format=fmt, subtype=subtype)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    exc = _bad(path)
    assert exc.kind == "truncated" and "truncated" in exc.reason


def test_empty_file_and_header_without_frames(tmp_path: Path) -> None:
    (tmp_path / "zero.wav").write_bytes(b"")
    assert _bad(tmp_path / "zero.wav").reason == "empty file (0 bytes)"
    path = _write(tmp_path / "noframes.wav", np.zeros((0, 1), np.float32), 16_000)
    exc = _bad(path)
    assert exc.kind == "empty" and "0 frames" in exc.reason


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_samples(tmp_path: Path, bad: float) -> None:
    x = _tone(0.5, 16_000)
    x[1234] = bad
    path = _write(tmp_path / "nan.wav", x, 16_000, subtype="FLOAT")
    exc = _bad(path)
    assert exc.kind == "non-finite" and "first at frame 1234" in exc.reason


def test_text_file_with_a_wav_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    exc = _bad(path)
    assert exc.kind == "not-audio" and "not an audio file" in exc.reason


@pytest.mark.parametrize("rate", [4_000, 500_000])
def test_unsupported_sample_rate(tmp_path: Path, rate: int) -> None:
    path = _write(tmp_path / "rate.wav", np.zeros(400, np.float32), rate)
    exc = _bad(path)
    assert exc.kind == "unsupported-rate" and f"{rate} Hz" in exc.reason


def test_too_many_channels(tmp_path: Path) -> None:
    path = _write(tmp_path / "many.wav", np.zeros((400, 9), np.float32), 16_000)
    exc = _bad(path)
    assert exc.kind == "unsupported-channels" and "9" in exc.reason


def test_too_short(tmp_path: Path) -> None:
    path = _write(tmp_path / "short.wav", _tone(0.5, 22_050), 22_050)
    exc = _bad(path, min_seconds=1.0)
    assert exc.kind == "too-short" and "0.500 s < 1 s" in exc.reason


def test_unreadable_paths(tmp_path: Path) -> None:
    # chmod 000 does not stop root, so: a folder with an audio name and a dangling link.
    (tmp_path / "folder.wav").mkdir()
    assert _bad(tmp_path / "folder.wav").kind == "unreadable"
    os.symlink(tmp_path / "gone.wav", tmp_path / "link.wav")
    exc = _bad(tmp_path / "link.wav")
    assert exc.kind == "unreadable" and "dangling" in exc.reason
    assert _bad(tmp_path / "missing.wav").reason == "no such file"


def test_invalid_target_rate_is_a_value_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.wav", _tone(0.1, 16_000), 16_000)
    with pytest.raises(ValueError):
        load_audio(path, 0)
