"""benchmarks/attack_cost.py: the meter counts every pass the network makes in an attack call,
splits model from non-model time without overlap, and leaves nothing patched behind."""

from __future__ import annotations

import torch
from conftest import benchmark_script

from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import Scorer, Victim
from musicbench_plugins.attacks.pgd import PGD, PGDParams


def _pgd(steps: int) -> PGD:
    attack = PGD(PGDParams(eps=1e-9, steps=steps, step_size=1e-10))  # nothing is fooled
    attack.name = "pgd"
    return attack


def _tiny() -> TinyClassifier:
    model = TinyClassifier()
    model.load()
    return model


def test_every_network_pass_of_an_attack_call_is_counted():
    cost_mod = benchmark_script("attack_cost")
    model = _tiny()
    x = tone_batch(3, model.input_samples, seed=1)
    with torch.no_grad():
        y = model.forward(x).argmax(-1)
    meter = cost_mod.CostMeter(torch.device("cpu"))
    with meter.attached(model.module()):
        result = meter.measure(_pgd(4), Victim(model), x, y, torch.Generator().manual_seed(0))
    assert int(result.steps.min()) == 4
    c = meter.cost
    # 4 steps of forward + backward on 3 clips, then the harness's re-scoring forward
    assert c.forward_rows == 3 * (4 + 1)
    assert c.backward_rows == 3 * 4
    assert c.grad_other == 0.0 and c.inpainter == 0.0 and c.cma == 0.0
    assert 0 < c.net_forward and 0 < c.net_backward
    assert c.network <= c.model <= c.total


def test_windows_divide_rows_into_clip_passes():
    cost_mod = benchmark_script("attack_cost")
    model = _tiny()
    clip = int(2.5 * model.input_samples)  # three windows, the last aligned to the end
    assert cost_mod.windows_per_clip(clip, model.input_samples) == 3
    x = tone_batch(2, clip, seed=2)
    y = Scorer(model).predict(x)
    meter = cost_mod.CostMeter(torch.device("cpu"))
    with meter.attached(model.module()):
        meter.measure(_pgd(2), Victim(model), x, y, torch.Generator().manual_seed(0))
    cell = cost_mod.CellCost("pgd", "tiny", 2, 0, 0.0, meter.cost, 3, (0.0, 0.0))
    assert cell.forward_passes == 3 and cell.backward_passes == 2


def test_a_gradient_that_never_reaches_the_network_is_not_model_time():
    cost_mod = benchmark_script("attack_cost")
    model = _tiny()
    meter = cost_mod.CostMeter(torch.device("cpu"))
    v = torch.randn(2, model.input_samples, requires_grad=True)
    with meter.attached(model.module()):
        torch.autograd.grad(v.square().sum(), v)  # e.g. MAIA-WB's distance gradient
    assert meter.cost.grad_other > 0 and meter.cost.grad_model == 0.0
    assert meter.cost.backward_rows == 0


def test_nothing_stays_patched():
    cost_mod = benchmark_script("attack_cost")
    model = _tiny()
    before = (Victim._logits_draws, torch.autograd.grad, torch.Tensor.backward)
    inpainter = type("Inp", (), {"inpaint": lambda self, a, m, z: a,
                                 "sample_latent": lambda self, b, g: torch.zeros(b, 1)})()
    meter = cost_mod.CostMeter(torch.device("cpu"))
    with meter.attached(model.module(), inpainter=inpainter):
        assert torch.autograd.grad is not before[1]
        inpainter.inpaint(torch.zeros(1, 4), None, None)
    assert (Victim._logits_draws, torch.autograd.grad, torch.Tensor.backward) == before
    assert "inpaint" not in vars(inpainter) and meter.cost.inpainter > 0
    net = model.module()
    assert not net._forward_hooks and not net._forward_pre_hooks
