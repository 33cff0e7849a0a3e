"""`musicbench attack IN --model M --attack A -o OUT`: one file, any rate, written back."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from conftest import cli


def _stereo(path, rate: int, seconds: float = 0.4) -> None:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)
    sf.write(str(path), np.stack([x, 0.5 * x], 1).astype(np.float32), rate)


def test_a_file_round_trips_at_its_own_rate(tmp_path, toy_site):
    source, out = tmp_path / "in.wav", tmp_path / "adv.wav"
    _stereo(source, 22_050)
    proc = cli("attack", str(source), "--model", "toy-model", "--attack", "pgd", "-p", "eps=0.05",
               "--defense", "toy-noise", "-o", str(out), "--device", "cpu", sites=(toy_site,))
    assert proc.returncode == 0, proc.stderr
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (22_050, 1, int(0.4 * 22_050))
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("clean: model says") and lines[1].startswith("adversarial:")
    assert "LSD" in lines[2] and "defense attacked with: eot" in lines[2]
    assert "of 11 draws of the randomized defense" in lines[1] or "not fooled" in lines[1]
    assert lines[3].startswith(f"wrote {out} at 22050 Hz")
    written = sf.read(str(out))[0]
    clean = 0.75 * (0.3 * np.sin(2 * np.pi * 440 * np.arange(len(written)) / 22_050))
    assert np.abs(written).max() <= 1.0 and not np.allclose(written, clean, atol=1e-6)


def test_a_retrieval_model_or_a_bad_file_is_a_clear_error(tmp_path, toy_site):
    source = tmp_path / "in.wav"
    _stereo(source, 16_000)
    proc = cli("attack", str(source), "--model", "toy-embedder", "--attack", "fgsm", "-o",
               str(tmp_path / "o.wav"), "--device", "cpu", sites=(toy_site,))
    assert proc.returncode == 2 and "reference set" in proc.stderr, proc.stderr
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    proc = cli("attack", str(bad), "--model", "toy-model", "--attack", "fgsm", "-o",
               str(tmp_path / "o.wav"), "--device", "cpu", sites=(toy_site,))
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
