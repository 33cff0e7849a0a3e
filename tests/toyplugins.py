"""Tiny plugins for harness tests: a seeded tone dataset, a random-weight classifier, a slow
PGD (to kill runs part-way) and an attack that breaks the contract. Registered in-process by
the fixtures, or through a generated entry point for subprocess tests."""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from musicbench import hookimpl
from musicbench.errors import ConfigError
from musicbench.interfaces import (
    Attack,
    AttackResult,
    Context,
    Dataset,
    Encoder,
    Example,
    Preprocessor,
    SampleMetric,
)
from musicbench.testing import TinyClassifier, tone_batch
from musicbench_plugins.attacks.pgd import PGD, PGDParams


@dataclass(frozen=True)
class ToyDatasetParams:
    clips: int = 24
    seconds: float = 0.25
    other_labels: bool = False  # labels the toy model does not know: pseudo-label mode
    label_typo: bool = False  # one label misspelt ("clas-1")


class ToyDataset(Dataset):
    """Seeded tones in 3 classes; works are single clips."""

    task = "classification"
    sample_rate = 16_000
    labels = ("class-0", "class-1", "class-2")
    Params = ToyDatasetParams

    def prepare(self, ctx: Context) -> None:
        if self.params.other_labels:
            self.labels = ("x", "y", "z")
        if self.params.label_typo:
            self.labels = ("class-0", "clas-1", "class-2")
        n = self.params.clips
        audio = tone_batch(n, int(self.params.seconds * 16_000), seed=7)
        self._splits: dict[str, list[Example]] = {"train": [], "valid": [], "test": []}
        for i in range(n):
            split = "test" if i % 2 == 0 else ("train" if i % 4 == 1 else "valid")
            self._splits[split].append(
                Example(id=f"toy-{i:03d}", audio=audio[i], label=i % 3, work_id=f"w{i}"))

    def examples(self, split: str) -> Sequence[Example]:
        return self._splits[split]

    def fingerprint(self) -> str:
        return f"toy-{self.params.clips}-{self.params.seconds}"


@dataclass(frozen=True)
class ToyModelParams:
    seed: int = 0


class ToyModel(TinyClassifier):
    """TinyClassifier with the toy dataset's labels."""

    Params = ToyModelParams

    def __init__(self, params: ToyModelParams | None = None):
        super().__init__(n_classes=3, seed=(params or ToyModelParams()).seed)
        self.params = params or ToyModelParams()


class ToyCovers(Dataset):
    """Retrieval toy: 6 works (a harmonic tone each), 3 versions (gain, phase, noise);
    version 0 is the reference, the others are queries. Everything is in the test split."""

    task = "retrieval"
    sample_rate = 16_000

    def prepare(self, ctx: Context) -> None:
        g = torch.Generator().manual_seed(11)
        t = torch.arange(4000) / 16_000
        self._refs, self._queries = [], []
        for w in range(6):
            f0 = 110 * 2 ** (w / 2)
            for v in range(3):
                phase = torch.rand(1, generator=g) * 6.28
                x = sum(torch.sin(2 * torch.pi * f0 * k * t + phase) / k for k in range(1, 4))
                x = x + 0.05 * torch.randn(4000, generator=g)
                x = (0.3 + 0.1 * v) * x / x.abs().max()
                ex = Example(id=f"w{w}-v{v}", audio=x.float(), work_id=f"work-{w}")
                (self._refs if v == 0 else self._queries).append(ex)

    def examples(self, split: str) -> Sequence[Example]:
        return [*self._refs, *self._queries] if split == "test" else []

    def queries(self, split: str) -> Sequence[Example]:
        return self._queries if split == "test" else []

    def references(self, split: str) -> Sequence[Example]:
        return self._refs if split == "test" else []

    def fingerprint(self) -> str:
        return "toy-covers-1"


class ToyEmbedder(TinyClassifier):
    """TinyClassifier's spectral features as an L2-normalised retrieval embedding."""

    task = "retrieval"
    cam_layer = None  # embed() never runs the classifier's "conv" block: nothing for Grad-CAM

    def __init__(self, params: ToyModelParams | None = None):
        super().__init__(n_classes=3, seed=(params or ToyModelParams()).seed)
        self.params = params or ToyModelParams()
        self.labels = ()

    Params = ToyModelParams

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        net = self.module()
        spec = torch.stft(audio, net.n_fft, net.hop, window=net.window, return_complex=True)
        feats = torch.log1p(100 * spec.abs()).mean(-1)  # [B, F]
        return torch.nn.functional.normalize(feats, dim=-1)


@dataclass(frozen=True)
class SlowPGDParams(PGDParams):
    sleep: float = 0.0
    until: str = ""  # a file: wait until it exists (at most 120 s) instead of sleeping


class SlowPGD(PGD):
    """PGD that first sleeps (or waits for a file), so a test can act part-way through a
    cell however slow the machine is."""

    Params = SlowPGDParams

    def run(self, victim, audio, target, *, generator):  # noqa: ANN001
        time.sleep(self.params.sleep)
        deadline = time.monotonic() + 120
        while self.params.until and not Path(self.params.until).exists() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().run(victim, audio, target, generator=generator)


@dataclass(frozen=True)
class DyingPGDParams(PGDParams):
    marker: str = ""  # a file: the first run creates it and dies, later runs find it and live
    always: bool = False  # die on every run


class DyingPGD(PGD):
    """PGD whose process kills itself with SIGKILL (a worker lost mid-cell), once (``marker``)
    or always; a test of the ray executor's retry."""

    Params = DyingPGDParams

    def run(self, victim, audio, target, *, generator):  # noqa: ANN001
        import os
        import signal

        marker = Path(self.params.marker) if self.params.marker else None
        if self.params.always or (marker is not None and not marker.exists()):
            if marker is not None:
                marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(victim, audio, target, generator=generator)


@dataclass(frozen=True)
class MemoryBoundPGDParams(PGDParams):
    max_batch: int = 2  # more clips than this "do not fit": torch.OutOfMemoryError


class MemoryBoundPGD(PGD):
    """PGD on a device too small for big batches (the runner must halve them)."""

    Params = MemoryBoundPGDParams

    def run(self, victim, audio, target, *, generator):  # noqa: ANN001
        if audio.shape[0] > self.params.max_batch:
            raise torch.OutOfMemoryError(f"toy: {audio.shape[0]} clips do not fit")
        return super().run(victim, audio, target, generator=generator)


class OutOfRange(Attack):
    """Returns audio outside [-1, 1]: the harness must reject it."""

    def run(self, victim, audio, target, *, generator):  # noqa: ANN001
        adv = audio * 0 + 1.5
        n = audio.shape[0]
        return AttackResult(adv, torch.ones(n, dtype=torch.bool), torch.zeros(n), torch.ones(n))


class ToyFrames(Encoder):
    """Log energy and zero-crossing rate of ``frame``-sample frames: ``[B, frames, 2]`` (FAD
    in harness tests without musicnn)."""

    dim = 2
    frame = 200

    def load(self, ctx: Context) -> None:
        pass

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        n = self.frame
        frames = audio[:, : audio.shape[1] // n * n].unflatten(1, (-1, n))
        energy = frames.square().mean(-1).add(1e-8).log()
        zcr = (frames[..., 1:].sign() != frames[..., :-1].sign()).float().mean(-1)
        return torch.stack([energy, zcr], -1)


@hookimpl
def register_encoders(register):
    register("toy-frames", ToyFrames, summary="frame energy and ZCR (tests)")


@hookimpl
def register_datasets(register):
    register("toy-tones", ToyDataset, summary="seeded tones for tests")
    register("toy-covers", ToyCovers, summary="retrieval toy for tests")


class TrainModeModel(ToyModel):
    """A classifier with batch norm that forgets to call eval() (validate must catch it)."""

    def load(self, ctx=None):
        super().load(ctx)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(self.net, torch.nn.BatchNorm1d(3)).train()


class DropoutModel(ToyModel):
    """A classifier that leaves dropout on (a randomized model: the harness must measure it
    and attack it with EOT, judging over draws)."""

    def load(self, ctx=None):
        super().load(ctx)
        self.net = torch.nn.Sequential(torch.nn.Dropout(0.3), self.net).train()


@hookimpl
def register_models(register):
    register("toy-model", ToyModel, summary="random-weight classifier for tests")
    register("train-mode-model", TrainModeModel, summary="left in train mode (tests)")
    register("dropout-model", DropoutModel, summary="dropout left on (tests)")
    register("toy-embedder", ToyEmbedder, summary="spectral-average retrieval toy for tests")


@hookimpl
def register_attacks(register):
    register("slow-pgd", SlowPGD, summary="PGD that sleeps first (tests)")
    register("out-of-range", OutOfRange, summary="breaks the contract (tests)")
    register("dying-pgd", DyingPGD, summary="PGD that kills its own process (tests)")
    register("memory-bound-pgd", MemoryBoundPGD, summary="PGD that runs out of memory (tests)")


# -- defenses with known behaviour (adaptive evaluation tests) ------------------------------


@dataclass(frozen=True)
class ToyNoiseParams:
    sigma: float = 0.05


class ToyNoise(Preprocessor):
    """Honest randomized defense: Gaussian noise from the generator it is given."""

    randomized = True
    Params = ToyNoiseParams

    def forward(self, audio, generator):
        noise = torch.randn(audio.shape, generator=generator, device=audio.device)
        return (audio + self.params.sigma * noise).clamp(-1, 1)


class LyingNoise(ToyNoise):
    """Randomized but declares it is not: the harness must attack it with EOT anyway."""

    randomized = False


class ToyRound(Preprocessor):
    """Honest non-differentiable defense: rounding to 32 levels, BPDA through the identity."""

    differentiable = False

    def forward(self, audio, generator):
        return torch.round(audio * 16) / 16


class LyingRound(ToyRound):
    """Non-differentiable (detached) but declares it is differentiable."""

    differentiable = True

    def forward(self, audio, generator):
        return super().forward(audio, generator).detach()


class NaNDefense(Preprocessor):
    """Breaks the contract on every call."""

    def forward(self, audio, generator):
        return audio * float("nan")


class RaisingDefense(Preprocessor):
    def forward(self, audio, generator):
        raise RuntimeError("this defense always fails")


@dataclass(frozen=True)
class ToyLowpassParams:
    cutoff_hz: float = 4000.0


class ToyLowpass(Preprocessor):
    """Checks a rate-dependent parameter at bind, like a real filter."""

    Params = ToyLowpassParams

    def bind(self, sample_rate: int) -> None:
        super().bind(sample_rate)
        if self.params.cutoff_hz >= sample_rate / 2:
            raise ConfigError(f"cutoff {self.params.cutoff_hz} Hz is not below Nyquist",
                              key="cutoff_hz")

    def forward(self, audio, generator):
        return audio


@hookimpl
def register_defenses(register):
    register("toy-noise", ToyNoise, summary="Gaussian noise (tests)")
    register("lying-noise", LyingNoise, summary="randomized, declared deterministic (tests)")
    register("toy-round", ToyRound, summary="rounding, BPDA (tests)")
    register("lying-round", LyingRound, summary="detached, declared differentiable (tests)")
    register("nan-defense", NaNDefense, summary="returns NaN (tests)")
    register("raising-defense", RaisingDefense, summary="raises (tests)")
    register("toy-lowpass", ToyLowpass, summary="rate-checked parameter (tests)")


class WeightedDistance(SampleMetric):
    """A per-clip metric with weights, loaded by the harness (tests the metric load path)."""

    def load(self, ctx: Context) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.proj = torch.nn.Linear(1, 1)

    def compute(self, clean, adv, sample_rate):
        diff = (adv - clean).abs().mean(1, keepdim=True)
        return self.proj(diff).squeeze(1).detach()


@hookimpl
def register_metrics(register):
    register("toy-weighted", WeightedDistance, summary="a metric with weights (tests)")
