"""Tiny plugins for harness tests: a seeded tone dataset, a random-weight classifier, a slow
PGD (to kill runs part-way) and an attack that breaks the contract. Registered in-process by
the fixtures, or through a generated entry point for subprocess tests."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from musicbench import hookimpl
from musicbench.interfaces import Attack, AttackResult, Context, Dataset, Example
from musicbench.testing import TinyClassifier, tone_batch
from musicbench_plugins.attacks.pgd import PGD, PGDParams


@dataclass(frozen=True)
class ToyDatasetParams:
    clips: int = 24
    seconds: float = 0.25


class ToyDataset(Dataset):
    """Seeded tones in 3 classes; works are single clips."""

    task = "classification"
    sample_rate = 16_000
    labels = ("class-0", "class-1", "class-2")
    Params = ToyDatasetParams

    def prepare(self, ctx: Context) -> None:
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


@dataclass(frozen=True)
class SlowPGDParams(PGDParams):
    sleep: float = 0.0


class SlowPGD(PGD):
    """PGD that first sleeps, so a test can kill a run part-way through a cell."""

    Params = SlowPGDParams

    def run(self, victim, audio, target, *, generator):  # noqa: ANN001
        time.sleep(self.params.sleep)
        return super().run(victim, audio, target, generator=generator)


class OutOfRange(Attack):
    """Returns audio outside [-1, 1]: the harness must reject it."""

    def run(self, victim, audio, target, *, generator):  # noqa: ANN001
        adv = audio * 0 + 1.5
        n = audio.shape[0]
        return AttackResult(adv, torch.ones(n, dtype=torch.bool), torch.zeros(n), torch.ones(n))


@hookimpl
def register_datasets(register):
    register("toy-tones", ToyDataset, summary="seeded tones for tests")


@hookimpl
def register_models(register):
    register("toy-model", ToyModel, summary="random-weight classifier for tests")


@hookimpl
def register_attacks(register):
    register("slow-pgd", SlowPGD, summary="PGD that sleeps first (tests)")
    register("out-of-range", OutOfRange, summary="breaks the contract (tests)")
