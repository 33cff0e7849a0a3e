"""The musicnn port: TF checkpoint reader, wheel lookup, conversion, and the converted models
against values recorded from the TensorFlow original (docs/musicnn.md)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from musicbench.cache import cache_dir
from musicbench.interfaces import Context
from musicbench_plugins.models.musicnn import network, tf_checkpoint, wheel
from musicbench_plugins.models.musicnn.network import MusicnnNet, state_dict_from_tf
from musicbench_plugins.models.musicnn.pretrained import (
    MSD_GENRES,
    MTT_GENRES,
    MTT_TAGS,
    checkpoint_path,
    load_pretrained,
)
from musicbench_plugins.models.musicnn.tf_checkpoint import (
    CheckpointFormatError,
    crc32c,
    mask_crc,
    read_tensors,
    unmask_crc,
)

# -- a tiny tensor-bundle writer (tests only) -------------------------------------------------


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _pb_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _pb_fixed32(field: int, value: int) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<I", value)


_DTYPE_ENUM = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3,
               np.dtype("int64"): 9, np.dtype("float16"): 19}


def _block(items: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(last)) and key[shared] == last[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        out += key[shared:] + value
        last = key
    restarts = restarts or [0]
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def write_bundle(tensors: dict[str, np.ndarray], *, entries_per_block: int = 3,
                 restart_interval: int = 2) -> tuple[bytes, bytes]:
    """``(index, data)`` bytes of a single-shard TF tensor bundle holding ``tensors``."""
    data = bytearray()
    header = _pb_varint(1, 1) + _pb_bytes(3, _pb_varint(1, 1))  # 1 shard, little endian
    items = [(b"", header)]
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(_pb_bytes(2, _pb_varint(1, d)) for d in arr.shape)
        entry = (_pb_varint(1, _DTYPE_ENUM[arr.dtype]) + _pb_bytes(2, shape)
                 + _pb_varint(4, len(data)) + _pb_varint(5, len(raw))
                 + _pb_fixed32(6, mask_crc(_crc32c_bitwise(raw))))
        data += raw
        items.append((name.encode(), entry))
    table, index_items = bytearray(), []

    def emit(block: bytes) -> tuple[int, int]:
        offset = len(table)
        table.extend(block + b"\x00" + struct.pack("<I", mask_crc(_crc32c_bitwise(block + b"\x00"))))
        return offset, len(block)

    for start in range(0, len(items), entries_per_block):
        chunk = items[start : start + entries_per_block]
        offset, size = emit(_block(chunk, restart_interval))
        index_items.append((chunk[-1][0], _varint(offset) + _varint(size)))
    meta = emit(_block([], restart_interval))
    index = emit(_block(index_items, 1))
    footer = _varint(meta[0]) + _varint(meta[1]) + _varint(index[0]) + _varint(index[1])
    footer = footer.ljust(40, b"\x00") + struct.pack("<Q", tf_checkpoint.TABLE_MAGIC)
    return bytes(table + footer), bytes(data)


def _sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv2d/kernel": rng.standard_normal((7, 5, 1, 4)).astype(np.float32),
        "conv2d/bias": rng.standard_normal(4).astype(np.float32),
        "conv2d/kernel/Adam": rng.standard_normal((7, 5, 1, 4)).astype(np.float32),
        "batch_normalization/moving_mean": np.array([0.5], dtype=np.float32),
        "global_step": np.array(12345678901, dtype=np.int64),
        "dense/kernel": rng.standard_normal((3, 2)).astype(np.float64),
        "half": rng.standard_normal(5).astype(np.float16),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


# -- CRC-32C and the reader on synthetic bundles ---------------------------------------------


def test_crc32c_matches_the_standard_check_value_and_a_bitwise_reference():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = np.random.default_rng(1).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc32c_bitwise(data)  # long input: the vectorised path
    assert crc32c(data[12_345:], crc32c(data[:12_345])) == crc32c(data)
    assert unmask_crc(mask_crc(0xDEADBEEF)) == 0xDEADBEEF


def test_reader_round_trips_a_hand_built_bundle():
    tensors = _sample_tensors()
    index, data = write_bundle(tensors)
    out = read_tensors(index, [data])
    assert sorted(out) == sorted(tensors)
    for name, arr in tensors.items():
        assert out[name].dtype == arr.dtype and out[name].shape == arr.shape, name
        np.testing.assert_array_equal(out[name], arr)
    some = read_tensors(index, lambda shard: data, ["conv2d/bias"])
    assert list(some) == ["conv2d/bias"]


@pytest.mark.parametrize("per_block,restarts", [(1, 1), (2, 16), (50, 3)])
def test_reader_handles_block_and_restart_layouts(per_block, restarts):
    tensors = _sample_tensors()
    index, data = write_bundle(tensors, entries_per_block=per_block, restart_interval=restarts)
    assert set(read_tensors(index, [data])) == set(tensors)


def test_reader_refuses_corrupt_or_foreign_bytes():
    index, data = write_bundle(_sample_tensors())
    bad_data = bytearray(data)
    bad_data[3] ^= 0x40
    with pytest.raises(CheckpointFormatError, match="CRC-32C mismatch"):
        read_tensors(index, [bytes(bad_data)])
    assert read_tensors(index, [bytes(bad_data)], ["conv2d/bias"], verify=False)
    bad_index = bytearray(index)
    bad_index[10] ^= 0x01
    with pytest.raises(CheckpointFormatError):
        read_tensors(bytes(bad_index), [data])
    with pytest.raises(CheckpointFormatError, match="magic"):
        read_tensors(index[:-1] + b"\x00", [data])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_tensors(index, [data[:10]])
    with pytest.raises(KeyError, match="nope"):
        read_tensors(index, [data], ["nope"])


# -- the TF -> torch table (no weights needed) ------------------------------------------------


def _fake_tf_tensors(net: MusicnnNet) -> dict[str, np.ndarray]:
    """Random tensors with the TF names and TF layouts the real checkpoint has."""
    state = net.state_dict()
    out = {}
    rng = np.random.default_rng(0)
    for tf_name, (key, how) in network.tf_variable_map().items():
        shape = tuple(state[key].shape)
        if how == "conv":
            shape = ((shape[2], shape[1], 1, shape[0]) if key.startswith("midend.")
                     else (shape[2], shape[3], shape[1], shape[0]))
        elif how == "transpose":
            shape = shape[::-1]
        out[tf_name] = rng.standard_normal(shape).astype(np.float32)
    out["conv2d/kernel/Adam"] = out["conv2d/kernel"]
    out["beta1_power"] = np.float32(0.9)
    return out


def test_every_parameter_comes_from_a_named_tf_variable():
    net = MusicnnNet()
    tensors = _fake_tf_tensors(net)
    assert len(tensors) - 2 == 64  # 8 convs x 2 + 11 batch norms x 4 + 2 dense x 2
    state = state_dict_from_tf(tensors, net)
    net.load_state_dict(state, strict=True)
    # TF conv kernels are [frames, bands, in, out]; dense kernels are [in, out].
    np.testing.assert_array_equal(net.frontend.timbral77.conv.weight[5, 0].detach().numpy(),
                                  tensors["conv2d_1/kernel"][:, :, 0, 5])
    np.testing.assert_array_equal(net.midend.conv1.weight[3].detach().numpy(),
                                  tensors["conv2d_5/kernel"][:, :, 0, 3].T)
    np.testing.assert_array_equal(net.backend.out.weight.detach().numpy(), tensors["dense_1/kernel"].T)


def test_conversion_fails_loudly_on_unmapped_or_missing_variables():
    net = MusicnnNet()
    tensors = _fake_tf_tensors(net)
    with pytest.raises(ValueError, match="no place in the port.*conv2d_9"):
        state_dict_from_tf(tensors | {"conv2d_9/kernel": np.zeros(1, np.float32)}, net)
    del tensors["batch_normalization_10/moving_variance"]
    with pytest.raises(ValueError, match="lacks.*batch_normalization_10/moving_variance"):
        state_dict_from_tf(tensors, net)


def test_pooling_before_relu_and_batch_norm_is_the_same_branch():
    """The frozen branch takes the frequency max (the min where batch norm's scale is
    negative) before ReLU and batch norm: the same output as the ported order, bit for bit,
    and the same input gradient to float32 rounding."""
    torch.manual_seed(0)
    branch = network.FrequencyPooledConv(12, 7, 5, (3, 3))
    with torch.no_grad():
        branch.bn.weight.copy_(torch.randn(12))  # about half negative
        branch.bn.bias.copy_(torch.randn(12))
        branch.bn.running_mean.copy_(torch.randn(12))
        branch.bn.running_var.copy_(torch.rand(12) + 0.5)
    branch.eval()
    assert (branch.bn.weight < 0).any() and (branch.bn.weight > 0).any()
    x = torch.randn(3, 1, 40, 16, requires_grad=True)
    ported = branch.bn(torch.relu(branch.conv(torch.nn.functional.pad(x, (0, 0, 3, 3))))
                       ).amax(dim=3)
    pooled_first = branch(x)
    assert torch.equal(pooled_first, ported)
    (g1,) = torch.autograd.grad(ported.square().sum(), x)
    (g2,) = torch.autograd.grad(pooled_first.square().sum(), x)
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-7) and g1.abs().sum() > 0


def test_tf_same_padding_puts_the_extra_frame_after():
    assert network.tf_same_padding(128) == (63, 64)
    assert network.tf_same_padding(7) == (3, 3)
    assert network.patch_frames(48_000) == network.PATCH_FRAMES == 187


def test_bad_tags_fail_with_the_closest_names():
    from musicbench_plugins.models.musicnn.target import MusicnnMSDParams, MusicnnMTTParams

    with pytest.raises(ValueError, match="'hip hop' is not one of its 50 tags.*'Hip-Hop'"):
        MusicnnMSDParams(tags=("rock", "hip hop"))
    with pytest.raises(ValueError, match="duplicates"):
        MusicnnMTTParams(tags=("rock", "rock"))
    assert set(MTT_GENRES) <= set(MTT_TAGS)


# -- finding the wheel ------------------------------------------------------------------------


def test_wheel_lookup_explains_what_to_do_when_it_cannot_download(tmp_path, monkeypatch):
    monkeypatch.delenv(wheel.WHEEL_ENV, raising=False)
    monkeypatch.setattr(wheel, "_installed_package", lambda: None)
    with pytest.raises(wheel.MusicnnWheelError, match=wheel.WHEEL_ENV):
        wheel.locate(tmp_path, allow_download=False)

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution (offline)"

    monkeypatch.setattr(wheel.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(wheel.MusicnnWheelError, match="(?s)offline.*pip download"):
        wheel.locate(tmp_path)
    monkeypatch.setenv(wheel.WHEEL_ENV, str(tmp_path / "missing.whl"))
    with pytest.raises(wheel.MusicnnWheelError, match="does not exist"):
        wheel.locate(tmp_path)


# -- the real checkpoints and the converted models --------------------------------------------

# The user's cache (read before the autouse fixture isolates MUSICBENCH_HOME), so a machine
# that ran musicbench once does not download again; MUSICBENCH_MUSICNN_WHEEL (honoured by
# wheel.locate itself) points the tests at any other copy.
_LOCAL_WHEELS = (cache_dir() / "musicnn" / wheel.WHEEL_NAME,)


@pytest.fixture(scope="session")
def musicnn_cache(tmp_path_factory) -> Path:
    """A fresh cache dir holding the wheel: copied from the user's cache if it is there, else
    found through MUSICBENCH_MUSICNN_WHEEL or fetched by the production code path (pip).
    Skips when none works (offline)."""
    cache = tmp_path_factory.mktemp("musicnn-cache")
    for src in _LOCAL_WHEELS:
        if src.is_file():
            (cache / "musicnn").mkdir()
            shutil.copy(src, cache / "musicnn" / wheel.WHEEL_NAME)
            break
    try:
        wheel.locate(cache)
    except wheel.MusicnnWheelError as exc:
        pytest.skip(f"the musicnn wheel is not available and could not be fetched: {exc}")
    return cache


@pytest.fixture(scope="session")
def ctx(musicnn_cache) -> Context:
    return Context(cache_dir=musicnn_cache, device=torch.device("cpu"))


def test_real_checkpoints_read_and_verify(musicnn_cache):
    files = wheel.locate(musicnn_cache)
    index, data = files.checkpoint("MTT")
    tensors = read_tensors(index, [data])
    assert len(tensors) == 150  # 64 variables, 2 Adam slots each, 2 Adam powers
    assert tensors["conv2d_1/kernel"].shape == (7, 67, 1, 204)
    assert tensors["dense/kernel"].shape == (1506, 200)
    broken = bytearray(data)
    broken[len(broken) // 2] ^= 0xFF
    with pytest.raises(CheckpointFormatError, match="CRC-32C"):
        read_tensors(index, [bytes(broken)])


def _chord(samples: int) -> torch.Tensor:
    """The ``chord`` signal of docs/musicnn/compare_torch.py (same arithmetic)."""
    t = np.arange(samples) / 16_000
    env = np.exp(-2.0 * np.mod(t, 1.5))
    x = np.zeros(samples)
    for f in (261.63, 329.63, 392.0):
        for h in range(1, 5):
            x += np.sin(2 * np.pi * f * h * t) / h
    return torch.from_numpy((0.15 * env * x).astype(np.float32))


# Recorded with docs/musicnn/compare_tf.py (TF 2.15.1, librosa 0.9.2): probabilities of the
# first 3 s patch of the chord, (TF on the port's log-mel, the original extractor pipeline).
FROZEN = {
    "mtt": {"slow": (0.404529, 0.40453), "guitar": (0.289639, 0.289623),
            "piano": (0.228034, 0.228043), "solo": (0.103463, 0.103461),
            "pop": (0.0032397, 0.00323977)},
    "msd": {"indie": (0.26704, 0.267036), "folk": (0.140151, 0.140153),
            "electronic": (0.125203, 0.125201), "ambient": (0.101875, 0.101874),
            "Progressive rock": (0.00893171, 0.00893177)},
}
# librosa 0.9.2 log10(1 + 10000 mel) of the chord (float32, reflect padding): frame -> bands
# (0, 10, 20, 40, 70, 95).
LIBROSA_LOGMEL = {
    0: (4.5319, 3.88591, 3.1732, 3.58162, 1.50799, 0.73371),
    1: (0.156713, 5.04539, 4.39744, 3.64385, 5.17719e-08, 0.0),
    100: (0.00556851, 4.82005, 4.25726, 3.49552, 0.0, 0.0),
    186: (0.000125166, 2.28922, 1.8694, 1.1385, 0.0, 0.0),
}


def test_log_mel_front_end_matches_librosa():
    logmel = network.MusicnnLogMel()(_chord(48_000)[None])[0]
    assert logmel.shape == (188, 96)
    for frame, values in LIBROSA_LOGMEL.items():
        got = logmel[frame, [0, 10, 20, 40, 70, 95]].numpy()
        np.testing.assert_allclose(got, values, atol=1e-4, err_msg=f"frame {frame}")


@pytest.mark.parametrize("variant", ["mtt", "msd"])
def test_converted_model_matches_the_tensorflow_original(ctx, variant):
    from musicbench_plugins.models.musicnn.target import MusicnnMSD, MusicnnMTT

    model = {"mtt": MusicnnMTT, "msd": MusicnnMSD}[variant]()
    model.load(ctx)
    assert checkpoint_path(ctx.cache_dir, variant).is_file()
    assert model.labels == {"mtt": MTT_GENRES, "msd": MSD_GENRES}[variant]
    x = _chord(48_000)[None]
    with torch.no_grad():
        probs = model.tag_probabilities(x)
        logits = model.forward(x)
    assert probs.shape == (1, 50) and logits.shape == (1, len(model.labels))
    index = [model.all_tags.index(t) for t in model.labels]
    torch.testing.assert_close(torch.sigmoid(logits), probs[:, index])
    for tag, (tf_same_mel, tf_pipeline) in FROZEN[variant].items():
        got = float(probs[0, model.all_tags.index(tag)])
        assert abs(got - tf_same_mel) < 1e-4, (tag, got, tf_same_mel)
        assert abs(got - tf_pipeline) < 1e-3, (tag, got, tf_pipeline)
    gram = model.taggram(_chord(16_000 * 7)[None])
    assert gram.shape == (1, 2, 50)
    torch.testing.assert_close(gram[0, 0], probs[0], atol=1e-6, rtol=0)


def test_model_is_frozen_deterministic_and_differentiable(ctx):
    from musicbench_plugins.models.musicnn.target import MusicnnMTT

    model = MusicnnMTT(MusicnnMTT.Params(tags=("rock", "classical", "techno")))
    model.load(ctx)
    net = model.module()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert isinstance(net.get_submodule(model.cam_layer), network.MidEnd)
    x = _chord(model.input_samples)[None]
    with torch.no_grad():
        assert torch.equal(model.forward(x), model.forward(x))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.forward(xg)[:, 0].sum(), xg)
    assert torch.isfinite(g).all() and (g.abs().sum(dim=1) > 0).all()


def test_later_loads_never_touch_the_wheel(ctx, monkeypatch):
    load_pretrained(ctx, "msd")  # converted (or already cached)

    def no_wheel(*args, **kwargs):
        raise AssertionError("the wheel was looked up although the converted file exists")

    monkeypatch.setattr(wheel, "locate", no_wheel)
    net, meta = load_pretrained(ctx, "msd")
    assert meta["conversion_version"] and len(meta["tags"]) == 50
    assert isinstance(net, MusicnnNet)


def test_encoder_gives_mid_end_frames(ctx):
    from musicbench_plugins.encoders.musicnn import MusicnnEncoder

    enc = MusicnnEncoder()
    enc.load(ctx)
    x = _chord(48_000)[None]
    with torch.no_grad():
        emb = enc.embed(x)
        net, _ = load_pretrained(ctx, "msd")
        ref = net.features(net.patch(x)).transpose(1, 2)
    assert emb.shape == (1, 187, MusicnnEncoder.dim)
    assert torch.equal(emb, ref)
    assert enc.embed(_chord(16_000 * 5)[None]).shape == (1, 312, 753)


def test_unpacked_and_installed_packages_are_found(musicnn_cache, tmp_path, monkeypatch):
    import sys
    import zipfile

    with zipfile.ZipFile(musicnn_cache / "musicnn" / wheel.WHEEL_NAME) as z:
        z.extractall(tmp_path)
    monkeypatch.setenv(wheel.WHEEL_ENV, str(tmp_path / "musicnn"))
    files = wheel.locate(tmp_path / "empty-cache", allow_download=False)
    assert files.kind == "folder" and files.checkpoint("MSD")[0]
    monkeypatch.delenv(wheel.WHEEL_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))  # as if `pip install musicnn` had run
    files = wheel.locate(tmp_path / "empty-cache", allow_download=False)
    assert files.kind == "folder" and files.path == tmp_path / "musicnn"
    assert "musicnn" not in sys.modules  # found, never imported
