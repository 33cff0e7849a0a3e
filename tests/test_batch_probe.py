"""``batch_size = 0``: the batch size probed from the device's memory, opt-in, decided when the
run is planned and written into every cell's key; on a CPU it means 32."""

from __future__ import annotations

import pytest
import torch
from test_planning import BASE, _plan

from musicbench.batch_probe import CPU_BATCH, largest_fitting, probed_batch_size
from musicbench.testing import TinyClassifier


def test_the_largest_size_that_fits_is_found_and_memory_released_after_every_try():
    tried, released = [], []

    def step(size: int) -> None:
        tried.append(size)
        if size > 20:
            raise torch.OutOfMemoryError(f"{size} clips do not fit")

    assert largest_fitting(step, release=lambda: released.append(1)) == 16
    assert tried == [256, 128, 64, 32, 16] and len(released) == len(tried)
    assert largest_fitting(lambda size: (_ for _ in ()).throw(torch.OutOfMemoryError("no"))) \
        is None


def test_other_errors_are_not_taken_for_a_full_device():
    def step(size: int) -> None:
        raise ValueError("a broken model")

    with pytest.raises(ValueError, match="broken"):
        largest_fitting(step)


def test_a_cpu_is_not_probed():
    model = TinyClassifier(n_classes=3)
    assert probed_batch_size(model, torch.zeros(4000), torch.device("cpu")) == CPU_BATCH


def test_batch_size_zero_plans_the_cpu_size_under_the_same_keys(toy_plugins):
    explicit = _plan(BASE.format(run="", datasets="").replace("batch_size = 3",
                                                              f"batch_size = {CPU_BATCH}"),
                     toy_plugins)
    probed = _plan(BASE.format(run="", datasets="").replace("batch_size = 3", "batch_size = 0"),
                   toy_plugins)
    assert [s.run.batch_size for s in probed.specs] == [CPU_BATCH] * len(explicit.specs)
    assert [s.key for s in probed.specs] == [s.key for s in explicit.specs]
