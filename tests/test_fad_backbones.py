"""The ``[fad]`` encoders (fad-vggish, fad-pann, fad-clap): listed without the extra, a clear
error (never an ImportError traceback or a download) when it or the weights are missing, and
the wrapping itself exercised on tiny stand-ins of the package and the weight files. VGGish
runs for real (our own network) on random weights in the layout of the port's checkpoint, and
never runs code found in a cache folder (issue 26)."""

from __future__ import annotations

import math
import socket
import sys
import types
import urllib.request
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import cli
from torch import nn

from musicbench.errors import MusicbenchError
from musicbench.interfaces import Context
from musicbench.plugins import PluginSystem
from musicbench.workspace import Workspace
from musicbench_plugins.encoders import fad_backbones as fb
from musicbench_plugins.encoders import vggish_net as vn

NAMES = ("fad-vggish", "fad-pann", "fad-clap")
RATE = 16_000


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def network_spy(monkeypatch):
    """Every way the package or torch hub could download raises and is recorded; torch.hub.load
    is allowed only on a local folder."""
    touched: list[str] = []

    def refuse(what):
        def call(*args, **kwargs):
            touched.append(f"{what}{args[:1]}")
            raise AssertionError(f"network touched: {what}{args[:1]}")
        return call

    real_hub_load = torch.hub.load

    def hub_load(repo_or_dir, model, *args, source="github", **kwargs):
        if source != "local":
            return refuse("torch.hub.load")(repo_or_dir)
        return real_hub_load(repo_or_dir, model, *args, source=source, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", refuse("urlopen"))
    monkeypatch.setattr(torch.hub, "load", hub_load)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("download_url_to_file"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse("load_state_dict_from_url"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    return touched


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    """An empty checkpoint folder in $MUSICBENCH_FAD_CKPT_DIR and an empty torch hub folder, so
    no file of the developer's own caches is found."""
    folder = tmp_path / "fad-weights"
    folder.mkdir()
    monkeypatch.setenv(fb.CKPT_DIR_ENV, str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return folder


@pytest.fixture
def ctx(tmp_path) -> Context:
    return Context(cache_dir=tmp_path / "cache", device=torch.device("cpu"))


@pytest.fixture
def absent(monkeypatch):
    """frechet_audio_distance cannot be imported, even where a developer has it installed."""
    monkeypatch.setitem(sys.modules, fb.PACKAGE, None)


class FakeCnn14(nn.Module):
    """Stand-in for frechet_audio_distance.models.pann.Cnn14*: framed energies -> 2048-d."""

    lengths: ClassVar[list[int]] = []

    def __init__(self, sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num):
        super().__init__()
        assert (mel_bins, classes_num) == (64, 527) and fmax == sample_rate // 2
        self.frame = nn.Conv1d(1, 8, window_size, stride=hop_size)
        self.fc1 = nn.Linear(8, 2048)

    def forward(self, input, mixup_lambda=None):
        FakeCnn14.lengths.append(input.shape[-1])
        x = self.frame(input[:, None]).abs().mean(-1)
        return {"embedding": torch.relu(self.fc1(x)), "clipwise_output": None}


class FakeClapModule:
    """Stand-in for laion_clap.CLAP_Module: 64 chunk energies -> 512-d, L2-normalised."""

    lengths: ClassVar[list[int]] = []

    def __init__(self, enable_fusion=False, device=None, amodel="HTSAT-tiny", tmodel="roberta"):
        assert not enable_fusion
        self.amodel = amodel
        self.proj = None

    def load_ckpt(self, ckpt=None, model_id=-1, verbose=True):
        assert ckpt is not None, "load_ckpt() without a path downloads"
        self.proj = torch.load(ckpt, weights_only=True)["proj"]

    def eval(self):
        return self

    def get_audio_embedding_from_data(self, x, use_tensor=False):
        assert use_tensor and x.shape[-1] <= 480_000, "laion_clap would crop at random"
        FakeClapModule.lengths.append(x.shape[-1])
        chunks = x[:, : x.shape[-1] // 64 * 64].reshape(x.shape[0], 64, -1)
        return nn.functional.normalize(chunks.pow(2).mean(-1) @ self.proj, dim=-1)


@pytest.fixture
def fake_fad(monkeypatch, ckpt):
    """A tiny frechet_audio_distance (+ laion_clap) in sys.modules and PANN and CLAP weight
    files in the checkpoint folder."""
    pkg = types.ModuleType(fb.PACKAGE)
    models = types.ModuleType(f"{fb.PACKAGE}.models")
    pann = types.ModuleType(f"{fb.PACKAGE}.models.pann")
    pann.Cnn14 = pann.Cnn14_16k = pann.Cnn14_8k = FakeCnn14
    pkg.models, models.pann = models, pann
    clap = types.ModuleType("laion_clap")
    clap.CLAP_Module = FakeClapModule
    for name, module in ((fb.PACKAGE, pkg), (models.__name__, models), (pann.__name__, pann),
                         ("laion_clap", clap)):
        monkeypatch.setitem(sys.modules, name, module)
    FakeCnn14.lengths, FakeClapModule.lengths = [], []

    torch.manual_seed(0)
    torch.save({"model": FakeCnn14(16000, 512, 160, 64, 50, 8000, 527).state_dict()},
               ckpt / "Cnn14_16k_mAP%3D0.438.pth")  # the name the package saves
    torch.save({"model": FakeCnn14(32000, 1024, 320, 64, 50, 16000, 527).state_dict(),
                "sampler": np.random.RandomState(0).get_state()},  # numpy objects too
               ckpt / "Cnn14_mAP=0.431.pth")  # Zenodo's name
    torch.save({"proj": torch.randn(64, 512)}, ckpt / "630k-audioset-best.pt")


# The state dict of harritaylor/torchvggish's vggish-10086976.pth, written out from the port's
# layer list (conv 64, pool, 128, pool, 256, 256, pool, 512, 512, pool: Sequential indices with
# a ReLU after each conv; then Linear 512*4*6 -> 4096, ReLU, 4096 -> 4096, ReLU, 4096 -> 128).
PORT_STATE_SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("features.0.weight", (64, 1, 3, 3)), ("features.0.bias", (64,)),
    ("features.3.weight", (128, 64, 3, 3)), ("features.3.bias", (128,)),
    ("features.6.weight", (256, 128, 3, 3)), ("features.6.bias", (256,)),
    ("features.8.weight", (256, 256, 3, 3)), ("features.8.bias", (256,)),
    ("features.11.weight", (512, 256, 3, 3)), ("features.11.bias", (512,)),
    ("features.13.weight", (512, 512, 3, 3)), ("features.13.bias", (512,)),
    ("embeddings.0.weight", (4096, 12288)), ("embeddings.0.bias", (4096,)),
    ("embeddings.2.weight", (4096, 4096)), ("embeddings.2.bias", (4096,)),
    ("embeddings.4.weight", (128, 4096)), ("embeddings.4.bias", (128,)),
]


def random_port_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the port's layout (He-scaled, so activations neither vanish nor blow
    up through the 9 layers), built from the list above, not from our network."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in PORT_STATE_SHAPES:
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        scale = math.sqrt(2.0 / fan_in) if len(shape) > 1 else 0.01
        state[key] = torch.randn(shape, generator=g) * scale
    return state


@pytest.fixture(scope="module")
def vggish_file(tmp_path_factory) -> tuple:
    """A random VGGish weight file (290 MB, so written once per module) and its tensors."""
    state = random_port_state()
    path = tmp_path_factory.mktemp("vggish") / fb.VGGISH_WEIGHTS
    torch.save(state, path)
    return path, state


@pytest.fixture
def vggish_weights(ckpt, vggish_file) -> dict[str, torch.Tensor]:
    """``<ckpt>/checkpoints/vggish-10086976.pth`` (a link to the module's file): the layout of
    a folder the package filled. Returns the saved tensors."""
    path, state = vggish_file
    (ckpt / "checkpoints").mkdir(exist_ok=True)
    (ckpt / "checkpoints" / fb.VGGISH_WEIGHTS).symlink_to(path)
    return state


def clips(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, int(seconds * RATE), generator=g) * 2 - 1) * 0.5


def load(name: str, ctx: Context, **params) -> fb.Encoder:
    cls = {"fad-vggish": fb.FadVggishEncoder, "fad-pann": fb.FadPannEncoder,
           "fad-clap": fb.FadClapEncoder}[name]
    encoder = cls(cls.Params(**params))
    encoder.load(ctx)
    return encoder


# --------------------------------------------------------------------------- without the extra


def test_musicbench_list_encoder_shows_the_three_backbones():
    listed = cli("list", "encoder")
    assert listed.returncode == 0, listed.stderr
    for name in NAMES:
        assert name in listed.stdout
    assert "[fad] extra" in listed.stdout


@pytest.mark.parametrize("name", ["fad-pann", "fad-clap"])
def test_loading_without_the_package_says_how_to_install_and_downloads_nothing(
        name, absent, ckpt, network_spy, tmp_path):
    ws = Workspace(PluginSystem(), cache_dir=tmp_path / "cache", device=torch.device("cpu"))
    with pytest.raises(fb.FadNotInstalledError) as err:
        ws.encoder(name)
    assert isinstance(err.value, MusicbenchError) and not isinstance(err.value, ImportError)
    assert "frechet-audio-distance is not installed: pip install 'musicbench[fad]'" in str(
        err.value)
    assert network_spy == []


@pytest.mark.parametrize("name", NAMES)
def test_missing_weights_name_the_folders_searched_and_download_nothing(
        name, monkeypatch, ckpt, ctx, network_spy):
    monkeypatch.setitem(sys.modules, fb.PACKAGE, types.ModuleType(fb.PACKAGE))
    with pytest.raises(fb.FadWeightsNotFoundError) as err:
        load(name, ctx)
    message = str(err.value)
    assert str(ckpt) in message and str(ctx.cache_dir / "fad") in message
    assert "on a machine with internet" in message and fb.CKPT_DIR_ENV in message
    assert network_spy == []
    if name == "fad-vggish":  # only the weight file is needed now, no hub checkout
        assert f"looked for {fb.VGGISH_WEIGHTS}," in message and fb.VGGISH_WEIGHTS_URL in message
        assert "hubconf" not in message and "torchvggish_master" not in message


def test_vggish_needs_neither_the_fad_package_nor_a_hub_checkout(
        absent, vggish_weights, ctx, network_spy):
    encoder = load("fad-vggish", ctx)
    assert encoder.embed(clips(1, 1.0)).shape == (1, 1, 128)
    assert network_spy == []


PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text(__name__)
raise RuntimeError("code planted in a cache folder ran: " + __name__)
"""


def test_vggish_never_imports_or_runs_code_found_in_the_cache(
        vggish_weights, ckpt, ctx, tmp_path, monkeypatch):
    # as where the [fad] extra is installed: the old loader then went on to torch.hub.load
    monkeypatch.setitem(sys.modules, fb.PACKAGE, types.ModuleType(fb.PACKAGE))
    marker = tmp_path / "planted-code-ran"
    hub = tmp_path / "torch-home" / "hub"
    for folder in (ckpt, ckpt / "harritaylor_torchvggish_master", hub,
                   hub / "harritaylor_torchvggish_master"):
        (folder / "torchvggish").mkdir(parents=True)
        for name in ("hubconf.py", "vggish.py", "torchvggish/__init__.py",
                     "torchvggish/vggish.py"):
            (folder / name).write_text(PLANTED.format(marker=str(marker)))
    hub_calls: list[tuple] = []
    real_hub_load = torch.hub.load

    def hub_load(*args, **kwargs):
        hub_calls.append(args)
        return real_hub_load(*args, **kwargs)

    monkeypatch.setattr(torch.hub, "load", hub_load)
    modules_before = set(sys.modules)
    try:
        encoder = load("fad-vggish", ctx)
        out = encoder.embed(clips(2, 2.0))
    finally:
        assert not marker.exists(), f"planted code ran as {marker.read_text()!r}"
    assert out.shape == (2, 2, 128) and torch.isfinite(out).all()
    assert hub_calls == []
    new = set(sys.modules) - modules_before
    assert not {m for m in new if "hubconf" in m or "vggish" in m} - {
        "musicbench_plugins.encoders.vggish_net"}


def test_a_wrong_or_damaged_vggish_file_names_the_file_and_the_remedy(ckpt, ctx):
    (ckpt / fb.VGGISH_WEIGHTS).write_bytes(b"not a checkpoint")
    with pytest.raises(fb.FadOfflineLoadError) as err:
        load("fad-vggish", ctx)
    assert str(ckpt / fb.VGGISH_WEIGHTS) in str(err.value)
    assert f"download it again from {fb.VGGISH_WEIGHTS_URL}" in str(err.value)
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, ckpt / fb.VGGISH_WEIGHTS)
    with pytest.raises(fb.FadOfflineLoadError, match="embeddings.0.bias"):
        load("fad-vggish", ctx)


def test_the_offline_guard_refuses_connections_and_restores_the_socket_module():
    before = (socket.socket.connect, socket.getaddrinfo)
    with pytest.raises(fb.FadOfflineLoadError, match="refused"), fb.offline("fad-test"):
        socket.getaddrinfo("huggingface.co", 443)
    assert (socket.socket.connect, socket.getaddrinfo) == before


def test_a_package_that_does_not_import_offline_gives_the_hf_cache_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, fb.PACKAGE, None)  # import raises ImportError
    with pytest.raises(fb.FadOfflineLoadError, match="Hugging Face cache"):
        fb.import_package("fad-pann")


# --------------------------------------------------------------------------- the success path


def test_vggish_shape_weights_and_determinism(vggish_weights, ctx, network_spy):
    encoder = load("fad-vggish", ctx)
    audio = clips(3, 3.0)
    out = encoder.embed(audio)
    assert out.shape == (3, 3, 128) == (3, encoder.frames(audio.shape[1]), encoder.dim)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert torch.equal(out, encoder.embed(audio))
    # the saved weights are used, and the output ReLU is dropped as the package does
    net = vn.VggishNet(final_relu=False)
    net.load_state_dict(vggish_weights, strict=True)
    x = vn.log_mel_examples(audio.double()).float().reshape(9, 1, 96, 64)
    with torch.no_grad():
        ref = net(x).reshape(3, 3, 128)
    torch.testing.assert_close(out, ref)
    assert (out < 0).any()
    with_relu = load("fad-vggish", ctx, use_activation=True).embed(audio)
    torch.testing.assert_close(with_relu, out.clamp(min=0))
    assert network_spy == []


def test_vggish_refuses_clips_shorter_than_one_example(vggish_weights, ctx):
    encoder = load("fad-vggish", ctx)
    with pytest.raises(ValueError, match="15600 samples"):
        encoder.embed(clips(1, 0.5))
    with pytest.raises(ValueError, match="15600 samples"):
        encoder.embed(clips(1, 15599 / RATE))
    assert encoder.embed(clips(1, 15600 / RATE)).shape == (1, 1, 128)


def test_pann_one_frame_per_clip_or_per_window(fake_fad, ctx, network_spy):
    whole = load("fad-pann", ctx)
    audio = clips(2, 3.0)
    out = whole.embed(audio)
    assert out.shape == (2, 1, 2048) and torch.equal(out, whole.embed(audio))
    assert FakeCnn14.lengths[0] == audio.shape[1]  # 16k variant: no resampling
    windowed = load("fad-pann", ctx, window_seconds=1.0).embed(audio)
    assert windowed.shape == (2, 3, 2048)
    assert network_spy == []


def test_pann_32k_resamples_to_twice_the_length(fake_fad, ctx):
    encoder = load("fad-pann", ctx, variant="32k")
    out = encoder.embed(clips(2, 1.5))
    assert out.shape == (2, 1, 2048)
    assert FakeCnn14.lengths == [2 * int(1.5 * RATE)]


def test_clap_resamples_to_48k_and_windows_long_clips(fake_fad, ctx, network_spy):
    encoder = load("fad-clap", ctx)
    short = clips(2, 3.0)
    out = encoder.embed(short)
    assert out.shape == (2, 1, 512) and torch.equal(out, encoder.embed(short))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 1))
    assert FakeClapModule.lengths[0] == 3 * short.shape[1]
    # 25 s: two 10 s windows, never a clip laion_clap would crop at random
    long = encoder.embed(clips(1, 25.0))
    assert long.shape == (1, 2, 512) and FakeClapModule.lengths[-1] == 480_000
    assert network_spy == []


def test_checkpoints_load_numpy_objects_safely_and_refuse_anything_else(tmp_path):
    good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
    torch.save({"model": {"w": torch.ones(2)}, "state": np.random.RandomState(0).get_state()},
               good)
    loaded = fb.load_checkpoint(good)
    assert torch.equal(loaded["model"]["w"], torch.ones(2))
    assert isinstance(loaded["state"][1], np.ndarray)
    torch.save({"model": {}, "args": types.SimpleNamespace(x=1)}, bad)
    with pytest.raises(fb.FadOfflineLoadError, match="types.SimpleNamespace"):
        fb.load_checkpoint(bad)


def test_resample_is_a_proper_band_limited_resampler():
    t = torch.arange(RATE) / RATE
    tone = torch.sin(2 * math.pi * 1000 * t)[None]
    up = fb.resample(tone, RATE, 48_000)
    assert up.shape == (1, 48_000) and up.dtype == torch.float32
    t48 = torch.arange(48_000) / 48_000
    ideal = torch.sin(2 * math.pi * 1000 * t48)
    assert (up[0, 1000:-1000] - ideal[1000:-1000]).abs().max() < 5e-3
    # 7 kHz is above the 4 kHz Nyquist of 8 kHz: filtered out, not aliased to 1 kHz
    high = torch.sin(2 * math.pi * 7000 * t)[None]
    down = fb.resample(high, RATE, 8_000)
    assert down.shape == (1, 8_000)
    assert float(down[0, 500:-500].pow(2).mean().sqrt()) < 0.01


def test_windows_cut_non_overlapping_frames_and_keep_short_clips_whole():
    x = torch.arange(10.0).reshape(1, 10)
    assert fb.windows(x, 4).tolist() == [[[0, 1, 2, 3], [4, 5, 6, 7]]]
    assert fb.windows(x, 20).shape == (1, 1, 10) and fb.windows(x, None).shape == (1, 1, 10)


def test_params_reject_windows_the_backbones_cannot_take():
    with pytest.raises(ValueError, match="window_seconds"):
        fb.FadClapParams(window_seconds=12.0)
    with pytest.raises(ValueError, match="window_seconds"):
        fb.FadPannParams(window_seconds=0.1)


def test_checkpoint_folders_are_env_then_cache_then_torch_hub(ckpt, ctx, tmp_path):
    dirs = fb.checkpoint_dirs(ctx)
    assert dirs == [ckpt, ctx.cache_dir / "fad", tmp_path / "torch-home" / "hub"]
