"""Our side of the musicnn port comparison (run with the project's Python).

    python docs/musicnn/compare_torch.py signals /tmp/musicnn-cmp/signals.npz
    /tmp/tfenv/bin/python docs/musicnn/compare_tf.py /tmp/musicnn-cmp/signals.npz \
        /tmp/musicnn-cmp/tf.npz --wheel musicnn-0.1.0-py3-none-any.whl
    python docs/musicnn/compare_torch.py compare /tmp/musicnn-cmp/signals.npz /tmp/musicnn-cmp/tf.npz

``signals`` writes four 9 s test signals at 16 kHz (three musicnn patches each) and the port's
own log-mel of each. ``compare`` loads the converted port (the usual cache, converting from the
wheel if needed) and prints, per model and signal, the maximum absolute error of the taggram
(tag probabilities, every patch and tag) against the TF original:

- *from log-mel*: our network on the original extractor's log-mel vs TF on the same input;
- *from log-mel (ours)*: our network on our log-mel vs TF on that same log-mel;
- *from waveform*: our model end to end (torch log-mel + network) vs the original pipeline
  (librosa + float16 + TF);
- *waveform, float32 mel*: the same against the original pipeline without its float16 cast;
- *waveform vs zero-pad librosa*: against the extractor run with current librosa's zero padding.

It also prints the front ends' largest log-mel differences and a markdown table for
docs/musicnn.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

SR = 16_000
SECONDS = 9.0


def make_signals() -> dict[str, np.ndarray]:
    """Sine sweep, white noise, a decaying C major chord and a short rendered piece."""
    t = np.arange(int(SECONDS * SR)) / SR
    f0, f1 = 40.0, 7000.0
    k = np.log(f1 / f0) / SECONDS
    sweep = 0.5 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
    noise = 0.1 * np.random.default_rng(0).standard_normal(t.size)
    return {
        "sweep": sweep.astype(np.float32),
        "noise": np.clip(noise, -1, 1).astype(np.float32),
        "chord": chord(t.size),
        "music": music(),
    }


def chord(samples: int) -> np.ndarray:
    """C major triad (C4, E4, G4, 4 harmonics each), re-struck every 1.5 s with a decay.
    Pure arithmetic, so tests/test_musicnn.py rebuilds it bit for bit."""
    t = np.arange(samples) / SR
    env = np.exp(-2.0 * np.mod(t, 1.5))
    x = np.zeros(samples)
    for f in (261.63, 329.63, 392.0):
        for h in range(1, 5):
            x += np.sin(2 * np.pi * f * h * t) / h
    return (0.15 * env * x).astype(np.float32)


def music() -> np.ndarray:
    """Piano chords (I-vi-IV-V in C) under a flute melody, by the datasets' synthesizer."""
    from musicbench_plugins.datasets.synth import NoteEvent, render

    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    piano, flute = [], []
    melody = [72, 74, 76, 72, 69, 72, 76, 74, 72, 65, 69, 72, 71, 74, 79, 77]
    for bar in range(4):
        start = bar * 2.25
        for beat in range(3):
            for p in chords[bar]:
                piano.append(NoteEvent(start + 0.75 * beat, 0.7, p - 12 * (beat == 0), 0.7))
        for i in range(4):
            flute.append(NoteEvent(start + 0.5625 * i, 0.55, melody[4 * bar + i], 0.8))
    rng = np.random.default_rng(1)
    a = render(piano, sample_rate=SR, timbre="piano", rng=rng, duration=SECONDS,
               peak_range=(0.5, 0.5))
    b = render(flute, sample_rate=SR, timbre="flute", rng=rng, duration=SECONDS,
               peak_range=(0.4, 0.4))
    return np.clip(a + b, -1, 1).astype(np.float32)


def cmd_signals(out: Path) -> None:
    from musicbench_plugins.models.musicnn.network import MusicnnLogMel

    out.parent.mkdir(parents=True, exist_ok=True)
    logmel = MusicnnLogMel()
    data: dict[str, np.ndarray] = {}
    for name, audio in make_signals().items():
        data[f"audio/{name}"] = audio
        with torch.no_grad():
            data[f"torch_logmel/{name}"] = logmel(torch.from_numpy(audio)[None])[0].numpy()
    np.savez_compressed(out, **data)
    print(f"wrote {out}: {', '.join(k for k in data if k.startswith('audio/'))}")


def cmd_compare(signals_path: Path, tf_path: Path) -> None:
    from musicbench.cache import cache_dir
    from musicbench.interfaces import Context
    from musicbench_plugins.models.musicnn.network import PATCH_FRAMES
    from musicbench_plugins.models.musicnn.pretrained import load_pretrained

    signals, tf = np.load(signals_path), np.load(tf_path)
    names = [k.split("/", 1)[1] for k in signals.files if k.startswith("audio/")]
    ctx = Context(cache_dir=cache_dir(), device=torch.device("cpu"))
    print(f"TF {tf['tf_version']}, librosa {tf['librosa_version']}, torch {torch.__version__}")

    print("\nfront end: max |log-mel ours - librosa| (float32 mel / extractor's float16 mel)")
    for name in names:
        ours = signals[f"torch_logmel/{name}"]
        print(f"  {name:6s} {np.abs(ours - tf[f'logmel32/{name}']).max():.2e} / "
              f"{np.abs(ours - tf[f'logmel/{name}']).max():.2e}")

    def patches(rep: np.ndarray) -> torch.Tensor:
        count = (rep.shape[0] - PATCH_FRAMES) // PATCH_FRAMES + 1
        return torch.from_numpy(rep[: count * PATCH_FRAMES].reshape(count, PATCH_FRAMES, -1))

    rows = []
    for variant in ("mtt", "msd"):
        net, _ = load_pretrained(ctx, variant)
        for name in names:
            audio = torch.from_numpy(signals[f"audio/{name}"])[None]
            with torch.no_grad():
                logits = net.classify(patches(tf[f"logmel/{name}"]))
                ours_mel = torch.sigmoid(logits).numpy()
                ours_own = torch.sigmoid(net.classify(
                    patches(signals[f"torch_logmel/{name}"]))).numpy()
                ours_wave = net.taggram(audio)[0].numpy()
            ref = tf[f"taggram/{variant}/{name}"]
            rows.append((
                variant, name, ref.shape[0],
                np.abs(logits.numpy() - tf[f"logits/{variant}/{name}"]).max(),
                np.abs(ours_mel - ref).max(),
                np.abs(ours_own - tf[f"taggram_torchmel/{variant}/{name}"]).max(),
                np.abs(ours_wave - ref).max(),
                np.abs(ours_wave - tf[f"taggram32/{variant}/{name}"]).max(),
                np.abs(ours_wave - tf[f"taggram_zeropad/{variant}/{name}"]).max(),
            ))

    head = ("| model | signal | patches | logits, from log-mel | taggram, from log-mel | "
            "taggram, from log-mel (ours) | taggram, from waveform | waveform, float32 mel | "
            "waveform vs zero-pad librosa |")
    print("\nmax absolute error, port vs TensorFlow original\n")
    print(head)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for v, n, p, *errs in rows:
        print(f"| musicnn-{v} | {n} | {p} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
    worst_mel = max(r[4] for r in rows)
    worst_wave = max(r[6] for r in rows)
    print(f"\nworst: from log-mel {worst_mel:.1e} (target 1e-4), "
          f"from waveform {worst_wave:.1e} (target 1e-2)")

    print("\nfrozen reference for tests/test_musicnn.py (chord, first 3 s patch, TF on our "
          "log-mel):")
    for variant in ("mtt", "msd"):
        ref = tf[f"taggram_torchmel/{variant}/chord"][0]
        top = np.argsort(-ref)[:5]
        print(f"  {variant}: " + ", ".join(f"{int(i)}: {ref[i]:.6f}" for i in top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("signals")
    s.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("signals", type=Path)
    c.add_argument("tf", type=Path)
    args = ap.parse_args()
    if args.cmd == "signals":
        cmd_signals(args.out)
    else:
        cmd_compare(args.signals, args.tf)


if __name__ == "__main__":
    main()
