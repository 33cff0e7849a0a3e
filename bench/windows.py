"""Score clips of any length with a fixed-input model by averaging over windows."""

from __future__ import annotations

from collections.abc import Callable

import torch


def split_windows(audio: torch.Tensor, window: int) -> tuple[torch.Tensor, int]:
    """Cut ``audio[B, T]`` into ``windows[B * W, window]``; returns (windows, W).

    Windows hop by ``window`` samples; the last one is aligned to the clip's end (so every
    sample is seen and none is padded); clips shorter than ``window`` are zero-padded.
    """
    batch, length = audio.shape
    if length <= window:
        if length < window:
            audio = torch.nn.functional.pad(audio, (0, window - length))
        return audio, 1
    starts = list(range(0, length - window + 1, window))
    if starts[-1] != length - window:
        starts.append(length - window)
    windows = torch.stack([audio[:, s : s + window] for s in starts], dim=1)  # [B, W, window]
    return windows.reshape(batch * len(starts), window), len(starts)


def score_windows(
    fn: Callable[[torch.Tensor], torch.Tensor], audio: torch.Tensor, window: int
) -> torch.Tensor:
    """``fn`` applied to every window of ``audio[B, T]``, averaged per clip -> ``[B, ...]``."""
    windows, count = split_windows(audio, window)
    out = fn(windows)
    if count == 1:
        return out
    return out.reshape(audio.shape[0], count, *out.shape[1:]).mean(dim=1)
