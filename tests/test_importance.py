"""MAIA's importance analysis: Grad-CAM finds what drives the decision, occlusion finds a
planted chunk, both are counted by the Victim; region masks touch only their regions."""

from __future__ import annotations

import pytest
import scipy.signal
import torch
from maia_doubles import LoudnessClassifier, PatternInpainter

from musicbench.errors import GradientRefusedError
from musicbench.testing import TinyClassifier
from musicbench.victim import Victim, begin_batch, judge
from musicbench_plugins.attacks.gradcam import cam_regions, gradcam, row_bands
from musicbench_plugins.attacks.maia_masks import RegionFiller, Regions, top_segments
from musicbench_plugins.attacks.occlusion import (
    occlusion_cost,
    occlusion_regions,
    tukey,
)

SR = 16_000


def _burst_clip(samples: int, start: int, length: int, *, freq: float = 1000.0,
                seed: int = 0) -> torch.Tensor:
    """Quiet noise with one loud tone burst at ``[start, start + length)``: ``[1, samples]``."""
    g = torch.Generator().manual_seed(seed)
    x = 0.01 * torch.randn(1, samples, generator=g)
    t = torch.arange(length) / SR
    x[0, start : start + length] += 0.8 * torch.sin(2 * torch.pi * freq * t)
    return x


def _overlaps(start: int, length: int, a: int, b: int) -> bool:
    return start < b and a < start + length


def test_gradcam_ranks_the_loud_burst_of_a_loudness_model_first():
    model = LoudnessClassifier()
    # 1 s = two scoring windows of 0.5 s; the burst sits in the second one, off-centre, so a
    # time axis mapped backwards or a window placed wrongly would miss it.
    x = torch.cat([_burst_clip(16_000, 11_000, 1_600), _burst_clip(16_000, 2_000, 1_600, seed=1)])
    victim = Victim(model)
    begin_batch(victim, 2)
    y = torch.ones(2, dtype=torch.long)  # "loud"
    cam = gradcam(victim, x, y)
    regions = cam_regions(cam, 16_000, 800, 2)
    assert _overlaps(int(regions.start[0, 0]), 800, 11_000, 12_600)
    assert _overlaps(int(regions.start[1, 0]), 800, 2_000, 3_600)
    assert regions.valid.all()
    second = regions.start[:, 1]
    assert ((second - regions.start[:, 0]).abs() >= 800).all()  # never overlapping
    # one counted forward-and-gradient call per clip
    assert victim.queries.tolist() == [1, 1] and victim.gradient_calls.tolist() == [1, 1]


@pytest.mark.parametrize(("freq", "raises_true_class"),
                         [(1000.0, True), (7000.0, True), (200.0, False), (5000.0, False)])
def test_gradcam_on_tiny_classifier_follows_the_evidence_for_the_class(freq, raises_true_class):
    """A burst that raises the predicted class's logit is where Grad-CAM looks first; a burst
    that lowers it is not (Grad-CAM keeps positive evidence only)."""
    model = TinyClassifier()
    model.load()
    victim = Victim(model)
    background = _burst_clip(8_000, 0, 0)
    x = _burst_clip(8_000, 5_600, 800, freq=freq)
    with torch.no_grad():
        y = judge(victim).predict(x)
        true_logit = lambda a: judge(victim).scores(a)[0, y[0]]
        assert bool(true_logit(x) > true_logit(background)) == raises_true_class
    begin_batch(victim, 1)
    regions = cam_regions(gradcam(victim, x, y), 8_000, 800, 1)
    assert _overlaps(int(regions.start[0, 0]), 800, 5_600, 6_400) == raises_true_class


def test_gradcam_needs_a_white_box_victim():
    model = LoudnessClassifier()
    victim = Victim(model, allow_gradients=False)
    begin_batch(victim, 1)
    with pytest.raises(GradientRefusedError):
        gradcam(victim, _burst_clip(8_000, 100, 100), torch.ones(1, dtype=torch.long))


def test_cam_rows_map_to_the_front_end_filterbank():
    from musicbench_plugins.models.style_cnn import StyleCNNNet

    net = StyleCNNNet(n_classes=3, width=2, n_mels=64)
    rows = row_bands(net, 8, SR)  # features.3 has n_mels / 8 rows
    assert rows.shape == (8, 2)
    assert rows[0, 0] < 50 and rows[-1, 1] > SR / 2 - 50  # the whole spectrum, in order
    assert (rows[1:, 0] > rows[:-1, 0]).all()  # ascending, mel-spaced
    assert (rows[1:, 1] - rows[1:, 0] > rows[0, 1] - rows[0, 0]).all()
    assert row_bands(net, 1, SR).tolist() == [[0.0, SR / 2]]


def test_tf_box_regions_get_the_band_where_the_cam_is():
    cam_map = torch.zeros(1, 10, 4)
    cam_map[0, 2:5, 3] = 1.0  # top row, cells 2..4
    from musicbench_plugins.attacks.gradcam import CamResult

    rows = torch.tensor([[0.0, 100.0], [100.0, 300.0], [300.0, 1000.0], [1000.0, 8000.0]])
    cam = CamResult(cam=cam_map, cell=100, rows_hz=rows, margin=torch.ones(1))
    regions = cam_regions(cam, 1000, 300, 1, band_fraction=0.5)
    assert int(regions.start[0, 0]) == 200
    assert regions.band[0, 0].tolist() == [300.0, 8000.0]


def test_tukey_matches_scipy():
    for n in (1, 2, 7, 800, 8000):
        ours = tukey(n, 0.1).double()
        ref = torch.from_numpy(scipy.signal.windows.tukey(n, 0.1))
        assert torch.allclose(ours, ref, atol=1e-6), n


def test_occlusion_finds_the_planted_chunk_and_counts_every_query():
    model = LoudnessClassifier()
    victim = Victim(model, allow_gradients=False)
    x = torch.cat([_burst_clip(32_000, 21_000, 1_200), _burst_clip(32_000, 3_000, 1_200, seed=1)])
    y = torch.ones(2, dtype=torch.long)
    begin_batch(victim, 2)
    base = victim.loss(x, y)
    regions = occlusion_regions(victim, x, y, base, gap=800, regions=2, chunk=8_000)
    assert _overlaps(int(regions.start[0, 0]), 800, 21_000, 22_200)
    assert _overlaps(int(regions.start[1, 0]), 800, 3_000, 4_200)
    assert regions.valid.all() and regions.length == 800
    # 4 chunks, then 8000 -> 4000 -> 2000 -> 1000 -> 800 (4 levels x 2 candidates) x 2 regions
    assert occlusion_cost(32_000, 800, 2, 8_000) == 4 + 2 * 4 * 2
    assert victim.queries.tolist() == [1 + 20, 1 + 20]
    assert victim.gradient_calls.tolist() == [0, 0]
    assert (regions.score[:, 0] > regions.score[:, 1]).all()  # ranked


def test_occlusion_handles_a_clip_shorter_than_the_gap_and_one_chunk():
    model = LoudnessClassifier()
    victim = Victim(model, allow_gradients=False)
    x = _burst_clip(3_000, 1_000, 500)
    begin_batch(victim, 1)
    base = victim.loss(x, torch.ones(1, dtype=torch.long))
    regions = occlusion_regions(victim, x, torch.ones(1, dtype=torch.long), base, gap=5_000,
                                regions=2, chunk=8_000)
    assert regions.length == 3_000 and regions.start.tolist() == [[0, 0]]
    assert regions.valid.tolist() == [[True, False]]


def test_top_segments_are_greedy_and_never_overlap():
    curve = torch.tensor([[0.0, 5, 5, 0, 0, 0, 3, 0, 4, 0]])
    start, score, valid = top_segments(curve, 2, 4)
    assert start[0, :3].tolist() == [1, 7, 5] or start[0, :3].tolist() == [1, 8, 5]
    s = start[0][valid[0]].tolist()
    assert all(abs(a - b) >= 2 for i, a in enumerate(s) for b in s[i + 1 :])
    assert score[0, 0] == 10


def _regions(starts: list[int], length: int, band=(0.0, SR / 2)) -> Regions:
    r = len(starts)
    return Regions(start=torch.tensor([starts]), length=length,
                   valid=torch.ones(1, r, dtype=torch.bool), score=torch.zeros(1, r),
                   band=torch.tensor([band] * r)[None])


def test_time_mask_fill_changes_only_the_region():
    x = _burst_clip(8_000, 0, 0)
    filler = RegionFiller(PatternInpainter(), "time")
    regions = _regions([1_000, 5_000], 800)
    out = filler.fill_all(x, regions, torch.full((1, 2, 8), 0.3))
    changed = (out != x)[0]
    assert changed[1_000:1_800].all() and changed[5_000:5_800].all()
    assert int(changed.sum()) == 1_600


def test_tf_box_fill_stays_in_its_band_and_near_its_segment():
    x = _burst_clip(16_000, 0, 0)
    filler = RegionFiller(PatternInpainter(), "tf-box", n_fft=512)
    regions = _regions([6_000], 1_600, band=(2_000.0, 4_000.0))
    out = filler.fill(x, regions, 0, torch.full((1, 8), 0.5))
    support = filler.support(regions, 16_000)[0]
    assert not (out != x)[0, ~support].any()  # bit-identical outside n_fft / 2 of the box
    assert int(support.sum()) == 1_600 + 512
    window = torch.hann_window(512)
    spec = lambda a: torch.stft(a, 512, 128, window=window, return_complex=True).abs()
    diff = (spec(out) - spec(x))[0, :, 50:60]  # frames inside the segment
    freqs = torch.linspace(0, SR / 2, diff.shape[0])
    inside = (freqs > 2_100) & (freqs < 3_900)
    outside = (freqs < 1_700) | (freqs > 4_300)
    assert diff[inside].abs().mean() > 20 * diff[outside].abs().mean()
