"""``fad-vggish``, ``fad-pann``, ``fad-clap``: the FAD backbones of ``frechet-audio-distance``,
loaded from local files only.

Package: ``frechet-audio-distance`` >= 0.3 (H. H. Tan, MIT licence), which computes FAD on

- **VGGish**: S. Hershey et al., "CNN Architectures for Large-Scale Audio Classification",
  ICASSP 2017; the package builds the PyTorch port ``harritaylor/torchvggish`` through torch
  hub. Here the network and its log-mel front end are our own code
  (:mod:`musicbench_plugins.encoders.vggish_net`) with the port's state-dict layout, so only
  the port's weight file ``vggish-10086976.pth`` is needed: neither the package (the ``[fad]``
  extra) nor the hub checkout, and no code from a cache folder is ever imported or run;
- **PANN CNN14**: Q. Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks for
  Audio Pattern Recognition", IEEE/ACM TASLP 28, 2020; the model classes ship in the package
  (``frechet_audio_distance.models.pann``), the checkpoints come from Zenodo record 3987831;
- **CLAP**: Y. Wu, K. Chen et al., "Large-scale Contrastive Language-Audio Pretraining with
  Feature Fusion and Keyword-to-Caption Augmentation", ICASSP 2023; ``laion_clap.CLAP_Module``
  with a LAION checkpoint.

What the package does when it builds a backbone (``FrechetAudioDistance(model_name=...)``),
and why we do not call it: every path can reach the network.

- ``import frechet_audio_distance`` imports ``laion_clap``, whose ``training/data.py`` calls
  ``BertTokenizer.from_pretrained("bert-base-uncased")``, ``RobertaTokenizer...("roberta-base")``
  and ``BartTokenizer...("facebook/bart-base")`` at import time: Hugging Face hub downloads
  unless those are in the HF cache.
- VGGish: ``torch.hub.load("harritaylor/torchvggish", "vggish")`` imports and runs the
  ``hubconf.py`` and package code it finds in ``<hub dir>/harritaylor_torchvggish_master`` (a
  planted file there would run with the user's rights, musicbench issue 26); it always opens
  ``github.com`` first (to pick the default branch), downloads the repository zip if it is not
  in ``<hub dir>/harritaylor_torchvggish_master``, then the hub's ``VGGish`` downloads
  ``<hub dir>/checkpoints/vggish-10086976.pth`` and the PCA parameters
  ``vggish_pca_params-970ea276.pth`` if they are missing. With ``ckpt_dir`` the package
  calls ``torch.hub.set_dir(ckpt_dir)`` (a process-wide change) first.
- PANN: ``torch.hub.download_url_to_file`` of ``<ckpt dir>/Cnn14_16k_mAP%3D0.438.pth`` (16 kHz),
  ``Cnn14_mAP%3D0.431.pth`` (32 kHz) or ``Cnn14_8k_mAP%3D0.416.pth`` (8 kHz) if missing.
- CLAP: downloads ``<ckpt dir>/<submodel checkpoint>.pt`` from the ``lukewys/laion_clap`` HF
  repository if missing; ``CLAP_Module()`` then builds its text branch with
  ``RobertaModel.from_pretrained("roberta-base")`` (about 500 MB from the HF hub) and its
  tokenizer, even though only the audio branch is used.

What this module does instead: for PANN and CLAP it checks that the package is installed
without importing it (:func:`importlib.util.find_spec`); for all three it looks for the weight
file in the checkpoint folders (:func:`checkpoint_dirs`) and raises a
:class:`FadBackboneUnavailableError` naming the folders and the files before calling anything
that could download. VGGish is then our own :class:`VggishNet` with the file's tensors
(a ``weights_only`` :func:`load_checkpoint`, ``strict`` state-dict load): nothing else is read.
PANN and CLAP are built the way the package does, from those files, inside :func:`offline`:
Hugging Face offline mode, stdout redirected to stderr (the libraries print), and every
outgoing internet connection refused, so a code path we did not foresee fails with a clear
message instead of downloading. The HF cache is still needed for the package import and for
CLAP's text branch.

Sample rates. The harness hands the FAD encoder the cell's audio as it is, at the dataset's
rate, 16 kHz for every built-in dataset, so each encoder declares ``sample_rate = 16000`` and
resamples inside when its backbone runs at another rate, with a polyphase anti-aliasing filter
(:func:`resample`, scipy's ``resample_poly`` with its Kaiser window, on the CPU):

- ``fad-vggish``: backbone at 16 kHz; one frame per 0.96 s, no overlap (the tail that fills
  no window is dropped); 128 dims, the last layer before its ReLU and without PCA (the
  package's defaults ``use_activation=False, use_pca=False``); the front end and network are
  those of the port the package loads (checked against it: equal examples and embeddings).
- ``fad-pann``: backbone at 16 kHz (``variant="16k"``, no resampling), 32 or 8 kHz; one frame
  per clip as in the package, or one per ``window_seconds``; 2048 dims, the ``embedding``
  output (after ``fc1`` and its ReLU; dropout off in eval mode).
- ``fad-clap``: backbone at 48 kHz; one frame per clip up to ``window_seconds`` (10 s by
  default; laion_clap repeat-pads shorter clips to 10 s), longer clips one per window;
  512 dims, the L2-normalised joint-space audio embedding.

FAD needs at least ``2 * dim`` frames per set (:mod:`musicbench.fad`): about 86 three-second
clips for VGGish, 1024 clips for CLAP and 4096 for PANN at one frame per clip; with fewer the
FAD column is NaN with that reason.

Choices the package leaves open, as parameters: the PANN variant (``variant``), the CLAP
checkpoint (``submodel``), VGGish's output ReLU (``use_activation``), and how long clips are
cut into frames for PANN and CLAP (``window_seconds``; CLAP's non-fusion model would otherwise
crop clips over 10 s at a random offset, so longer clips are always cut into windows here).
Not offered: VGGish's PCA/8-bit quantisation, CLAP's fusion models (their random chunk choice
makes the embedding non-deterministic) and the package's EnCodec backbone.

These encoders run under ``torch.no_grad``: they serve FAD, not as a differentiable backbone.
Clips are processed in one batch per ``embed`` call (VGGish's front end too, in float64 as the
release computes it, on the encoder's device; on the CPU where the device has no float64).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import pickle
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from musicbench.api import check_number
from musicbench.errors import MusicbenchError
from musicbench.interfaces import Context, Encoder
from musicbench_plugins._limits import MAX_SECONDS
from musicbench_plugins.encoders import vggish_net

PACKAGE = "frechet_audio_distance"
DISTRIBUTION = "frechet-audio-distance"
CKPT_DIR_ENV = "MUSICBENCH_FAD_CKPT_DIR"
INPUT_RATE = 16_000
INSTALL_HINT = "pip install 'musicbench[fad]'"
DOCS = "docs/fad.md"

VGGISH_WEIGHTS = "vggish-10086976.pth"
VGGISH_WEIGHTS_URL = ("https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
                      + VGGISH_WEIGHTS)

HF_REPOS_FOR_IMPORT = ("bert-base-uncased", "roberta-base", "facebook/bart-base")

# The environment variables that put huggingface_hub / transformers in offline mode.
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class FadBackboneUnavailableError(MusicbenchError):
    """A ``[fad]`` encoder cannot be loaded here; the message says what is missing and how to
    provide it. The FAD column of a cell is then NaN with this message as its note."""


class FadNotInstalledError(FadBackboneUnavailableError):
    """``frechet-audio-distance`` is not installed."""


class FadWeightsNotFoundError(FadBackboneUnavailableError):
    """A backbone's weight files are in none of the checkpoint folders."""


class FadOfflineLoadError(FadBackboneUnavailableError):
    """Installed and weights present, but building the backbone from local files failed (a
    missing Hugging Face cache entry, a refused download, an incompatible package version)."""


class NetworkRefused(ConnectionError):
    """Raised by :func:`offline` in place of an outgoing internet connection."""


# --------------------------------------------------------------------------- local files


def package_installed() -> bool:
    """Whether ``frechet_audio_distance`` can be imported, without importing it (its import
    may download, see the module docstring)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE] is not None
    try:
        return importlib.util.find_spec(PACKAGE) is not None
    except (ImportError, ValueError):
        return False


def require_package(encoder: str) -> None:
    """Raise :class:`FadNotInstalledError` unless the package is installed."""
    if not package_installed():
        raise FadNotInstalledError(
            f"{DISTRIBUTION} is not installed: {INSTALL_HINT} (needed by the '{encoder}' "
            f"encoder; see {DOCS} for making its weights available offline)"
        )


def checkpoint_dirs(ctx: Context | None = None) -> list[Path]:
    """Where weight files are looked for, in order: the folders in ``$MUSICBENCH_FAD_CKPT_DIR``
    (``os.pathsep``-separated), ``<musicbench cache>/fad``, and the torch hub folder
    (``torch.hub.get_dir()``, the package's default ``ckpt_dir``)."""
    dirs = [Path(p).expanduser() for p in os.environ.get(CKPT_DIR_ENV, "").split(os.pathsep) if p]
    if ctx is not None:
        dirs.append(Path(ctx.cache_dir) / "fad")
    dirs.append(Path(torch.hub.get_dir()))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_file(names: Sequence[str], dirs: Sequence[Path]) -> Path | None:
    """The first ``<dir>/<name>`` or ``<dir>/checkpoints/<name>`` that is a file."""
    for d in dirs:
        for sub in (d, d / "checkpoints"):
            for name in names:
                if (sub / name).is_file():
                    return sub / name
    return None


def _where(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def _missing(what: str, looked_for: str, dirs: Sequence[Path],
             how: str) -> FadWeightsNotFoundError:
    return FadWeightsNotFoundError(
        f"{what} not found in {_where(dirs)} (looked for {looked_for}, also under "
        f"<folder>/checkpoints); download them once on a machine with internet with {how}, then "
        f"copy that folder here and set {CKPT_DIR_ENV} to it (steps in {DOCS})"
    )


def _download_command(model_name: str, extra: str = "") -> str:
    return (f"`python -c \"from frechet_audio_distance import FrechetAudioDistance as F; "
            f"F(ckpt_dir='fad-weights', model_name='{model_name}'{extra})\"`")


@contextlib.contextmanager
def offline(encoder: str) -> Iterator[None]:
    """Build a backbone with no way to download: Hugging Face offline mode (for the duration;
    ``huggingface_hub`` keeps the mode it read at its first import), stdout to stderr, and every
    internet connection refused with :class:`NetworkRefused`. Errors inside become a
    :class:`FadOfflineLoadError` naming what was refused."""
    refused: list[str] = []

    def _refuse(address: Any) -> None:
        refused.append(str(address))
        raise NetworkRefused(
            f"musicbench's '{encoder}' encoder loads local files only; refused a connection "
            f"to {address}"
        )

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost", "127.0.0.1", "::1", b"localhost"):
            _refuse(f"{host}:{port}")
        return real_getaddrinfo(host, port, *args, **kwargs)

    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    os.environ.update({k: "1" for k in _OFFLINE_ENV})
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except MusicbenchError:
        raise
    except Exception as exc:
        what = f"; it tried to reach {refused[0]} (refused)" if refused else ""
        raise FadOfflineLoadError(
            f"'{encoder}' could not be built from local files{what}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def import_package(encoder: str) -> Any:
    """``import frechet_audio_distance`` (call inside :func:`offline`); a failure names the
    Hugging Face cache entries its ``laion_clap`` import reads."""
    try:
        return importlib.import_module(PACKAGE)
    except Exception as exc:
        raise FadOfflineLoadError(
            f"{DISTRIBUTION} is installed but does not import offline ({type(exc).__name__}: "
            f"{exc}). Its import loads laion_clap, which reads the tokenizers of "
            f"{', '.join(HF_REPOS_FOR_IMPORT)} from the Hugging Face cache: import it once on a "
            f"machine with internet and copy the HF cache (or point HF_HOME at a copy; {DOCS})"
        ) from exc


def load_checkpoint(path: Path) -> Any:
    """``torch.load`` of a local checkpoint with ``weights_only=True``.

    Training checkpoints may pickle numpy objects besides the tensors (the Zenodo CNN14 files
    fail a plain ``weights_only=True`` load, autrainer/autrainer#66), which the safe unpickler
    refuses; then the globals the file names are read without unpickling it, and if they are
    all numpy's, the file is loaded again with those (and numpy's dtype classes) allowed. Any
    other global raises :class:`FadOfflineLoadError`: nothing is ever unpickled unrestricted.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = exc
    serialization = torch.serialization
    if not hasattr(serialization, "get_unsafe_globals_in_checkpoint"):  # torch < 2.5
        raise FadOfflineLoadError(f"{path} holds more than tensors and this torch cannot load "
                                  f"it safely (torch >= 2.5 can): {first}") from first
    needed = serialization.get_unsafe_globals_in_checkpoint(str(path))
    unsafe = [n for n in needed if n.split(".")[0] != "numpy"]
    if unsafe:
        raise FadOfflineLoadError(f"{path} needs {', '.join(unsafe)} to unpickle; only tensors "
                                  "and numpy objects are loaded") from first
    import numpy as np

    allowed: list[Any] = [(_resolve(n), n) for n in needed]
    dtypes = getattr(np, "dtypes", None)
    allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes else []
    with serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _resolve(dotted: str) -> Any:
    """The object named ``package.module.attr`` (the longest importable module prefix)."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise FadOfflineLoadError(f"cannot resolve {dotted}")


# --------------------------------------------------------------------------- audio helpers


def resample(audio: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """``audio[B, T]`` at ``rate`` -> ``[B, ceil(T * up / down)]`` at ``target``.

    Polyphase resampling by the exact ratio ``target / rate`` reduced by their gcd, with scipy's
    default Kaiser-windowed (beta 5) sinc anti-aliasing filter, in float64 on the CPU (the same
    filter as :mod:`musicbench.audio` uses at load); returned as float32 on ``audio``'s device.
    """
    if rate == target:
        return audio
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    x = audio.detach().to("cpu", torch.float64).numpy()
    y = resample_poly(x, up, down, axis=-1)
    return torch.from_numpy(y).to(device=audio.device, dtype=torch.float32)


def windows(audio: torch.Tensor, size: int | None) -> torch.Tensor:
    """``audio[B, T] -> [B, n, W]``: consecutive non-overlapping windows of ``size`` samples
    (the tail that fills no window is dropped); the whole clip (``n = 1, W = T``) when ``size``
    is None or the clip is no longer than one window."""
    if size is None or audio.shape[-1] <= size:
        return audio.unsqueeze(1)
    return audio.unfold(-1, size, size)


def _check_audio(audio: torch.Tensor) -> None:
    if audio.dim() != 2:
        raise ValueError(f"expected audio[B, samples] at {INPUT_RATE} Hz, got shape "
                         f"{tuple(audio.shape)}")


# --------------------------------------------------------------------------- VGGish


@dataclass(frozen=True)
class FadVggishParams:
    """``use_activation``: keep the ReLU after VGGish's last layer (the package's default,
    False, drops it)."""

    use_activation: bool = False


class FadVggishEncoder(Encoder):
    """``audio[B, samples]`` at 16 kHz -> VGGish embeddings ``[B, frames, 128]``, one per
    0.96 s (non-overlapping; clips must be at least 15600 samples, 0.975 s).

    Needs only ``vggish-10086976.pth`` (torch and numpy, not the ``[fad]`` extra): the
    network and front end are :mod:`~musicbench_plugins.encoders.vggish_net`."""

    sample_rate = INPUT_RATE
    dim = vggish_net.EMBEDDING_DIM
    version = "2"  # 2: our own VggishNet and batched torch front end instead of the hub's code
    Params = FadVggishParams
    backbone_rate = vggish_net.SAMPLE_RATE

    def __init__(self, params: FadVggishParams | None = None):
        super().__init__(params)
        self.net: vggish_net.VggishNet | None = None
        self.device = torch.device("cpu")

    def load(self, ctx: Context) -> None:
        dirs = checkpoint_dirs(ctx)
        weights = find_file([VGGISH_WEIGHTS], dirs)
        if weights is None:
            raise _missing("VGGish weights", VGGISH_WEIGHTS, dirs,
                           f"`curl -L -o fad-weights/{VGGISH_WEIGHTS} {VGGISH_WEIGHTS_URL}`")
        state = _vggish_state(weights)
        with torch.device("meta"):  # no random init of 72M weights that are replaced at once
            # the package drops the last ReLU unless use_activation (a ReLU holds no weights)
            net = vggish_net.VggishNet(final_relu=self.params.use_activation)
        net.load_state_dict(state, strict=True, assign=True)
        self.net = net.to(ctx.device).eval()
        self.device = ctx.device

    def frames(self, samples: int) -> int:
        """How many embeddings a clip of ``samples`` samples at 16 kHz gets."""
        return vggish_net.example_count(samples)

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("the fad-vggish encoder is not loaded; call load(ctx) first")
        _check_audio(audio)
        batch, samples = audio.shape
        n = self.frames(samples)
        if n == 0:
            raise ValueError(f"fad-vggish needs clips of at least {vggish_net.min_samples()} "
                             f"samples (0.975 s at 16 kHz), got {samples}")
        # float64 as the release's numpy front end; MPS has no float64, so the CPU there
        where = torch.device("cpu") if self.device.type == "mps" else self.device
        examples = vggish_net.log_mel_examples(audio.detach().to(where, torch.float64))
        x = examples.reshape(batch * n, 1, *examples.shape[-2:]).to(self.device, torch.float32)
        out = self.net(x)  # [B * n, 128]
        return out.float().reshape(batch, n, self.dim)


def _vggish_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a VGGish weight file (float32), checked against :class:`VggishNet`'s
    state-dict keys and shapes: a :class:`FadOfflineLoadError` naming the file otherwise."""
    redo = f"download it again from {VGGISH_WEIGHTS_URL}"
    try:
        state = load_checkpoint(path)
    except FadOfflineLoadError:
        raise
    except Exception as exc:  # a truncated or foreign file: torch.load's errors vary
        raise FadOfflineLoadError(f"cannot read VGGish weights {path} ({type(exc).__name__}: "
                                  f"{exc}); {redo}") from exc
    if not isinstance(state, dict):
        raise FadOfflineLoadError(f"{path} holds a {type(state).__name__}, not the VGGish state "
                                  f"dict of {VGGISH_WEIGHTS}; {redo}")
    expected = vggish_net.state_dict_shapes()
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None
              for k, v in state.items()}
    wrong = sorted(k for k in expected.keys() | shapes.keys() if shapes.get(k) != expected.get(k))
    if wrong:
        raise FadOfflineLoadError(f"{path} is not the VGGish state dict of {VGGISH_WEIGHTS} "
                                  f"(keys missing, extra or of another shape: "
                                  f"{', '.join(wrong[:5])}); {redo}")
    return {k: v.float() for k, v in state.items()}


# --------------------------------------------------------------------------- PANN


@dataclass(frozen=True)
class _PannVariant:
    cls: str
    rate: int
    window: int
    hop: int
    fmax: int
    files: tuple[str, ...]  # as the package saves it (URL-quoted '='), then Zenodo's name


PANN_VARIANTS: dict[str, _PannVariant] = {
    "16k": _PannVariant("Cnn14_16k", 16_000, 512, 160, 8000,
                        ("Cnn14_16k_mAP%3D0.438.pth", "Cnn14_16k_mAP=0.438.pth")),
    "32k": _PannVariant("Cnn14", 32_000, 1024, 320, 16000,
                        ("Cnn14_mAP%3D0.431.pth", "Cnn14_mAP=0.431.pth")),
    "8k": _PannVariant("Cnn14_8k", 8_000, 256, 80, 4000,
                       ("Cnn14_8k_mAP%3D0.416.pth", "Cnn14_8k_mAP=0.416.pth")),
}


@dataclass(frozen=True)
class FadPannParams:
    """``variant``: which CNN14 (backbone rate; 16k needs no resampling). ``window_seconds``:
    None embeds each clip whole (one frame per clip, as the package does); a length cuts clips
    into non-overlapping windows of that many seconds, one frame each."""

    variant: Literal["16k", "32k", "8k"] = "16k"
    window_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.window_seconds is not None and not self.window_seconds >= 0.5:
            raise ValueError(f"window_seconds must be >= 0.5 (or unset), got {self.window_seconds}")
        if self.window_seconds is not None:
            check_number("window_seconds", self.window_seconds, at_least=0.5, at_most=MAX_SECONDS)


class FadPannEncoder(Encoder):
    """``audio[B, samples]`` at 16 kHz -> PANN CNN14 embeddings ``[B, frames, 2048]``."""

    sample_rate = INPUT_RATE
    dim = 2048
    version = "1"
    Params = FadPannParams

    def __init__(self, params: FadPannParams | None = None):
        super().__init__(params)
        self.net: Any = None
        self.device = torch.device("cpu")

    @property
    def backbone_rate(self) -> int:
        return PANN_VARIANTS[self.params.variant].rate

    def load(self, ctx: Context) -> None:
        require_package("fad-pann")
        spec = PANN_VARIANTS[self.params.variant]
        dirs = checkpoint_dirs(ctx)
        weights = find_file(spec.files, dirs)
        if weights is None:
            raise _missing(f"PANN {spec.cls} weights", " or ".join(spec.files), dirs,
                           _download_command("pann", f", sample_rate={spec.rate}"))
        with offline("fad-pann"):
            import_package("fad-pann")
            pann = importlib.import_module(f"{PACKAGE}.models.pann")
            net = getattr(pann, spec.cls)(
                sample_rate=spec.rate, window_size=spec.window, hop_size=spec.hop, mel_bins=64,
                fmin=50, fmax=spec.fmax, classes_num=527,
            )
            net.load_state_dict(load_checkpoint(weights)["model"])
            self.net = net.to(ctx.device).eval()
        self.device = ctx.device

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("the fad-pann encoder is not loaded; call load(ctx) first")
        _check_audio(audio)
        x = resample(audio.to(self.device), INPUT_RATE, self.backbone_rate)
        size = (None if self.params.window_seconds is None
                else round(self.params.window_seconds * self.backbone_rate))
        x = windows(x, size)  # [B, n, W]
        batch, n, _ = x.shape
        out = self.net(x.reshape(batch * n, -1).contiguous(), None)["embedding"]
        return out.detach().float().reshape(batch, n, self.dim)


# --------------------------------------------------------------------------- CLAP


CLAP_CHECKPOINTS: dict[str, tuple[str, str]] = {  # submodel -> (file, audio model)
    "630k-audioset": ("630k-audioset-best.pt", "HTSAT-tiny"),
    "630k": ("630k-best.pt", "HTSAT-tiny"),
    "music_audioset": ("music_audioset_epoch_15_esc_90.14.pt", "HTSAT-base"),
    "music_speech": ("music_speech_epoch_15_esc_89.25.pt", "HTSAT-base"),
    "music_speech_audioset": ("music_speech_audioset_epoch_15_esc_89.98.pt", "HTSAT-base"),
}
CLAP_RATE = 48_000
CLAP_MAX_SECONDS = 10.0  # laion_clap's non-fusion input: 480000 samples, longer is cropped


@dataclass(frozen=True)
class FadClapParams:
    """``submodel``: the LAION CLAP checkpoint (the package's names; ``music_*`` are the
    music-trained HTSAT-base models). ``window_seconds``: clips no longer than this are
    embedded whole (laion_clap repeat-pads them to 10 s), longer ones are cut into
    non-overlapping windows of this length; at most 10."""

    submodel: Literal["630k-audioset", "630k", "music_audioset", "music_speech",
                      "music_speech_audioset"] = "630k-audioset"
    window_seconds: float = CLAP_MAX_SECONDS

    def __post_init__(self) -> None:
        if not 0.5 <= self.window_seconds <= CLAP_MAX_SECONDS:
            raise ValueError(f"window_seconds must be in [0.5, {CLAP_MAX_SECONDS:g}], got "
                             f"{self.window_seconds}")


class FadClapEncoder(Encoder):
    """``audio[B, samples]`` at 16 kHz (resampled to 48 kHz inside) -> CLAP audio embeddings
    ``[B, frames, 512]``, L2-normalised."""

    sample_rate = INPUT_RATE
    dim = 512
    version = "1"
    Params = FadClapParams
    backbone_rate = CLAP_RATE

    def __init__(self, params: FadClapParams | None = None):
        super().__init__(params)
        self.net: Any = None
        self.device = torch.device("cpu")

    def load(self, ctx: Context) -> None:
        require_package("fad-clap")
        filename, amodel = CLAP_CHECKPOINTS[self.params.submodel]
        dirs = checkpoint_dirs(ctx)
        weights = find_file([filename], dirs)
        if weights is None:
            raise _missing(f"CLAP '{self.params.submodel}' weights", filename, dirs,
                           _download_command("clap", ", sample_rate=48000, submodel_name="
                                             f"'{self.params.submodel}'"))
        with offline("fad-clap"):
            import_package("fad-clap")
            laion_clap = importlib.import_module("laion_clap")
            # builds the roberta-base text branch from the HF cache too (offline mode)
            net = laion_clap.CLAP_Module(enable_fusion=False, amodel=amodel,
                                         device=str(ctx.device))
            net.load_ckpt(str(weights), verbose=False)
            net.eval()
            self.net = net
        self.device = ctx.device

    @torch.no_grad()
    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("the fad-clap encoder is not loaded; call load(ctx) first")
        _check_audio(audio)
        x = resample(audio.to(self.device), INPUT_RATE, CLAP_RATE)
        x = windows(x, round(self.params.window_seconds * CLAP_RATE))  # [B, n, W]
        batch, n, _ = x.shape
        out = self.net.get_audio_embedding_from_data(x.reshape(batch * n, -1), use_tensor=True)
        return out.detach().float().reshape(batch, n, self.dim)
