"""PAMT building blocks: the Bark-band masking threshold and the noise shaped to it, the PPE /
FiLM / projection head, the frame-aligned InfoNCE, training the head on cached frames, and the
`pamt-distance` metric (trained on first use on toy data, cached, refused without training)."""

from __future__ import annotations

import math

import pytest
import torch

from musicbench.errors import NotTrainedError
from musicbench.testing import tone_batch
from musicbench.workspace import Workspace
from musicbench_plugins.defenses.pamt_head import (
    FiLM,
    HeadConfig,
    PamtHead,
    sequence_info_nce,
)
from musicbench_plugins.defenses.pamt_psychoacoustic import (
    MaskingModel,
    Perturbation,
    PsychoacousticPerturbation,
    band_energy,
    masking_threshold,
    shaped_noise,
    vector_size,
)
from musicbench_plugins.defenses.pamt_training import (
    CachedViews,
    TrainConfig,
    encode_views,
    evaluate,
    train_head,
)

SR = 16_000
MODEL = MaskingModel()


def _db(x: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(x)


def _tone(freq: float = 1000.0, amplitude: float = 0.5, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t))[None]


def _all_bands(batch: int, level: float, start: float = 0.0, length: float = 1.0,
               duration: float = 1.0) -> Perturbation:
    return Perturbation(torch.full((batch,), level), torch.ones(batch, MODEL.n_bands,
                                                                 dtype=torch.bool),
                        torch.full((batch,), start), torch.full((batch,), length), duration)


def _band_of(freq: float) -> int:
    f = MODEL.bin_frequencies()
    return int(MODEL.band_matrix()[int((f - freq).abs().argmin())].argmax())


# -- the masking threshold -------------------------------------------------------------------


def test_threshold_rises_at_a_pure_tone_and_is_low_far_from_it():
    x = _tone(1000.0)
    thr = _db(masking_threshold(x, MODEL)[0, 5:-5].mean(0))  # [bands], steady frames
    tone_band, far_band = _band_of(1000.0), _band_of(5000.0)
    assert thr.argmax() == tone_band
    assert thr[tone_band] - thr[far_band] > 40
    # the spreading function falls off with distance from the masker on both sides
    assert thr[tone_band] > thr[tone_band + 2] > thr[tone_band + 6]
    assert thr[tone_band] > thr[tone_band - 2]
    # far away only the absolute threshold of hearing is left (tens of dB, not the tone's ~90)
    assert thr[far_band] < 30
    # below the tone's energy by the tonal offset (a tone masks noise only 14.5 + i dB down)
    energy = _db(band_energy(x, MODEL)[0, 5:-5].mean(0))
    assert energy[tone_band] - thr[tone_band] > 14.5 + tone_band


def test_shaped_noise_sits_below_the_threshold_where_white_noise_pokes_out_far_away():
    x = _tone(1000.0)
    thr = masking_threshold(x, MODEL)[0, 5:-5].mean(0)
    g = torch.Generator().manual_seed(0)
    shaped = band_energy(shaped_noise(x, _all_bands(1, -6.0), MODEL, g), MODEL)[0, 5:-5].mean(0)
    tone_band, far_band = _band_of(1000.0), _band_of(5000.0)
    assert _db(shaped[tone_band] / thr[tone_band]) < -3
    assert _db(shaped[far_band] / thr[far_band]) < -3
    # white noise as loud in total as the shaped noise: masked near the tone, audible far away
    white = torch.randn(x.shape, generator=g)
    n = shaped_noise(x, _all_bands(1, -6.0), MODEL, torch.Generator().manual_seed(0))
    white = white * n.square().mean().sqrt() / white.square().mean().sqrt()
    w = band_energy(white, MODEL)[0, 5:-5].mean(0)
    assert _db(w[tone_band] / thr[tone_band]) < 0
    assert _db(w[far_band] / thr[far_band]) > 10


@pytest.mark.parametrize("level", [-10.0, 0.0, 10.0])
def test_noise_at_level_l_has_l_db_re_threshold_in_every_band(level):
    x = tone_batch(2, SR, seed=3)  # harmonic tones plus a noise floor: a smooth threshold
    thr = masking_threshold(x, MODEL)
    noise = shaped_noise(x, _all_bands(2, level), MODEL, torch.Generator().manual_seed(1))
    ratio = (band_energy(noise, MODEL) / thr)[:, 3:-3].mean(1)  # [B, bands], inner frames
    assert (_db(ratio) - level).abs().max() < 1.5


def test_noise_stays_in_its_bands_and_time_span():
    x = tone_batch(1, SR, seed=4)
    bands = torch.zeros(1, MODEL.n_bands, dtype=torch.bool)
    bands[0, 10:14] = True
    p = Perturbation(torch.tensor([0.0]), bands, torch.tensor([0.25]), torch.tensor([0.5]), 1.0)
    noise = shaped_noise(x, p, MODEL, torch.Generator().manual_seed(2))
    assert noise[0, : int(0.25 * SR)].abs().max() == 0
    assert noise[0, int(0.75 * SR) :].abs().max() == 0
    energy = band_energy(noise, MODEL)[0, 20:40].mean(0)  # frames inside the span
    inside, outside = energy[10:14].sum(), energy[:8].sum() + energy[16:].sum()
    assert _db(inside / outside) > 30


def test_perturbation_is_determined_by_the_generator():
    x = tone_batch(3, SR // 2, seed=5)
    pert = PsychoacousticPerturbation()
    a, pa = pert.perturb(x, torch.Generator().manual_seed(7))
    b, pb = pert.perturb(x, torch.Generator().manual_seed(7))
    c, _ = pert.perturb(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(pa.vector(), pb.vector())
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.abs().max() <= 1
    v = pa.vector()
    assert v.shape == (3, vector_size(MODEL))
    assert ((v[:, 3:] == 0) | (v[:, 3:] == 1)).all() and (v[:, 3:].sum(1) >= 1).all()


def test_masking_model_rejects_an_fft_too_short_for_the_lowest_bands():
    with pytest.raises(ValueError, match="without an FFT bin"):
        MaskingModel(n_fft=64, hop=32)


# -- the head ---------------------------------------------------------------------------------

CFG = HeadConfig(input_dim=12, param_dim=5, d_model=16, layers=2, heads=2, ffn_mult=2,
                 dropout=0.0, cond_dim=8, ppe_hidden=16, out_dim=6)


def test_head_ppe_and_film_shapes():
    torch.manual_seed(0)
    head = PamtHead(CFG)
    frames, params = torch.randn(3, 7, 12), torch.randn(3, 5)
    assert head.ppe(params).shape == (3, 8) and head.ppe.null(3).shape == (3, 8)
    assert head(frames, params).shape == (3, 7, 6)
    assert head(frames).shape == (3, 7, 6)
    assert len(head.layers) == 2
    film = FiLM(8, 16, identity_init=False)
    assert film(torch.randn(3, 7, 16), torch.randn(3, 8)).shape == (3, 7, 16)
    with pytest.raises(ValueError, match="frames"):
        head(torch.randn(3, 7, 11))


def test_clean_branch_uses_the_null_vector():
    torch.manual_seed(0)
    head = PamtHead(CFG).eval()
    for layer in head.layers:  # make FiLM depend on c (it starts as the identity)
        torch.nn.init.normal_(layer.film.linear.weight)
    frames = torch.randn(2, 5, 12)
    clean = head(frames)
    assert torch.allclose(clean, head(frames, None))
    assert not torch.allclose(clean, head(frames, torch.randn(2, 5)))
    with torch.no_grad():
        head.ppe.null_vector.add_(1.0)
    assert not torch.allclose(clean, head(frames))
    (head(frames).sum()).backward()
    assert head.ppe.null_vector.grad is not None
    assert head.ppe.mlp[0].weight.grad is None  # the PPE is not used for clean views


def test_film_starts_as_identity():
    film = FiLM(4, 6)
    y = torch.randn(2, 3, 6)
    assert torch.equal(film(y, torch.randn(2, 4)), y)


@pytest.mark.parametrize("negatives", ["batch", "clip", "frame"])
def test_info_nce_is_lower_for_aligned_than_for_shuffled_pairs(negatives):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 10, 8, generator=g)
    aligned = a + 0.1 * torch.randn(a.shape, generator=g)
    shuffled = aligned[:, torch.randperm(10, generator=g)][torch.randperm(4, generator=g)]
    lo = sequence_info_nce(a, aligned, negatives=negatives)
    hi = sequence_info_nce(a, shuffled, negatives=negatives)
    assert lo < 0.5 < hi
    # fewer negatives, never a higher loss
    assert sequence_info_nce(a, aligned, negatives=negatives, exclude_radius=2) <= lo + 1e-6


# -- training on cached frames -----------------------------------------------------------------


def _toy_views(n: int = 12, views: int = 2, frames: int = 16) -> CachedViews:
    """Clean frames of n random sequences; perturbed views = clean + noise scaled by the
    first parameter (the level): a toy the head can learn to align."""
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(n, frames, 12, generator=g)
    params = torch.rand(n, views, 5, generator=g)
    noise = torch.randn(n, views, frames, 12, generator=g)
    perturbed = clean[:, None] + 1.5 * params[..., :1, None] * noise
    return CachedViews(clean, perturbed, params)


def test_tiny_head_trains_on_cached_frames_and_its_loss_falls():
    views, valid = _toy_views(), _toy_views(8)
    config = TrainConfig(epochs=15, batch_size=4, learning_rate=3e-3, window_frames=8,
                         exclude_radius=1)
    torch.manual_seed(0)
    head = PamtHead(CFG)
    before = evaluate(head, valid, config)
    history = train_head(head, views, config, torch.Generator().manual_seed(0), valid=valid)
    assert len(history) == 15 and not head.training
    assert history[-1]["loss"] < history[0]["loss"]
    assert evaluate(head, valid, config) < before
    assert min(r["valid_loss"] for r in history) == pytest.approx(evaluate(head, valid, config),
                                                                  abs=1e-4)


def test_encode_views_caches_clean_and_perturbed_frames():
    x = tone_batch(3, 4000, seed=9)
    embed = lambda a: a.unflatten(1, (-1, 200))[..., :12]  # noqa: E731  [B, 20, 12]
    cached = encode_views(embed, x, PsychoacousticPerturbation(), 2,
                          torch.Generator().manual_seed(0), batch_size=2)
    assert cached.clean.shape == (3, 20, 12) and cached.perturbed.shape == (3, 2, 20, 12)
    assert cached.params.shape == (3, 2, vector_size(MODEL))
    assert not torch.equal(cached.perturbed[:, 0], cached.clean)
    again = encode_views(embed, x, PsychoacousticPerturbation(), 2,
                         torch.Generator().manual_seed(0), batch_size=2)
    assert torch.equal(again.perturbed, cached.perturbed)


# -- the pamt-distance metric -------------------------------------------------------------------

TINY = {"train_dataset": "toy-tones", "train_dataset_params": {"clips": 24, "seconds": 0.5},
        "encoder": "toy-frames", "d_model": 8, "layers": 2, "heads": 2, "ffn_mult": 2,
        "cond_dim": 4, "ppe_hidden": 8, "out_dim": 4, "train_clips": 6, "valid_clips": 4,
        "views": 2, "crop_seconds": 0, "epochs": 2, "batch_size": 4, "window_frames": 16,
        "exclude_radius": 1}


def _metric(plugins, cache, *, allow_training: bool = True, params: dict = TINY):
    ws = Workspace(plugins, cache_dir=cache, device=torch.device("cpu"),
                   allow_training=allow_training)
    metric = ws.make("metric", "pamt-distance", params)
    metric.load(ws.ctx)
    return metric


def test_pamt_distance_trains_on_first_use_and_measures(toy_plugins, tmp_path):
    metric = _metric(toy_plugins, tmp_path)
    [checkpoint] = (tmp_path / "metrics").glob("pamt-distance-*.safetensors")
    assert metric.checkpoint_key() == checkpoint.stem
    assert metric.training_summary["dataset"] == "toy-tones"
    assert metric.level == "sample" and not metric.higher_is_better
    x = tone_batch(3, 8000, seed=1)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    same = metric.compute(x, x.clone(), SR)
    assert same.shape == (3,) and torch.allclose(same, torch.zeros(3), atol=1e-6)
    quiet = metric.compute(x, (x + 0.003 * noise).clamp(-1, 1), SR)
    loud = metric.compute(x, (x + 0.1 * noise).clamp(-1, 1), SR)
    assert quiet.shape == (3,) and torch.isfinite(loud).all()
    assert (loud > quiet).all() and (quiet > 0).all()
    # a second load reads the cached head without training, and agrees
    again = _metric(toy_plugins, tmp_path, allow_training=False)
    assert torch.equal(again.compute(x, (x + 0.1 * noise).clamp(-1, 1), SR), loud)
    assert again.weights_digest() == metric.weights_digest()


def test_pamt_distance_without_weights_and_training_refused_raises(toy_plugins, tmp_path):
    with pytest.raises(NotTrainedError, match="pamt-distance"):
        _metric(toy_plugins, tmp_path, allow_training=False)


def test_pamt_distance_unloaded_says_why(toy_plugins, tmp_path):
    ws = Workspace(toy_plugins, cache_dir=tmp_path, device=torch.device("cpu"))
    metric = ws.make("metric", "pamt-distance", TINY)
    x = tone_batch(2, 4000)
    with pytest.raises(RuntimeError, match="load"):
        metric.compute(x, x, SR)


def test_pamt_distance_rejects_bad_params(toy_plugins, tmp_path):
    from musicbench.errors import ConfigError

    ws = Workspace(toy_plugins, cache_dir=tmp_path, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="heads"):
        ws.make("metric", "pamt-distance", {"d_model": 10, "heads": 4})
    with pytest.raises(ConfigError, match="condition"):
        ws.make("metric", "pamt-distance", {"condition": "ppe"})


def test_a_metric_with_weights_is_loaded_by_the_harness_and_keys_its_cells(tmp_path):
    """The workspace loads a metric before use (training it on first use), and the planner
    puts its weights digest into the key of every cell that reports it."""
    from musicbench.cells import CellRun

    with_weights = CellRun(0, 8, 8, 0, "", ("lsd",), metric_weights=(("pamt-distance", "ab"),))
    without = CellRun(0, 8, 8, 0, "", ("lsd",))
    assert "metric_weights" not in without.key_data()
    assert with_weights.key_data()["metric_weights"] == [["pamt-distance", "ab"]]
    other = CellRun(0, 8, 8, 0, "", ("lsd",), metric_weights=(("pamt-distance", "cd"),))
    assert with_weights.key_data() != other.key_data()
    from conftest import run_toy_config

    outcome, _ = run_toy_config(tmp_path, """
[run]
samples = 4
device = "cpu"
fad_encoder = ""
metrics = ["lsd", "toy-weighted"]
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
[[defenses]]
name = "none"
[[attacks]]
name = "fgsm"
eps = 0.01
""")
    record = outcome.records[0]
    assert record.status == "ok", record.error
    names = [n for n, _ in record.spec.run.metric_weights]
    assert names == ["toy-weighted"]
    attacked = [s for s in record.samples if s.attacked]
    assert attacked and all("toy-weighted" in s.metrics for s in attacked)
