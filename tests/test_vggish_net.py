"""Our VGGish (``plugins/encoders/vggish_net.py``): the port's state-dict layout, the TF flatten
order before the fully connected layers, and the log-mel front end against a straightforward
reference written here (loops over frames, bins and bands; no shared code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_fad_backbones import PORT_STATE_SHAPES, random_port_state

from musicbench_plugins.encoders import fad_backbones as fb
from musicbench_plugins.encoders import vggish_net as vn

RATE = 16_000


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """VGGish's log-mel spectrogram of a mono 16 kHz signal, the slow obvious way: for each
    25 ms frame (10 ms hop), periodic Hann (sin^2(pi n / N)), zero-pad to 512, full FFT,
    magnitudes of bins 0..256; triangles on the HTK mel scale between 125 and 7500 Hz, filled
    in bin by bin; log(mel + 0.01)."""
    size, hop, n_fft = 400, 160, 512

    def mel(hz: float) -> float:
        return 1127.0 * math.log(1.0 + hz / 700.0)

    lo, hi = mel(125.0), mel(7500.0)
    edges = [lo + (hi - lo) * i / 65 for i in range(66)]
    weights = np.zeros((n_fft // 2 + 1, 64))
    for k in range(1, n_fft // 2 + 1):  # the DC bin stays out
        m = mel(k * RATE / n_fft)
        for band in range(64):
            left, centre, right = edges[band : band + 3]
            if left < m <= centre:
                weights[k, band] = (m - left) / (centre - left)
            elif centre < m < right:
                weights[k, band] = (right - m) / (right - centre)
    window = np.sin(np.pi * np.arange(size) / size) ** 2
    rows = []
    for start in range(0, len(x) - size + 1, hop):
        padded = np.zeros(n_fft)
        padded[:size] = x[start : start + size] * window
        magnitude = np.abs(np.fft.fft(padded))[: n_fft // 2 + 1]
        rows.append(np.log(magnitude @ weights + 0.01))
    return np.array(rows)


def signal(samples: int, seed: int = 0) -> np.ndarray:
    """Noise plus two tones, seeded."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / RATE
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)
    return tones + 0.05 * rng.standard_normal(len(t))


def test_state_dict_keys_and_shapes_are_those_of_the_ports_checkpoint():
    for final_relu in (True, False):
        state = vn.VggishNet(final_relu=final_relu).state_dict()
        assert [(k, tuple(v.shape)) for k, v in state.items()] == PORT_STATE_SHAPES
    assert list(vn.state_dict_shapes().items()) == PORT_STATE_SHAPES
    vn.VggishNet().load_state_dict(random_port_state(), strict=True)


def test_conv_output_is_flattened_channels_last_as_the_tf_weights_expect():
    torch.manual_seed(0)
    net = vn.VggishNet(final_relu=False).eval()
    x = torch.randn(2, 1, 96, 64)
    seen: list[torch.Tensor] = []
    net.features.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        out = net(x)
    conv = seen[0]
    assert conv.shape == (2, 512, 6, 4)
    # TF flattens NHWC: input (row h, column w, channel c) is column (h * 4 + w) * 512 + c
    flat = torch.empty(2, 12288)
    for h in range(6):
        for w in range(4):
            flat[:, (h * 4 + w) * 512 : (h * 4 + w + 1) * 512] = conv[:, :, h, w]

    def head(v: torch.Tensor) -> torch.Tensor:
        s = net.state_dict()
        v = torch.relu(v @ s["embeddings.0.weight"].T + s["embeddings.0.bias"])
        v = torch.relu(v @ s["embeddings.2.weight"].T + s["embeddings.2.bias"])
        return v @ s["embeddings.4.weight"].T + s["embeddings.4.bias"]

    torch.testing.assert_close(out, head(flat), rtol=1e-5, atol=1e-6)
    # the test can tell: PyTorch's plain NCHW flatten gives other embeddings
    assert not torch.allclose(out, head(conv.flatten(1)), rtol=1e-3, atol=1e-5)


def test_front_end_matches_a_straightforward_reference():
    x = signal(36_800)
    ours = vn.log_mel(torch.from_numpy(x)[None])[0].numpy()
    ref = reference_log_mel(x)
    assert ours.shape == ref.shape == (1 + (len(x) - 400) // 160, 64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_a_tone_lands_in_the_mel_band_centred_nearest_to_it():
    t = np.arange(RATE) / RATE
    spec = vn.log_mel(torch.from_numpy(np.sin(2 * np.pi * 1000 * t))[None])[0]
    edges = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)
    nearest = int(np.argmin(np.abs(edges[1:-1] - 1127 * np.log1p(1000 / 700))))
    assert int(spec.mean(0).argmax()) == nearest


# (samples, examples): one per 96 frames of 400 samples every 160; the k-th example needs
# 400 + (96 k - 1) * 160 samples
@pytest.mark.parametrize("samples, n", [(0, 0), (399, 0), (15_599, 0), (15_600, 1),
                                        (30_959, 1), (30_960, 2), (48_000, 3), (49_234, 3)])
def test_examples_are_96_frame_blocks_and_frames_counts_them(samples, n):
    audio = torch.from_numpy(np.stack([signal(samples, seed) for seed in (1, 2)]))
    spec = vn.log_mel(audio)
    examples = vn.log_mel_examples(audio)
    assert examples.shape == (2, n, 96, 64) and spec.shape[1] // 96 == n
    assert fb.FadVggishEncoder().frames(samples) == vn.example_count(samples) == n
    for k in range(n):
        assert torch.equal(examples[:, k], spec[:, 96 * k : 96 * (k + 1)])
    if n:  # batched = one clip at a time
        assert torch.equal(examples[1:], vn.log_mel_examples(audio[1:]))
    assert vn.min_samples() == 15600


def test_the_network_refuses_input_that_is_not_96_by_64_examples():
    with pytest.raises(ValueError, match=r"examples\[N, 1, 96, 64\]"):
        vn.VggishNet()(torch.zeros(1, 1, 100, 64))
