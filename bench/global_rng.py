"""Torch's global random generator forked and seeded from a stream of the harness
(:func:`seeded_global_rng`), so that a model drawing from the global RNG (dropout) draws
reproducibly: the defense checks use it when they measure a model's own randomness."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device):
    """Run the block on torch's global RNG (CPU, and ``device`` if CUDA) forked and seeded
    with a seed drawn from ``generator``: what a model that draws from the global RNG
    (dropout) draws is then a function of ``generator``'s stream, and the global RNG is as it
    was afterwards."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    device = torch.device(device)
    cuda = ([device.index if device.index is not None else torch.cuda.current_device()]
            if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:  # only the forked device: the others' states stay as they are
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
