"""Read one audio file into the harness's form: ``Tensor[T]`` float32, mono, in [-1, 1].

:func:`load_audio` is the one place where files become waveforms (datasets that read files call
it), so every file is checked the same way and every broken file is reported with a specific
reason instead of crashing a run or silently feeding garbage to a model.

What it does, in order:

1. **Open** with ``soundfile`` (libsndfile: WAV, FLAC, OGG/Vorbis, AU/SND, AIFF, ... whatever
   the installed libsndfile reads; MP3 only with libsndfile >= 1.1).
2. **Check** before decoding: sample rate in [:data:`MIN_SAMPLE_RATE`,
   :data:`MAX_SAMPLE_RATE`], at most :data:`MAX_CHANNELS` channels, at least one frame, the
   data not cut short, and long enough for ``min_seconds``.
3. **Decode** to float64 (integer PCM is scaled to [-1, 1) by soundfile), then check that
   every sample is finite and that as many frames came back as the header promised.
4. **Downmix** by averaging the channels.
5. **Resample** once with :func:`scipy.signal.resample_poly` by the exact rational factor
   ``sample_rate / file_rate`` reduced by their gcd (e.g. 44100 -> 16000 is up 160, down 441),
   with scipy's default Kaiser (beta 5) anti-aliasing filter. The output has
   ``ceil(frames * up / down)`` samples.
6. **Level**: only if the peak then exceeds 1 (a float file stored above full scale, or the
   small overshoot of the resampling filter on a full-scale signal), the whole clip is divided
   by its peak. Scaling rather than clipping: clipping would add distortion a model could hear.
   Nothing is done to any other file (no normalisation, no DC removal).

Truncation: libsndfile quietly shortens the frame count of a WAV or AU file whose data chunk
is cut off, so the header's declared data size is compared with the bytes actually present
(WAV: the ``data`` chunk of the RIFF/RIFX chunk list; AU: the data-size field, unless it is
the "unknown" marker). For other formats a decode error, fewer frames than announced, or
libsndfile's "ended unexpectedly" log line (OGG) counts as truncation.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from musicbench.errors import MusicbenchError

if TYPE_CHECKING:
    import torch

#: Sample rates outside this range are refused (telephone 8 kHz to 384 kHz studio masters).
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 384_000
#: More channels than this is not a music recording (7.1 surround has 8).
MAX_CHANNELS = 8

BadAudioKind = Literal[
    "unreadable", "not-audio", "corrupt", "truncated", "empty", "non-finite",
    "unsupported-rate", "unsupported-channels", "too-short", "too-long",
]


#: Leading bytes of the containers libsndfile reads, to tell a corrupt header of a real audio
#: file from a file that is no audio at all.
_MAGIC: tuple[bytes, ...] = (
    b"RIFF", b"RIFX", b"RF64", b"BW64", b"fLaC", b"OggS", b".snd", b"FORM", b"caff",
    b"wvpk", b"MThd", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2",
)
_AU_UNKNOWN_SIZE = 0xFFFFFFFF


class BadAudioError(MusicbenchError):
    """A file that cannot be used as audio.

    ``reason`` is one specific line (what is wrong, with the values), ``kind`` one of
    :data:`BadAudioKind` (for counting), ``path`` the file. ``str(exc)`` is ``"path: reason"``.
    """

    def __init__(self, reason: str, *, kind: BadAudioKind = "unreadable",
                 path: str | os.PathLike[str] | None = None):
        self.reason = printable(reason)
        self.kind = kind
        self.path = None if path is None else printable(os.fsdecode(path))
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogate escapes) written as
    ``\\xNN``, so that it can be stored and shown as UTF-8."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


_NOT_REGULAR = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
                stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def stat_input(path: str | bytes | os.PathLike) -> os.stat_result:
    """``os.stat`` of an input file, or :class:`BadAudioError` (kind ``unreadable``) saying
    why it cannot be read as one: no such file, dangling symbolic link, symbolic link loop,
    permission denied, a path through something that is not a directory, a name too long or
    with a NUL, a directory, or a FIFO, socket or device (whose read could block forever)."""
    def bad(reason: str) -> BadAudioError:
        return BadAudioError(reason, kind="unreadable", path=path)

    try:
        st = os.stat(path)
    except ValueError:
        raise bad("invalid file name (it contains a NUL character)") from None
    except OSError as exc:
        raise bad(os_reason(path, exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise bad("is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        what = _NOT_REGULAR.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise bad(f"is {what}, not a regular file (reading it could block or never end)")
    return st


def os_reason(path: str | bytes | os.PathLike, exc: OSError) -> str:
    """One line for an OS error on an input path."""
    code = exc.errno
    if code == errno.ELOOP:
        return "symbolic link loop (a link that leads back to itself)"
    if code == errno.ENOENT:
        if os.path.islink(path):
            try:
                return f"dangling symbolic link (to {os.fsdecode(os.readlink(path))})"
            except OSError:
                return "dangling symbolic link"
        return "no such file"
    if code == errno.ENOTDIR:
        return "a folder in the path is not a directory"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read: {exc.strerror or exc}"


def load_audio(
    path: str | os.PathLike[str], sample_rate: int, *, min_seconds: float | None = None
) -> torch.Tensor:
    """Read ``path`` as ``Tensor[T]`` float32 mono in [-1, 1] at ``sample_rate`` Hz.

    Args:
        path: an audio file soundfile can read.
        sample_rate: the rate (Hz) of the returned waveform.
        min_seconds: refuse files whose output would have fewer than
            ``round(min_seconds * sample_rate)`` samples.

    Returns:
        ``Tensor[T]`` float32 with ``T = ceil(frames * sample_rate / file_rate)``.

    Raises:
        BadAudioError: with a specific ``reason`` and ``kind`` (see the module docstring).
        ValueError: ``sample_rate`` or ``min_seconds`` itself is invalid.
    """
    import torch

    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int (Hz), got {sample_rate!r}")
    if min_seconds is not None and not min_seconds >= 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds!r}")
    try:
        mono, file_rate = _read_mono(Path(os.fsdecode(path)), sample_rate, min_seconds)
    except OSError as exc:  # e.g. the file went away or became unreadable while being read
        raise BadAudioError(os_reason(path, exc), kind="unreadable", path=path) from None
    out = _resample(mono, file_rate, sample_rate)
    peak = float(np.max(np.abs(out)))
    if peak > 1.0:
        out = out / peak
    return torch.from_numpy(out.astype(np.float32))


def _read_mono(path: Path, sample_rate: int, min_seconds: float | None) -> tuple[np.ndarray, int]:
    """Checks 1-4 of the module docstring; returns ``(float64[frames] mono, file rate)``."""
    import soundfile as sf

    def bad(reason: str, kind: BadAudioKind) -> BadAudioError:
        return BadAudioError(reason, kind=kind, path=path)

    head = _head(path, bad)
    if not head:
        raise bad("empty file (0 bytes)", "empty")
    mpeg = _maybe_mpeg(path, head)
    try:
        # bytes: a name that is not valid UTF-8 opens too (soundfile would encode a str strictly)
        with _decoder_stderr(mpeg) as chatter:
            f = sf.SoundFile(os.fsencode(path))
    except sf.LibsndfileError as exc:
        msg = _sf_message(exc)
        if "not a regular file" in msg:
            # _head checked that it is one: libsndfile says this when its MPEG decoder
            # (mpg123) gives up; the decoder's own notes say why.
            notes = "; ".join(chatter)
            msg = ("the MPEG decoder (mpg123) found no audio stream"
                   + (f": {notes}" if notes else ""))
        # Reasons are published (the leaderboard lists skipped inputs), so they say what the
        # file is not, never what it holds: a manifest may name any file, /etc/shadow too.
        msg = without_content(msg)
        if head.startswith(_MAGIC):
            raise bad(f"corrupt header ({msg})", "corrupt") from None
        raise bad(f"not an audio file (no known audio signature; {msg})", "not-audio") \
            from None
    except OSError as exc:
        raise bad(f"cannot open: {exc.strerror or exc}", "unreadable") from None
    with f:
        rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise bad(f"unsupported sample rate {rate} Hz (accepted: {MIN_SAMPLE_RATE}-"
                      f"{MAX_SAMPLE_RATE} Hz)", "unsupported-rate")
        if not 1 <= channels <= MAX_CHANNELS:
            raise bad(f"unsupported channel count {channels} (accepted: 1-{MAX_CHANNELS})",
                      "unsupported-channels")
        short = _declared_shortfall(path, head)
        if short is not None:
            raise bad(short, "truncated")
        if "ended unexpectedly" in (f.extra_info or ""):
            raise bad(f"truncated: the {f.format} stream ended unexpectedly", "truncated")
        if frames <= 0:
            raise bad(f"no audio frames (a valid {f.format} header with 0 frames)", "empty")
        _check_length(frames, rate, sample_rate, min_seconds, bad)
        try:
            data = f.read(dtype="float64", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise bad(f"truncated or corrupt data ({_sf_message(exc)})", "truncated") from None
        except MemoryError:  # e.g. a header that claims far more frames than the file holds
            raise bad(f"too long to decode: the header declares {frames} frames of {channels} "
                      f"channel(s) ({frames / rate / 3600:.1f} h), more than fits in memory",
                      "too-long") from None
    if data.shape[0] < frames:
        raise bad(f"truncated: read {data.shape[0]} of the {frames} frames the header declares",
                  "truncated")
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - np.count_nonzero(finite))
        first = int(np.argmin(finite.all(axis=1)))
        raise bad(f"{n_bad} non-finite samples (NaN or inf), first at frame {first}",
                  "non-finite")
    mono = data[:, 0] if channels == 1 else data.mean(axis=1)
    return mono, rate


def _head(path: Path, bad) -> bytes:
    """The first 16 bytes; a path that is not a readable regular file (see
    :func:`stat_input`) raises with the reason. Opened without blocking, so a FIFO put in
    the file's place after the check cannot hang the run."""
    stat_input(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise bad("is not a regular file (it changed while being opened)", "unreadable")
            return os.read(fd, 16)
        finally:
            os.close(fd)
    except OSError as exc:
        raise bad(os_reason(path, exc), "unreadable") from None


_MPEG_SUFFIXES = (".mp3", ".mp2", ".mp1", ".mpga", ".mpeg")


def _maybe_mpeg(path: Path, head: bytes) -> bool:
    """Whether libsndfile may hand the file to its MPEG decoder (it goes by the name, too)."""
    sync = len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0
    return path.suffix.lower() in _MPEG_SUFFIXES or head.startswith(b"ID3") or sync


_STDERR_LOCK = threading.Lock()
#: How the MPEG decoder (mpg123, inside libsndfile) starts the lines it writes to stderr.
_CHATTER = ("Note:", "Warning:", "Error:", "[")


@contextmanager
def _decoder_stderr(capture: bool) -> Iterator[list[str]]:
    """Collect what the C decoder writes to file descriptor 2 while the block runs (mpg123
    explains its failures there, and would otherwise print over the progress display); other
    lines written meanwhile are passed on. Yields the decoder's lines (filled on exit)."""
    lines: list[str] = []
    if not capture:
        yield lines
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            _sort_chatter(tmp.read().decode("utf-8", "backslashreplace"), lines)


def _sort_chatter(text: str, notes: list[str]) -> None:
    """The decoder's lines (prefix dropped) into ``notes``; the rest back to stderr."""
    other = []
    for line in text.splitlines():
        if line.startswith(_CHATTER):
            note = line.split("] ", 1)[-1] if line.startswith("[") else line.split(":", 1)[1]
            note = note.strip().rstrip(".")
            if note and note not in notes:
                notes.append(note)
        elif line.strip():
            other.append(line)
    if other:
        sys.stderr.write("\n".join(other) + "\n")


def _check_length(frames: int, rate: int, sample_rate: int, min_seconds: float | None,
                  bad) -> None:
    if min_seconds is None:
        return
    up, down = _ratio(rate, sample_rate)
    n_out = -(-frames * up // down)
    need = round(min_seconds * sample_rate)
    if n_out < need:
        raise bad(f"too short: {frames / rate:.3f} s < {min_seconds:g} s required", "too-short")


def _declared_shortfall(path: Path, head: bytes) -> str | None:
    """For WAV (RIFF/RIFX) and AU: a message if the header declares more data bytes than the
    file holds, else ``None`` (also for every other format: those are checked on decode)."""
    size = path.stat().st_size
    if head[:4] == b".snd" and len(head) >= 12:
        offset, declared = struct.unpack(">II", head[4:12])
        if declared != _AU_UNKNOWN_SIZE and offset + declared > size:
            return (f"truncated: header declares {declared} data bytes, file holds "
                    f"{max(size - offset, 0)}")
        return None
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        endian = "<" if head[:4] == b"RIFF" else ">"
        with open(path, "rb") as fh:
            pos = 12
            while pos + 8 <= size:
                fh.seek(pos)
                chunk = fh.read(8)
                cid, csize = chunk[:4], struct.unpack(endian + "I", chunk[4:8])[0]
                if cid == b"data":
                    have = size - pos - 8
                    # 0 and 0xFFFFFFFF mark "size unknown" (streamed writers): not truncation.
                    if csize not in (0, 0xFFFFFFFF) and csize > have:
                        return (f"truncated: header declares {csize} data bytes, file holds "
                                f"{have}")
                    return None
                pos += 8 + csize + (csize & 1)
    return None


#: Numbers a decoder quotes from the file's bytes: hex (mpg123's "Illegal Audio-MPEG-Header
#: 0x726f6f74" is four bytes of the file) and bare decimals ("major version 83" is one).
_QUOTED_BYTES = re.compile(r"\b0x[0-9a-fA-F]+u?\b|(?<![\w.])\d+(?![\w.])")


def without_content(message: str) -> str:
    """A decoder's message with every number it may have read from the file written ``N``
    (hex and decimal alike; offsets go too, a small loss next to never quoting a private
    file's bytes in a published reason)."""
    return _QUOTED_BYTES.sub("N", message)


def _sf_message(exc: BaseException) -> str:
    """libsndfile's own words, without the repeated file name."""
    text = str(getattr(exc, "error_string", "") or exc).strip()
    return text.rstrip(".") or type(exc).__name__


def _ratio(rate: int, target: int) -> tuple[int, int]:
    g = math.gcd(rate, target)
    return target // g, rate // g


def _resample(mono: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``float64[n] -> float64[ceil(n * up / down)]`` by polyphase filtering (or unchanged)."""
    if rate == target:
        return mono
    from scipy.signal import resample_poly

    up, down = _ratio(rate, target)
    return resample_poly(mono, up, down)
