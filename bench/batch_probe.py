"""``[run] batch_size = 0``: a batch size chosen by probing the device's memory (README.md,
the GPU path; docs/reliability.md).

Every batch of clips draws from its own random streams (:mod:`musicbench.shards`), so the
batch size decides what a cell computes and is part of its key. A probed size is therefore
opt-in (``batch_size = 0``), decided once per model when the run is planned, and written into
every cell's key like a configured one: the same config on a GPU with less memory plans other
cells, visibly, rather than silently giving other figures. On a CPU nothing is probed (host
memory is not the limit a batch size guards against): ``0`` means :data:`CPU_BATCH`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from musicbench.interfaces import TargetModel
from musicbench.windows import score_windows

AUTO_BATCH = 0
CPU_BATCH = 32
"""What ``batch_size = 0`` plans on a CPU (the default ``batch_size``)."""

PROBE_SIZES = (256, 128, 64, 32, 16, 8, 4, 2, 1)
HEADROOM = 2
"""The planned size is the largest probed size that fits divided by this: an attack holds
more than the model's forward and backward (its own state, EOT draws, an inpainter)."""


def largest_fitting(step: Callable[[int], None], sizes: tuple[int, ...] = PROBE_SIZES,
                    release: Callable[[], None] = lambda: None) -> int | None:
    """The first (largest) of ``sizes`` for which ``step(size)`` raises no out-of-memory
    error; None when none fits. ``release`` runs after every try (free cached memory)."""
    for size in sizes:
        try:
            step(size)
            return size
        except torch.OutOfMemoryError:
            pass
        finally:
            gc.collect()
            release()
    return None


def probed_batch_size(model: TargetModel, clip: torch.Tensor, device: torch.device) -> int:
    """The batch size to plan for ``model`` on ``device``: :data:`CPU_BATCH` off a GPU, else
    the largest of :data:`PROBE_SIZES` whose forward and backward to the input through the
    model (copies of ``clip[T]``, windowed as the harness scores them) fits, divided by
    :data:`HEADROOM`. Raises when not even one clip fits."""
    if device.type != "cuda":
        return CPU_BATCH
    network = model.embed if model.task == "retrieval" else model.forward

    def step(size: int) -> None:
        x = clip.to(device, torch.float32).expand(size, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            out = score_windows(network, x, model.input_samples)
            (grad,) = torch.autograd.grad(out.float().sum(), x)
        del grad, out
        torch.cuda.synchronize(device)

    fits = largest_fitting(step, release=torch.cuda.empty_cache)
    if fits is None:
        raise torch.OutOfMemoryError(f"model '{model.name}' does not fit one clip's forward and "
                                     f"backward on {device}")
    return max(1, fits // HEADROOM)
