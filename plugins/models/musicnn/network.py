"""The musicnn tagger in PyTorch, with its log-mel front end inside the network.

Port of the ``MTT_musicnn`` / ``MSD_musicnn`` models of J. Pons and X. Serra, "musicnn:
pre-trained convolutional neural networks for music audio tagging", ISMIR 2019 late-breaking
demo (arXiv:1909.06654). The architecture was read from ``musicnn/models.py`` and
``musicnn/extractor.py`` in the ``musicnn==0.1.0`` wheel (ISC licence, (c) Music Technology
Group, Universitat Pompeu Fabra); this is our own code, written to reproduce that TF1 graph
layer for layer. Differences from the original are listed in ``docs/musicnn.md``.

Shapes (``T`` = frames, 62.5 per second; the TF graph is time-major ``[B, T, 96]``):

- **log-mel** ``audio[B, samples]`` -> ``[B, frames, 96]``: 16 kHz, Hann window 512, hop 256,
  centred frames with reflect padding, power spectrogram, 96 Slaney mel bands (librosa's
  defaults), then ``log10(1 + 10000 * mel)``.
- **front end**: one scalar batch norm on the input; *timbral* filters 7 x 38 and 7 x 67
  (frames x bands, 204 each, time zero-padded 3+3, frequency valid) and *temporal* filters
  128 x 1, 64 x 1, 32 x 1 (51 each, TF ``'same'`` padding: for an even kernel ``k`` TF pads
  ``k/2 - 1`` before and ``k/2`` after); every branch is conv -> ReLU -> batch norm -> max over
  frequency; concatenated to ``[B, 561, T]``.
- **mid end**: three 1-D convs (64 filters, width 7, zero-padded 3+3), each conv -> ReLU ->
  batch norm, the 2nd and 3rd with residual connections; the front-end output and the three
  mid-end outputs are densely concatenated to ``[B, 753, T]``.
- **back end**: max and mean over time, interleaved per feature (TF flattens ``[753, 2]``) ->
  batch norm -> dense 200 + ReLU -> batch norm (the "penultimate" features) -> dense 50 = logits.

TF's batch norm epsilon (0.001) is used everywhere; dropout layers are inference no-ops and
left out.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16_000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # musicnn's 3 s input: librosa.time_to_frames(3 s) + 1
TF_BN_EPS = 1e-3
N_TAGS = 50


# -- log-mel ----------------------------------------------------------------------------------


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's (Auditory Toolbox) mel scale: linear below 1 kHz (200/3 Hz per mel),
    logarithmic above (27 mels per factor 6.4)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3.0)
    log_step = math.log(6.4) / 27.0
    above = hz >= 1000.0
    mel[above] = 15.0 + np.log(hz[above] / 1000.0) / log_step
    return mel


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * (200.0 / 3.0)
    log_step = math.log(6.4) / 27.0
    above = mel >= 15.0
    hz[above] = 1000.0 * np.exp(log_step * (mel[above] - 15.0))
    return hz


def slaney_mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                          n_mels: int = N_MELS) -> torch.Tensor:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` on the Slaney mel scale from 0 Hz to
    Nyquist, each scaled to unit area ("slaney" normalisation) — what
    ``librosa.filters.mel(sr, n_fft, n_mels)`` returns with its defaults. Computed in float64."""
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(
        np.linspace(0.0, _hz_to_slaney_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[:, None] - bins[None, :]  # [n_mels + 2, bins]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(filters.astype(np.float32))


class MusicnnLogMel(nn.Module):
    """``audio[B, samples]`` -> ``log-mel[B, frames, 96]`` with ``frames = 1 + samples // 256``
    (centred, reflect-padded frames), ``log10(1 + 10000 * mel power)``. Differentiable."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        self.register_buffer("filters", slaney_mel_filterbank(), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 2:
            raise ValueError(f"expected audio[B, samples], got shape {tuple(audio.shape)}")
        if audio.shape[-1] <= N_FFT // 2:
            raise ValueError(f"musicnn needs more than {N_FFT // 2} samples per clip "
                             f"(reflect padding), got {audio.shape[-1]}")
        spec = torch.stft(audio, N_FFT, HOP, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, bins, frames]
        mel = torch.matmul(self.filters, power)  # [B, mels, frames]
        return (torch.log1p(10_000.0 * mel) / math.log(10.0)).transpose(1, 2)


def patch_frames(samples: int) -> int:
    """Frames of a musicnn input patch of ``samples`` samples, as the original extractor counts
    them (``librosa.time_to_frames(seconds, n_fft=512, hop=256) + 1``): the centred frames
    whose window ends inside the clip. 48000 samples (3 s) -> 187."""
    return max(1, (samples - N_FFT // 2) // HOP + 1)


# -- network ----------------------------------------------------------------------------------


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=TF_BN_EPS)


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=TF_BN_EPS)


class FrequencyPooledConv(nn.Module):
    """One front-end branch: pad time -> conv over ``[B, 1, T, 96]`` -> ReLU -> batch norm ->
    max over the frequency axis -> ``[B, filters, T]``.

    ``pad`` is ``(before, after)`` zero frames on the time axis (frequency is always 'valid').

    In eval mode (always, for a frozen target) the max is taken first: ReLU and the frozen
    batch norm are monotonic per channel (increasing where its scale is positive, decreasing
    where it is negative, so there the minimum is taken), hence ``max_f bn(relu(z)) =
    bn(relu(max_f z))`` exactly, and ReLU and batch norm run on ``[B, C, T]`` instead of
    ``[B, C, T, F]``, forward and backward. Same logits bit for bit; input gradients equal to
    float32 rounding (~1e-8 relative: summation order); forward+backward about 25% faster on
    CPU (docs/benchmarks.md).
    """

    def __init__(self, filters: int, frames: int, bands: int, pad: tuple[int, int]):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(1, filters, (frames, bands))
        self.bn = _bn2d(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(F.pad(x, (0, 0, *self.pad)))  # [B, C, T, F]
        if self.training:
            return self.bn(F.relu(z)).amax(dim=3)
        pooled = z.max(dim=3).values  # one maximum per (clip, channel, frame): its gradient
        decreasing = self.bn.weight < 0  # goes to one band, as amax's would without ties
        if bool(decreasing.any()):
            pooled = torch.where(decreasing[None, :, None], z.min(dim=3).values, pooled)
        return self.bn(F.relu(pooled).unsqueeze(3)).squeeze(3)


def tf_same_padding(kernel: int) -> tuple[int, int]:
    """TF's 'same' padding for stride 1: the extra pixel of an even kernel goes *after*."""
    return (kernel - 1) // 2, kernel // 2


class FrontEnd(nn.Module):
    """``log-mel[B, T, 96]`` -> ``[B, 561, T]`` (timbral 204 + 204, temporal 51 x 3)."""

    def __init__(self, n_mels: int = N_MELS):
        super().__init__()
        self.input_bn = _bn2d(1)  # TF normalises the [B, T, 96, 1] input over its 1 channel
        timbral = int(1.6 * 128)
        temporal = int(1.6 * 32)
        self.timbral74 = FrequencyPooledConv(timbral, 7, int(0.4 * n_mels), (3, 3))
        self.timbral77 = FrequencyPooledConv(timbral, 7, int(0.7 * n_mels), (3, 3))
        self.temporal128 = FrequencyPooledConv(temporal, 128, 1, tf_same_padding(128))
        self.temporal64 = FrequencyPooledConv(temporal, 64, 1, tf_same_padding(64))
        self.temporal32 = FrequencyPooledConv(temporal, 32, 1, tf_same_padding(32))
        self.channels = 2 * timbral + 3 * temporal

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(logmel.unsqueeze(1))  # [B, 1, T, 96]
        branches = (self.timbral74, self.timbral77, self.temporal128, self.temporal64,
                    self.temporal32)
        return torch.cat([b(x) for b in branches], dim=1)


class MidEnd(nn.Module):
    """``[B, 561, T]`` -> densely connected ``[B, 561 + 3 * 64, T]`` (front end, cnn1, cnn2,
    cnn3): the last time-resolved features, which the back end pools over time."""

    def __init__(self, in_channels: int = 561, filters: int = 64):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, filters, 7)
        self.bn1 = _bn1d(filters)
        self.conv2 = nn.Conv1d(filters, filters, 7)
        self.bn2 = _bn1d(filters)
        self.conv3 = nn.Conv1d(filters, filters, 7)
        self.bn3 = _bn1d(filters)
        self.channels = in_channels + 3 * filters

    def forward(self, front: torch.Tensor) -> torch.Tensor:
        c1 = self.bn1(F.relu(self.conv1(F.pad(front, (3, 3)))))
        c2 = self.bn2(F.relu(self.conv2(F.pad(c1, (3, 3))))) + c1
        c3 = self.bn3(F.relu(self.conv3(F.pad(c2, (3, 3))))) + c2
        return torch.cat([front, c1, c2, c3], dim=1)


class BackEnd(nn.Module):
    """``[B, 753, T]`` -> ``logits[B, 50]``; :meth:`penultimate` gives the 200-d features."""

    def __init__(self, in_channels: int = 753, units: int = 200, n_tags: int = N_TAGS):
        super().__init__()
        self.pool_bn = _bn1d(2 * in_channels)
        self.dense = nn.Linear(2 * in_channels, units)
        self.dense_bn = _bn1d(units)
        self.out = nn.Linear(units, n_tags)

    def penultimate(self, features: torch.Tensor) -> torch.Tensor:
        # TF concatenates max and mean as [B, 753, 2] and flattens: max_i, mean_i interleaved.
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)
        return self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.penultimate(features))


class MusicnnNet(nn.Module):
    """``audio[B, samples]`` (16 kHz) -> ``logits[B, 50]`` (pre-sigmoid tag scores).

    ``forward`` treats the whole input as one musicnn patch of :func:`patch_frames` frames (187
    for 3 s, as the original); ``taggram`` cuts a long clip into consecutive 187-frame patches
    exactly as ``musicnn.extractor`` does. ``midend`` is the Grad-CAM layer (``[B, 753, T]``).
    """

    def __init__(self, n_tags: int = N_TAGS, midend_filters: int = 64, backend_units: int = 200):
        super().__init__()
        self.logmel = MusicnnLogMel()
        self.frontend = FrontEnd()
        self.midend = MidEnd(self.frontend.channels, midend_filters)
        self.backend = BackEnd(self.midend.channels, backend_units, n_tags)

    def features(self, logmel: torch.Tensor) -> torch.Tensor:
        """``log-mel[B, T, 96]`` -> mid-end features ``[B, 753, T]``."""
        return self.midend(self.frontend(logmel))

    def classify(self, logmel: torch.Tensor) -> torch.Tensor:
        """``log-mel[B, T, 96]`` (one patch) -> ``logits[B, 50]``: the TF graph's ``logits``."""
        return self.backend(self.features(logmel))

    def patch(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, samples]`` -> the patch's ``log-mel[B, patch_frames(samples), 96]``."""
        return self.logmel(audio)[:, : patch_frames(audio.shape[-1])]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.classify(self.patch(audio))

    def taggram(self, audio: torch.Tensor, frames: int = PATCH_FRAMES) -> torch.Tensor:
        """``audio[B, samples]`` -> tag probabilities ``[B, patches, 50]`` over consecutive,
        non-overlapping patches of ``frames`` frames of the whole clip's log-mel, as
        ``musicnn.extractor.extractor(..., input_length=3, input_overlap=False)``."""
        logmel = self.logmel(audio)
        count = (logmel.shape[1] - frames) // frames + 1
        if count < 1:
            raise ValueError(f"clip of {audio.shape[-1]} samples has {logmel.shape[1]} frames, "
                             f"fewer than one {frames}-frame patch")
        patches = logmel[:, : count * frames].reshape(-1, frames, logmel.shape[2])
        probs = torch.sigmoid(self.classify(patches))
        return probs.reshape(audio.shape[0], count, -1)


# -- TF variable names -> torch parameters ----------------------------------------------------

# Layer names as tf.compat.v1.layers numbered them, in graph-construction order
# (front end: input BN, timbral 7x38, 7x67, temporal 128, 64, 32; mid end; back end).
_CONV_MAP = {
    "conv2d": "frontend.timbral74.conv",
    "conv2d_1": "frontend.timbral77.conv",
    "conv2d_2": "frontend.temporal128.conv",
    "conv2d_3": "frontend.temporal64.conv",
    "conv2d_4": "frontend.temporal32.conv",
    "conv2d_5": "midend.conv1",
    "conv2d_6": "midend.conv2",
    "conv2d_7": "midend.conv3",
}
_BN_MAP = {
    "batch_normalization": "frontend.input_bn",
    "batch_normalization_1": "frontend.timbral74.bn",
    "batch_normalization_2": "frontend.timbral77.bn",
    "batch_normalization_3": "frontend.temporal128.bn",
    "batch_normalization_4": "frontend.temporal64.bn",
    "batch_normalization_5": "frontend.temporal32.bn",
    "batch_normalization_6": "midend.bn1",
    "batch_normalization_7": "midend.bn2",
    "batch_normalization_8": "midend.bn3",
    "batch_normalization_9": "backend.pool_bn",
    "batch_normalization_10": "backend.dense_bn",
}
_DENSE_MAP = {"dense": "backend.dense", "dense_1": "backend.out"}
_BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
              "moving_variance": "running_var"}


def _conv_kernel(k: np.ndarray, torch_name: str) -> np.ndarray:
    """TF conv2d kernels are ``[frames, bands, in, out]``. Front-end convs read ``[B, 1, T, 96]``
    (torch ``[out, in, frames, bands]``); mid-end convs are 2-D convs spanning all channels, i.e.
    1-D convs over time (torch ``[out, in, frames]``)."""
    if torch_name.startswith("midend."):
        return k[:, :, 0, :].transpose(2, 1, 0)
    return k.transpose(3, 2, 0, 1)


def tf_variable_map() -> dict[str, tuple[str, str]]:
    """``{tf variable: (torch state-dict key, transform)}`` for every trained variable."""
    table: dict[str, tuple[str, str]] = {}
    for tf_name, torch_name in _CONV_MAP.items():
        table[f"{tf_name}/kernel"] = (f"{torch_name}.weight", "conv")
        table[f"{tf_name}/bias"] = (f"{torch_name}.bias", "copy")
    for tf_name, torch_name in _BN_MAP.items():
        for tf_field, torch_field in _BN_FIELDS.items():
            table[f"{tf_name}/{tf_field}"] = (f"{torch_name}.{torch_field}", "copy")
    for tf_name, torch_name in _DENSE_MAP.items():
        table[f"{tf_name}/kernel"] = (f"{torch_name}.weight", "transpose")
        table[f"{tf_name}/bias"] = (f"{torch_name}.bias", "copy")
    return table


# Optimizer state and bookkeeping in the checkpoint that inference does not use.
_IGNORED_SUFFIXES = ("/Adam", "/Adam_1")
_IGNORED_NAMES = {"beta1_power", "beta2_power", "global_step"}


def state_dict_from_tf(tensors: dict[str, np.ndarray], net: MusicnnNet) -> dict[str, torch.Tensor]:
    """Map TF checkpoint tensors onto ``net``'s state dict, failing loudly on any TF variable
    that is neither mapped nor known optimizer state, on any parameter left without a value,
    and on any shape mismatch."""
    table = tf_variable_map()
    target = net.state_dict()
    unexpected = sorted(n for n in tensors if n not in table and n not in _IGNORED_NAMES
                        and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"checkpoint variables with no place in the port: {unexpected}")
    missing_tf = sorted(n for n in table if n not in tensors)
    if missing_tf:
        raise ValueError(f"checkpoint lacks variables the port needs: {missing_tf}")
    state: dict[str, torch.Tensor] = {}
    for tf_name, (key, how) in table.items():
        value = tensors[tf_name].astype(np.float32)
        if how == "conv":
            value = _conv_kernel(value, key)
        elif how == "transpose":
            value = value.T
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if key not in target:
            raise ValueError(f"{tf_name} maps to {key}, which the network does not have")
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise ValueError(f"{tf_name}: shape {tuple(tensors[tf_name].shape)} -> "
                             f"{tuple(tensor.shape)}, but {key} is {tuple(target[key].shape)}")
        state[key] = tensor
    for key, value in target.items():  # batch counters are not in TF; everything else must be
        if key not in state:
            if key.endswith("num_batches_tracked"):
                state[key] = value.clone()
            else:
                raise ValueError(f"no checkpoint variable for {key}")
    return state


def tf_names_needed() -> list[str]:
    """The checkpoint tensors the conversion reads."""
    return sorted(tf_variable_map())
