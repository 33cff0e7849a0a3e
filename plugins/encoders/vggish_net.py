"""VGGish, network and log-mel front end, as code of our own (no torch hub, no code from a cache).

S. Hershey, S. Chaudhuri, D. P. W. Ellis et al., "CNN Architectures for Large-Scale Audio
Classification", ICASSP 2017: a VGG-like network (configuration A, shrunk to a 96 x 64
log-mel input and a 128-d embedding) trained on YouTube-8M-style AudioSet labels. The released
model is the TensorFlow one (``tensorflow/models``, ``research/audioset/vggish``); the
PyTorch port ``harritaylor/torchvggish`` (H. Taylor, Apache 2.0) converted its weights into
``vggish-10086976.pth``, the file ``frechet-audio-distance`` uses. :class:`VggishNet` is
written from the paper and the published parameters, with the port's state-dict layout
(``features.N.*`` for the conv stack, ``embeddings.N.*`` for the fully connected stack), so
that file loads with ``load_state_dict(strict=True)``.

Network, ``Tensor[N, 1, 96, 64]`` (examples of 96 frames x 64 mel bands) -> ``[N, 128]``:
3x3 convolutions (padding 1) with ReLU, 2x2 max-pooling, channels
64-pool-128-pool-256-256-pool-512-512-pool (-> ``[N, 512, 6, 4]``), then fully connected
12288 -> 4096 -> 4096 -> 128 with ReLU after each. The TF model flattens its NHWC conv output,
so the first fully connected layer's columns are ordered (row, column, channel): the conv output
is moved channels-last before flattening (as the port does), or the converted weights would
meet their inputs permuted.

Front end (the release's ``vggish_input`` / ``mel_features``), ``audio[B, T]`` at 16 kHz mono
-> ``[B, n, 96, 64]``: frames of 25 ms (400 samples) every 10 ms (160), no padding (the tail
that fills no frame is dropped); a periodic Hann window (``0.5 - 0.5 cos(2 pi k / 400)``); the
magnitude (not power) of a 512-point FFT, the frame zero-padded at its end; 64 triangular mel
bands between 125 and 7500 Hz, triangles linear on the HTK mel scale
(``1127 ln(1 + f / 700)``), peak weight 1 (no area normalisation), the DC bin excluded;
``log(mel + 0.01)``; examples of 96 consecutive frames (0.96 s) without overlap (leftover
frames dropped). Computed in float64, as the release's numpy code does, then cast to float32.

Choices the release fixed and this module keeps as module constants (changing one gives
embeddings the pretrained weights were not trained on): the rates and sizes above, the log
offset, the example length. Open choice, a parameter: the ReLU after the last layer
(``final_relu``; ``frechet-audio-distance`` drops it). Not implemented: the release's PCA
whitening and 8-bit quantisation of the embedding, and resampling (callers hand 16 kHz audio).
"""

from __future__ import annotations

import math

import torch
from torch import nn

SAMPLE_RATE = 16_000
WINDOW = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
FFT = 512  # the smallest power of two >= WINDOW, as the release computes it
MEL_BANDS = 64
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s per example, examples do not overlap
EMBEDDING_DIM = 128

# "M" is a 2x2 max-pool; numbers are 3x3 conv output channels (each followed by a ReLU).
CONV_LAYOUT: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
CONV_OUT_SHAPE = (512, 6, 4)  # channels, height (time), width (mel) after four poolings
HIDDEN = 4096


def stft_frames(samples: int) -> int:
    """How many 25 ms frames (10 ms hop, no padding) a clip of ``samples`` samples gets."""
    return 1 + (samples - WINDOW) // HOP if samples >= WINDOW else 0


def example_count(samples: int) -> int:
    """How many 0.96 s examples (one embedding each) a clip of ``samples`` samples gets."""
    return stft_frames(samples) // EXAMPLE_FRAMES


def min_samples() -> int:
    """The shortest clip that makes one example: 15600 samples (0.975 s)."""
    return WINDOW + (EXAMPLE_FRAMES - 1) * HOP


def hz_to_htk_mel(hz: torch.Tensor) -> torch.Tensor:
    """The HTK mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(hz / 700.0)


def mel_matrix(dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """``Tensor[FFT // 2 + 1, MEL_BANDS]``: FFT-bin magnitudes -> mel bands (``spec @ W``).

    Band ``j`` is a triangle rising from edge ``j`` to 1 at edge ``j + 1`` and falling to 0 at
    edge ``j + 2``, linear in mel, for ``MEL_BANDS + 2`` edges equally spaced in mel from
    ``MEL_LOW_HZ`` to ``MEL_HIGH_HZ``; the DC bin gets no weight.
    """
    bins = torch.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1, dtype=torch.float64)
    bins_mel = hz_to_htk_mel(bins)[:, None]  # [bins, 1]
    edges = torch.linspace(*hz_to_htk_mel(torch.tensor([MEL_LOW_HZ, MEL_HIGH_HZ],
                                                       dtype=torch.float64)).tolist(),
                           MEL_BANDS + 2, dtype=torch.float64)
    low, centre, high = edges[:-2], edges[1:-1], edges[2:]  # [bands] each
    rising = (bins_mel - low) / (centre - low)
    falling = (high - bins_mel) / (high - centre)
    weights = torch.minimum(rising, falling).clamp(min=0.0)
    weights[0] = 0.0  # HTK leaves the DC bin out (already 0 while MEL_LOW_HZ > 0)
    return weights.to(device=device, dtype=dtype)


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """``audio[B, T]`` at 16 kHz -> log-mel spectrogram ``[B, frames, MEL_BANDS]``.

    Computed in ``audio``'s dtype and on its device; pass float64 to match the release.
    """
    if audio.dim() != 2:
        raise ValueError(f"expected audio[B, samples], got shape {tuple(audio.shape)}")
    batch, samples = audio.shape
    if stft_frames(samples) == 0:
        return audio.new_zeros(batch, 0, MEL_BANDS)
    frames = audio.unfold(-1, WINDOW, HOP)  # [B, frames, WINDOW], a view
    window = torch.hann_window(WINDOW, periodic=True, dtype=audio.dtype, device=audio.device)
    magnitude = torch.fft.rfft(frames * window, n=FFT).abs()  # [B, frames, FFT // 2 + 1]
    mel = magnitude @ mel_matrix(audio.dtype, audio.device)
    return torch.log(mel + LOG_OFFSET)


def log_mel_examples(audio: torch.Tensor) -> torch.Tensor:
    """``audio[B, T]`` at 16 kHz -> VGGish input examples ``[B, n, 96, 64]`` (``n`` as
    :func:`example_count`), in ``audio``'s dtype."""
    spec = log_mel(audio)
    batch, frames, bands = spec.shape
    n = frames // EXAMPLE_FRAMES
    return spec[:, : n * EXAMPLE_FRAMES].reshape(batch, n, EXAMPLE_FRAMES, bands)


def _conv_stack() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for item in CONV_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(item, int)
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


class VggishNet(nn.Module):
    """VGGish: log-mel examples ``Tensor[N, 1, 96, 64]`` -> embeddings ``Tensor[N, 128]``.

    ``final_relu``: keep the ReLU after the last layer (the release has it;
    ``frechet-audio-distance`` drops it). It has no parameters, so either way the state dict
    is the port's: ``features.{0,3,6,8,11,13}.{weight,bias}`` and
    ``embeddings.{0,2,4}.{weight,bias}``.
    """

    def __init__(self, final_relu: bool = True):
        super().__init__()
        self.features = _conv_stack()
        flat = math.prod(CONV_OUT_SHAPE)
        head: list[nn.Module] = [nn.Linear(flat, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                                 nn.ReLU(), nn.Linear(HIDDEN, EMBEDDING_DIM)]
        self.embeddings = nn.Sequential(*head, *([nn.ReLU()] if final_relu else []))

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        if examples.shape[1:] != (1, EXAMPLE_FRAMES, MEL_BANDS):
            raise ValueError(f"expected examples[N, 1, {EXAMPLE_FRAMES}, {MEL_BANDS}], got "
                             f"shape {tuple(examples.shape)}")
        conv = self.features(examples)  # [N, 512, 6, 4]
        # channels-last, then flatten: the TF weights expect (row, column, channel) order
        flat = conv.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(flat)


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of :class:`VggishNet`'s state dict (built on the meta device: no
    memory, no initialisation)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in VggishNet().state_dict().items()}
