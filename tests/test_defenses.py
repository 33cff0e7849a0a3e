"""The built-in preprocessing defenses keep the Preprocessor contract, declare their flags
honestly, reject bad parameters, and do what each one is for (measured on test signals)."""

from __future__ import annotations

import math

import pytest
import torch

from musicbench.api import ConfigError, PluginSystem
from musicbench.params import component_params

SR = 16_000

VARIANTS = [
    ("lowpass", {}),
    ("resample", {}),
    ("resample", {"random_rate": [6000, 12000]}),
    ("quantize", {}),
    ("mp3", {}),
    ("noise", {}),
    ("time-shift", {}),
    ("time-shift", {"mode": "crop"}),
    ("denoise-spectral", {}),
    ("denoise-spectral", {"mask": "hard"}),
]
IDS = [name + "".join(f"-{v}" for v in params.values()) for name, params in VARIANTS]


@pytest.fixture(scope="module")
def plugins() -> PluginSystem:
    return PluginSystem()


def make(plugins: PluginSystem, name: str, params: dict | None = None, *, rate: int | None = SR):
    """A defense built the way the harness builds it (registry, validated params), bound."""
    cls = plugins.get("defense", name).load()
    checked = component_params(cls, params or {}, table=f"defenses.{name}",
                               what=f"defense '{name}'")
    defense = cls() if checked is None else cls(checked)
    defense.name = name
    if rate is not None:
        defense.bind(rate)
    return defense


def tones(batch: int = 3, seconds: float = 1.0, noise: float = 0.05, seed: int = 0,
          rate: int = SR) -> torch.Tensor:
    """``[batch, T]``: a few tones per row plus white noise, peak below 1."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    freqs = 200 + 1800 * torch.rand(batch, 3, 1, generator=g)
    x = (torch.sin(2 * math.pi * freqs * t).sum(1) * 0.2
         + noise * torch.randn(batch, t.numel(), generator=g))
    return x.clamp(-1, 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def power_above(x: torch.Tensor, hz: float, rate: int = SR) -> torch.Tensor:
    """Fraction of each row's power above ``hz``."""
    spec = torch.fft.rfft(x, dim=-1).abs().square()
    freqs = torch.fft.rfftfreq(x.shape[-1], 1 / rate)
    return spec[:, freqs > hz].sum(-1) / spec.sum(-1)


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.square().sum(-1) / (noisy - clean).square().sum(-1))


# -- the contract ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
def test_output_keeps_shape_dtype_range_and_leaves_the_input_alone(plugins, name, params):
    defense = make(plugins, name, params)
    x = tones(seconds=0.77)  # an odd length
    x[0, :50] = 1.0  # full-scale samples must stay in range
    before = x.clone()
    y = defense.forward(x, gen(0))
    assert torch.equal(x, before), "forward modified its input"
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    assert not torch.equal(y, x), "the defense did nothing"


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
def test_deterministic_under_a_fixed_generator_and_random_only_when_declared(plugins, name,
                                                                           params):
    defense = make(plugins, name, params)
    x = tones()
    same = [defense.forward(x, gen(5)) for _ in range(2)]
    assert torch.equal(*same), "two calls with one generator state differ"
    other = defense.forward(x, gen(6))
    if defense.randomized:
        assert not torch.equal(same[0], other), "declared randomized, but draws agree"
    else:
        assert torch.equal(same[0], other), "declared deterministic, but draws differ"


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=IDS)
def test_declared_gradients_are_there_and_bpda_surrogates_give_them(plugins, name, params):
    defense = make(plugins, name, params)
    x = tones(seconds=1.5).requires_grad_(True)
    weights = torch.randn(x.shape, generator=gen(3))
    if defense.differentiable:
        out = defense.forward(x, gen(0))
    else:
        assert not defense.forward(x, gen(0)).requires_grad, (
            "declared non-differentiable but forward returns a graph")
        out = defense.surrogate(x)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.isfinite(grad).all() and grad.norm() > 1e-3 * weights.norm()


def test_flags_follow_the_parameters_per_instance(plugins):
    fixed, drawn = make(plugins, "resample"), make(plugins, "resample",
                                                   {"random_rate": [6000, 12000]})
    assert not fixed.randomized and drawn.randomized
    assert type(drawn).randomized is False, "the class flag must not change"
    soft, hard = make(plugins, "denoise-spectral"), make(plugins, "denoise-spectral",
                                                         {"mask": "hard"})
    assert soft.differentiable and not hard.differentiable
    assert type(hard).differentiable is True
    assert make(plugins, "noise").randomized and make(plugins, "time-shift").randomized
    assert not make(plugins, "quantize").differentiable and not make(plugins, "mp3").differentiable


@pytest.mark.parametrize("name", ["lowpass", "resample", "mp3", "time-shift"])
def test_forward_before_bind_says_what_is_missing(plugins, name):
    defense = make(plugins, name, rate=None)
    with pytest.raises(RuntimeError, match="bind"):
        defense.forward(tones(), gen(0))


# -- bad parameters -------------------------------------------------------------------------

BAD_PARAMS = [
    ("lowpass", {"cutoff_hz": math.inf}),
    ("lowpass", {"cutoff_hz": math.nan}),
    ("lowpass", {"cutoff_hz": -100.0}),
    ("lowpass", {"zeros": 0.0}),
    ("resample", {"rate_hz": 0}),
    ("resample", {"random_rate": [12000, 6000]}),
    ("resample", {"random_rate": [8001, 8099]}),  # no multiple of rate_step_hz inside
    ("resample", {"rolloff": math.nan}),
    ("quantize", {"bits": 1}),
    ("quantize", {"bits": 17}),
    ("mp3", {"bitrate_kbps": 0}),
    ("noise", {"sigma": math.inf}),
    ("noise", {"sigma": math.nan}),
    ("noise", {"sigma": -0.1}),
    ("noise", {"sigma": 0.0}),
    ("time-shift", {"max_shift_seconds": math.inf}),
    ("time-shift", {"max_shift_seconds": -1.0}),
    ("time-shift", {"mode": "reflect"}),
    ("denoise-spectral", {"threshold_db": math.nan}),
    ("denoise-spectral", {"softness_db": 0.0}),
    ("denoise-spectral", {"noise_quantile": 1.0}),
    ("denoise-spectral", {"reduction": math.inf}),
    ("denoise-spectral", {"mask": "binary"}),
    ("denoise-spectral", {"hop_length": 1024}),
]


@pytest.mark.parametrize(("name", "params"), BAD_PARAMS,
                         ids=[f"{n}-{next(iter(p))}={next(iter(p.values()))}"
                              for n, p in BAD_PARAMS])
def test_bad_parameters_are_config_errors_naming_the_table(plugins, name, params):
    with pytest.raises(ConfigError, match=rf"\[defenses\.{name}\]"):
        make(plugins, name, params, rate=None)


BAD_AT_RATE = [
    ("lowpass", {"cutoff_hz": 8000.0}, SR, "cutoff_hz"),
    ("lowpass", {"cutoff_hz": 12000.0}, SR, "cutoff_hz"),
    ("resample", {"rate_hz": 16000}, SR, "rate_hz"),
    ("resample", {"random_rate": [8000, 16000]}, SR, "random_rate"),
    ("mp3", {"bitrate_kbps": 320}, SR, "bitrate_kbps"),  # MPEG-2 tops out at 160
    ("mp3", {"bitrate_kbps": 20}, SR, "bitrate_kbps"),
    ("mp3", {"bitrate_kbps": 8}, 44_100, "bitrate_kbps"),  # MPEG-1 starts at 32
    ("mp3", {}, 20_000, "bitrate_kbps"),  # no MPEG mode at 20 kHz
    ("time-shift", {"max_shift_seconds": 1e-6}, SR, "max_shift_seconds"),
]


@pytest.mark.parametrize(("name", "params", "rate", "key"), BAD_AT_RATE,
                         ids=[f"{n}-{r}-{p}" for n, p, r, _ in BAD_AT_RATE])
def test_rate_dependent_parameters_fail_at_bind_naming_table_and_key(plugins, name, params,
                                                                    rate, key):
    defense = make(plugins, name, params, rate=None)
    with pytest.raises(ConfigError) as info:
        defense.bind(rate)
    assert info.value.table == f"defenses.{name}" and info.value.key == key


def test_an_illegal_mp3_bitrate_lists_the_legal_ones(plugins):
    with pytest.raises(ConfigError, match="8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, "
                                          "144, 160"):
        make(plugins, "mp3", {"bitrate_kbps": 192})


# -- each defense does its job --------------------------------------------------------------


def test_lowpass_removes_the_band_above_its_cutoff_and_keeps_the_band_below(plugins):
    x = 0.2 * torch.randn(2, SR, generator=gen(1))
    y = make(plugins, "lowpass", {"cutoff_hz": 2000.0}).forward(x, gen(0))
    assert (power_above(y, 2500) < 1e-3).all()  # 30 dB down past the transition band

    def below(z: torch.Tensor) -> torch.Tensor:  # power under 1.5 kHz
        return (1 - power_above(z, 1500)) * z.square().sum(-1)
    assert (below(y) > 0.95 * below(x)).all()


def test_resample_removes_the_band_above_the_lower_nyquist(plugins):
    x = 0.2 * torch.randn(2, SR, generator=gen(1))
    y = make(plugins, "resample", {"rate_hz": 6000}).forward(x, gen(0))
    assert (power_above(y, 3200) < 1e-3).all()
    assert (power_above(x, 3200) > 0.5).all()


def test_random_resample_draws_a_rate_per_row(plugins):
    x = (0.2 * torch.randn(1, SR, generator=gen(1))).expand(6, -1).contiguous()
    y = make(plugins, "resample", {"random_rate": [4000, 12000]}).forward(x, gen(0))
    bandwidths = {round(float(power_above(row[None], 2500)), 4) for row in y}
    assert len(bandwidths) > 1, "every row got the same rate"


def test_quantize_leaves_at_most_two_to_the_bits_levels_within_half_a_step(plugins):
    x = torch.linspace(-1, 1, 10_001)[None]
    for bits in (2, 3, 8):
        y = make(plugins, "quantize", {"bits": bits}).forward(x, gen(0))
        assert y.unique().numel() <= 2 ** bits
        step = 2.0 ** (1 - bits)
        inside = x < 1 - step  # the top level is 1 - step, as in signed PCM
        assert ((y - x).abs()[inside] <= step / 2 + 1e-6).all()


@pytest.mark.parametrize(("rate", "kbps"), [(SR, 8), (SR, 32), (SR, 64), (SR, 160),
                                            (44_100, 128)])
def test_mp3_output_is_sample_aligned_with_its_input(plugins, rate, kbps):
    """Cross-correlation of input and output peaks at lag 0 (at bitrates whose files carry
    LAME's gapless info tag and at those too small for it)."""
    from musicbench_plugins.defenses.lowpass import lowpass

    x = 0.3 * lowpass(torch.randn(1, rate + 123, generator=gen(2)), 1500.0, rate)
    y = make(plugins, "mp3", {"bitrate_kbps": kbps}, rate=rate).forward(x, gen(0))
    assert y.shape == x.shape
    n = 2 * x.shape[1]
    xc = torch.fft.irfft(torch.fft.rfft(y[0], n) * torch.fft.rfft(x[0], n).conj(), n)
    lag = int(xc.argmax())
    assert (lag if lag < x.shape[1] else lag - n) == 0
    assert snr_db(x, y) > 3, "the decoded audio should resemble the input"


def test_mp3_surrogate_follows_the_codec_and_bpda_runs_it_once(plugins):
    """BPDA through the codec's per-bin gain: it cuts where the codec cuts, is closer to the
    codec's output than the identity, and the forward that follows reuses its decode."""
    low = make(plugins, "mp3", {"bitrate_kbps": 8})
    assert low.bandwidth_hz is not None and low.bandwidth_hz < 4000
    x = tones(2, noise=0.1)
    s = low.surrogate(x)
    assert power_above(s, low.bandwidth_hz + 500).max() < 1e-3
    calls = []
    encode = low._encode_decode
    low._encode_decode = lambda clips: calls.append(1) or encode(clips)
    y = low.forward(x, gen(0))  # BPDA's forward on the surrogate's input: no second decode
    assert not calls and power_above(y, low.bandwidth_hz + 500).max() < 0.02
    closer = (y - s).norm(dim=1) / (y - x).norm(dim=1)
    assert (closer < 0.8).all(), closer
    low.forward(x, gen(0))  # the kept decode is used once
    assert calls == [1]


def test_noise_adds_gaussian_noise_of_the_given_sigma(plugins):
    x = 0.1 * tones(noise=0.0)
    y = make(plugins, "noise", {"sigma": 0.02}).forward(x, gen(0))
    assert abs(float((y - x).std()) - 0.02) < 0.001
    assert abs(float((y - x).mean())) < 0.001


@pytest.mark.parametrize("mode", ["circular", "crop"])
def test_time_shift_moves_each_row_by_at_most_the_maximum(plugins, mode):
    x = tones(batch=4)
    most = round(0.01 * SR)
    y = make(plugins, "time-shift", {"max_shift_seconds": 0.01, "mode": mode}).forward(x, gen(0))
    shifts = []
    for row_x, row_y in zip(x, y, strict=True):
        for s in range(-most, most + 1):
            rolled = torch.roll(row_x, s)
            if mode == "crop":  # the vacated samples are zero
                if s > 0:
                    rolled[:s] = 0
                elif s < 0:
                    rolled[s:] = 0
            if torch.equal(rolled, row_y):
                shifts.append(s)
                break
        else:
            pytest.fail(f"a row is not a {mode} shift of at most {most} samples")
    assert len(set(shifts)) > 1, "rows should draw their own shifts"


@pytest.mark.parametrize("mask", ["soft", "hard"])
def test_spectral_gating_raises_the_snr_of_notes_in_noise(plugins, mask):
    t = torch.arange(2 * SR) / SR
    notes = torch.zeros_like(t)
    for i, f in enumerate((330.0, 440.0, 554.0, 660.0)):  # one note per half second
        inside = (t >= 0.5 * i) & (t < 0.5 * (i + 1))
        notes = notes + inside * 0.3 * torch.sin(2 * math.pi * f * t)
    clean = notes[None]
    noisy = clean + 0.03 * torch.randn(clean.shape, generator=gen(4))
    y = make(plugins, "denoise-spectral", {"mask": mask}).forward(noisy, gen(0))
    before, after = float(snr_db(clean, noisy)), float(snr_db(clean, y))
    assert after > before + 6, (before, after)
