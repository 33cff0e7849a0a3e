"""The networks of ``gacela``: context-encoder generator and spectrogram critics.

After Marafioti, Majdak, Holighaus, Perraudin, "GACELA: A Generative Adversarial Context
Encoder for Long Audio Inpainting of Music", IEEE JSTSP 2020 (arXiv 2005.05032), scaled down
for 16 kHz clips and CPU training: two context encoders (left, right; strided 5x5
convolutions with weight norm on the mel view of the context), a latent code concatenated with
both encodings, a linear layer and a transposed-convolution decoder, two residual blocks and a
tanh that give the gap's scaled log-magnitude. Critics: strided 5x5 convolutions on a window of
the (scaled) STFT or mel view around the gap, averaged in time to a fixed number of frames.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LEAK = 0.2


def _strided(channels: list[int], weight_normed: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in pairwise(channels):
        conv = nn.Conv2d(c_in, c_out, 5, stride=2, padding=2)
        layers += [weight_norm(conv) if weight_normed else conv, nn.LeakyReLU(LEAK)]
    return nn.Sequential(*layers)


def _flat_size(net: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(net(torch.zeros(1, *shape)).numel())


class ContextEncoder(nn.Module):
    """``mel[B, 1, n_mels, frames]`` -> ``code[B, D]``: four strided 5x5 convolutions."""

    def __init__(self, n_mels: int, frames: int, width: int):
        super().__init__()
        self.convs = _strided([1, width, 2 * width, 4 * width, 4 * width], weight_normed=True)
        self.dim = _flat_size(self.convs, (1, n_mels, frames))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.convs(mel).flatten(1)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(LEAK),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(x + self.body(x), LEAK)


class Generator(nn.Module):
    """``(left mel[B, 1, M, C], right mel[B, 1, M, C] time-reversed, z[B, latent],
    prior[B, bins, G])`` -> ``gap[B, bins, G]`` in [-1, 1].

    The right context is time-reversed by the caller so that both encoders see the frame next
    to the gap last. The decoder doubles frequency ``n_up`` times and time twice, so ``bins``
    must be divisible by ``2 ** n_up`` and ``G`` by 4.
    """

    N_UP = 5

    def __init__(self, bins: int, gap_frames: int, n_mels: int, context_frames: int,
                 latent_dim: int, width: int):
        super().__init__()
        if bins % 2**self.N_UP or gap_frames % 4:
            raise ValueError(f"bins ({bins}) must be divisible by {2 ** self.N_UP} and gap "
                             f"frames ({gap_frames}) by 4")
        w = width
        self.left = ContextEncoder(n_mels, context_frames, w)
        self.right = ContextEncoder(n_mels, context_frames, w)
        self.seed_shape = (4 * w, bins // 2**self.N_UP, gap_frames // 4)
        self.fc = nn.Linear(self.left.dim + self.right.dim + latent_dim,
                            self.seed_shape[0] * self.seed_shape[1] * self.seed_shape[2])
        chans = [4 * w, 4 * w, 2 * w, 2 * w, w, w]
        ups: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(pairwise(chans)):
            time_up = i < 2  # time doubles in the first two layers only
            ups += [nn.ConvTranspose2d(c_in, c_out, (4, 4 if time_up else 3),
                                       stride=(2, 2 if time_up else 1), padding=(1, 1)),
                    nn.LeakyReLU(LEAK)]
        self.decoder = nn.Sequential(*ups, ResBlock(w), ResBlock(w), nn.Conv2d(w, 1, 1))

    def forward(self, left: torch.Tensor, right: torch.Tensor, z: torch.Tensor,
                prior: torch.Tensor) -> torch.Tensor:
        """``prior[B, bins, G]`` in (-1, 1) is what the decoder's output is added to before
        the tanh (zeros: GACELA's plain decoder)."""
        code = torch.cat([self.left(left), self.right(right), z], dim=1)
        seed = nn.functional.leaky_relu(self.fc(code), LEAK).view(-1, *self.seed_shape)
        return torch.tanh(self.decoder(seed)[:, 0] + torch.atanh(prior.clamp(-0.995, 0.995)))


class Critic(nn.Module):
    """``view[B, 1, rows, window]`` -> ``score[B]``: the window is averaged in time to
    ``frames`` columns, then four strided 5x5 convolutions and a linear layer."""

    def __init__(self, rows: int, frames: int, width: int):
        super().__init__()
        self.frames = frames
        self.convs = _strided([1, width, 2 * width, 4 * width, 4 * width], weight_normed=False)
        self.head = nn.Linear(_flat_size(self.convs, (1, rows, frames)), 1)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(view, (view.shape[2], self.frames))
        return self.head(self.convs(x).flatten(1))[:, 0]
