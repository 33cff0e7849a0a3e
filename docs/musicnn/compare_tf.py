"""The original musicnn (TensorFlow) side of the port comparison. NOT part of musicbench.

Run with a throwaway TensorFlow environment, never the project's (see docs/musicnn.md):

    python -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install "tensorflow-cpu==2.15.1" "numpy<2" "librosa==0.9.2"
    /tmp/tfenv/bin/python docs/musicnn/compare_tf.py SIGNALS.npz TF.npz --wheel musicnn-0.1.0-py3-none-any.whl

It imports ``musicnn.models`` and ``musicnn.extractor`` straight from the wheel (zip import, no
install), builds each tagger's TF1 graph with ``models.define_model`` exactly as
``extractor.extractor`` does, restores the wheel's checkpoint, and for every signal in
SIGNALS.npz (written by ``compare_torch.py signals``) stores:

- ``logmel/<signal>``: the original extractor's log-mel (``extractor.batch_data`` on a float32
  WAV of the signal: librosa mel power, cast to float16, ``log10(10000 x + 1)``), with
  librosa's STFT padding set back to ``reflect`` — librosa's default in 2019, when musicnn
  0.1.0 (librosa >= 0.7) was released and trained; current librosa (0.9.2, 0.10) pads with
  zeros;
- ``logmel32/<signal>``: the same without the float16 cast;
- ``taggram/<model>/<signal>`` (and ``logits/...``): TF on ``logmel`` — the original pipeline;
- ``taggram32/<model>/<signal>``: TF on ``logmel32``;
- ``taggram_zeropad/<model>/<signal>``: the original extractor with librosa's current default
  (zero) padding, what a fresh ``pip install musicnn`` computes today;
- ``taggram_torchmel/<model>/<signal>``: TF on the port's own log-mel (``torch_logmel/...`` in
  SIGNALS.npz), which isolates the network from the front end.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("signals", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--wheel", type=Path, required=True, help="musicnn-0.1.0-py3-none-any.whl")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore")  # TF1 layer deprecation notices
    sys.path.insert(0, str(args.wheel))  # zip import of the original package
    import librosa
    import soundfile as sf
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn import extractor, models  # extractor disables eager execution

    signals = np.load(args.signals)
    names = [k.split("/", 1)[1] for k in signals.files if k.startswith("audio/")]
    n_frames = 187
    out: dict[str, np.ndarray] = {"tf_version": np.array(tf.__version__),
                                  "librosa_version": np.array(librosa.__version__)}
    original_mel = librosa.feature.melspectrogram

    def batches(audio: np.ndarray, pad_mode: str, half: bool, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
        wav = tmp / "signal.wav"
        sf.write(wav, audio, config.SR, subtype="FLOAT")
        librosa.feature.melspectrogram = functools.partial(original_mel, pad_mode=pad_mode)
        try:
            if half:  # the original code path, untouched
                return extractor.batch_data(str(wav), n_frames, n_frames)
            y, sr = librosa.load(str(wav), sr=config.SR)
            rep = librosa.feature.melspectrogram(y=y, sr=sr, hop_length=config.FFT_HOP,
                                                 n_fft=config.FFT_SIZE, n_mels=config.N_MELS).T
            rep = np.log10(10000 * rep + 1)
            count = (rep.shape[0] - n_frames) // n_frames + 1
            return rep[: count * n_frames].reshape(count, n_frames, -1), rep
        finally:
            librosa.feature.melspectrogram = original_mel

    def patches(rep: np.ndarray) -> np.ndarray:
        count = (rep.shape[0] - n_frames) // n_frames + 1
        return rep[: count * n_frames].reshape(count, n_frames, -1).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        inputs: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            audio = signals[f"audio/{name}"].astype(np.float32)
            b16, rep16 = batches(audio, "reflect", True, tmp)
            b32, rep32 = batches(audio, "reflect", False, tmp)
            bzero, _ = batches(audio, "constant", True, tmp)
            out[f"logmel/{name}"] = rep16.astype(np.float32)
            out[f"logmel32/{name}"] = rep32.astype(np.float32)
            inputs[name] = {"taggram": b16.astype(np.float32), "taggram32": b32.astype(np.float32),
                            "taggram_zeropad": bzero.astype(np.float32),
                            "taggram_torchmel": patches(signals[f"torch_logmel/{name}"])}

        with zipfile.ZipFile(args.wheel) as z:
            for model in ("MTT_musicnn", "MSD_musicnn"):
                ckpt = tmp / model
                ckpt.mkdir()
                for suffix in (".index", ".data-00000-of-00001"):
                    (ckpt / suffix).write_bytes(z.read(f"musicnn/{model}/{suffix}"))
                labels = config.MTT_LABELS if model.startswith("MTT") else config.MSD_LABELS
                tf.compat.v1.reset_default_graph()
                with tf.name_scope("model"):
                    x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, config.N_MELS])
                    is_training = tf.compat.v1.placeholder(tf.bool)
                    y, *_, penultimate = models.define_model(x, is_training, model, len(labels))
                    probs = tf.nn.sigmoid(y)
                with tf.compat.v1.Session() as sess:
                    sess.run(tf.compat.v1.global_variables_initializer())
                    tf.compat.v1.train.Saver().restore(sess, str(ckpt) + "/")
                    key = model.split("_")[0].lower()
                    for name, feeds in inputs.items():
                        for what, batch in feeds.items():
                            p, logits = sess.run([probs, y], {x: batch, is_training: False})
                            out[f"{what}/{key}/{name}"] = p
                            if what == "taggram":
                                out[f"logits/{key}/{name}"] = logits
                print(f"{model}: {len(inputs)} signals")
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
