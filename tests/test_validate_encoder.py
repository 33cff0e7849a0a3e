"""`musicbench validate` on encoders: a well-behaved one passes, each broken promise fails."""

from __future__ import annotations

import torch
from toyplugins import ToyFrames

from musicbench import hookimpl
from musicbench.plugins import PluginSystem
from musicbench.validate import validate_plugin


class FrameEnergy(ToyFrames):
    """Log energy and zero-crossing rate of 400-sample frames: ``[B, frames, 2]``."""

    frame = 400


class BatchMixing(FrameEnergy):
    """Normalises over the batch: a row's frames depend on its neighbours."""

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        e = super().embed(audio)
        return e - e.mean(0, keepdim=True)


class FixedLength(FrameEnergy):
    """Always one frame, whatever the clip length (useless for FAD's frame statistics)."""

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        return super().embed(audio).mean(1, keepdim=True)


class _Plugin:
    @hookimpl
    def register_encoders(self, register):
        register("frame-energy", FrameEnergy)
        register("batch-mixing", BatchMixing)
        register("fixed-length", FixedLength)


def _report(name: str):
    system = PluginSystem()
    system.add_plugin(_Plugin(), "encoders-under-test", provider="tests")
    report = validate_plugin(name, kind="encoder", device="cpu", plugins=system)
    return {c.name: c.ok for c in report.checks}, report.ok


def test_a_well_behaved_encoder_passes_every_check():
    checks, ok = _report("frame-energy")
    assert ok and len(checks) == 5, checks


def test_an_encoder_that_mixes_rows_of_a_batch_fails_that_check():
    checks, ok = _report("batch-mixing")
    assert not ok
    assert checks["a row's frames do not depend on its batch"] is False


def test_an_encoder_with_a_fixed_frame_count_fails_that_check():
    checks, ok = _report("fixed-length")
    assert not ok and checks["longer clips give more frames"] is False
