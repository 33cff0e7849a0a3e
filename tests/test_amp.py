"""amp = "bf16": forward passes under bfloat16 autocast give the float32 figures within a stated
tolerance (checked on CPU), keep the float32 cell keys unchanged when off, and say so in the
leaderboard header when on."""

from __future__ import annotations

import pytest
import torch
from test_planning import BASE

from musicbench.config import RunSettings
from musicbench.session import RunOptions, execute
from musicbench.store import Store
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import Scorer, Victim
from musicbench_plugins.attacks.pgd import PGD, PGDParams

MARGIN_TOLERANCE = 0.05
"""Largest |margin(bf16) - margin(fp32)| accepted, as a fraction of the float32 logits' spread
(bfloat16 keeps 8 bits of mantissa: relative error ~0.4% per operation)."""


def test_bf16_scores_and_attack_agree_with_float32():
    model = TinyClassifier()
    model.load()
    x = tone_batch(16, model.input_samples, seed=3)
    y = Scorer(model).predict(x)
    fp32, bf16 = Scorer(model), Scorer(model, amp="bf16")
    a, b = fp32.scores(x), bf16.scores(x)
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # autocast did run
    spread = float(a.max() - a.min())
    assert float((fp32.margin(x, y) - bf16.margin(x, y)).abs().max()) <= \
        MARGIN_TOLERANCE * spread
    assert torch.equal(fp32.predict(x), bf16.predict(x))

    def attack(amp: str) -> torch.Tensor:
        pgd = PGD(PGDParams(eps=0.01, steps=10))
        pgd.name = "pgd"
        res = pgd(Victim(model, amp=amp), x, y, generator=torch.Generator().manual_seed(0))
        return res.success

    ok32, ok16 = attack(""), attack("bf16")
    # ASR within two clips of 16 (the early stop can flip a clip sitting on the boundary)
    assert abs(int(ok32.sum()) - int(ok16.sum())) <= 2, (ok32, ok16)


def test_amp_is_part_of_the_key_only_when_on_and_named_in_the_header(tmp_path, toy_plugins):
    config = tmp_path / "run.toml"
    config.write_text(BASE.format(run="", datasets=""))
    plain = execute(RunOptions(config=config, out=tmp_path / "fp32"), toy_plugins)
    config.write_text(BASE.format(run='amp = "bf16"', datasets=""))
    half = execute(RunOptions(config=config, out=tmp_path / "bf16"), toy_plugins)
    assert not plain.failed and not half.failed
    keys32 = {r.key for r in plain.records}
    assert keys32.isdisjoint({r.key for r in half.records})
    assert all(r.spec.run.amp == "bf16" for r in half.records)
    # off: the key data has no amp at all, so float32 keys are the ones of before amp existed
    assert all("amp" not in r.spec.run.key_data() for r in plain.records)
    board = (tmp_path / "bf16" / "leaderboard.md").read_text()
    assert "bfloat16 autocast" in board
    assert "bfloat16" not in (tmp_path / "fp32" / "leaderboard.md").read_text()
    store = Store(tmp_path / "bf16" / "results.sqlite", readonly=True)
    try:
        assert len(store.cells()) == 2
    finally:
        store.close()


def test_unknown_amp_is_a_config_error():
    with pytest.raises(ValueError, match="amp"):
        RunSettings(amp="fp8")
    with pytest.raises(ValueError, match="amp"):
        Victim(TinyClassifier(), amp="fp16")
