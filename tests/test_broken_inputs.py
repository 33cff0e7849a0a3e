"""Broken input files never end a run (issue 14, item 1 and item 7): every OS-level error while
resolving, stat-ing or opening an input, and every kind of broken audio, is a skipped input
with its reason, in every dataset that reads files; ``musicbench run`` and ``musicbench
validate folder`` on a corpus of such files exit 0 with every broken file listed.

The corpus (documented in docs/reliability.md, "Broken input files") is made here, in tmp.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli
from test_plugins import TOY_CONFIG

from musicbench.audio import BadAudioError, load_audio
from musicbench.interfaces import Context
from musicbench_plugins.datasets.folder import FolderDataset, FolderRetrievalDataset, Params
from musicbench_plugins.datasets.gtzan import GENRES, GTZAN
from musicbench_plugins.datasets.gtzan import Params as GTZANParams

RATE = 16_000
CLIP = 0.25  # seconds: the toy model's input length
SPLITS = ("train", "valid", "test")
NON_UTF8 = b"latin1-\xe9t\xe9.wav"  # a name that is not valid UTF-8 (the filesystem's encoding)


def _ctx(cache_dir: Path) -> Context:
    return Context(cache_dir=cache_dir, device=torch.device("cpu"))


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) if a read blocks, e.g. on a FIFO."""
    def expire(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s (a read on a FIFO?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _tone(seconds: float = 0.5, rate: int = RATE, hz: float = 440.0, channels: int = 1):
    t = np.arange(round(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return x if channels == 1 else np.repeat(x[:, None], channels, axis=1)


def _raw_wav(path: Path, *, channels: int, rate: int, frames: int,
             declared: int | None = None) -> None:
    """A 16-bit PCM WAV written by hand, so its header can say anything."""
    data = np.zeros(frames * max(channels, 1), "<i2").tobytes()
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block, 16)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", size) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body)


def build_corpus(d: Path) -> tuple[Path, dict[str, str], list[str]]:
    """A folder of broken (and a few good) files and a ``folder`` manifest listing all of them.

    Returns ``(manifest, {manifest path: fragment of the expected reason}, usable paths)``.
    """
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(14)
    broken: dict[str, str] = {}
    usable: list[str] = []

    def good(name: str, split: str, **kw) -> None:
        sf.write(str(d / name), _tone(**kw), kw.get("rate", RATE))
        usable.append(name)
        rows.append((name, split))

    def bad(name: str, fragment: str) -> None:
        broken[name] = fragment
        rows.append((name, "train"))

    rows: list[tuple[str, str]] = []
    # Good files: every split has some, so the run and `validate` have work to do.
    for i, split in enumerate(["train", "train", "valid", "test", "test"]):
        good(f"good-{i}.wav", split, hz=300 + 60 * i)
    # A FLAC named .wav is not broken: formats are recognised by content.
    sf.write(str(d / "flac-named.wav"), _tone(hz=777), RATE, format="FLAC")
    usable.append("flac-named.wav")
    rows.append(("flac-named.wav", "test"))
    # 8 channels (7.1) is the most accepted; downmixed.
    sf.write(str(d / "eight-channels.wav"), _tone(channels=8), RATE)
    usable.append("eight-channels.wav")
    rows.append(("eight-channels.wav", "valid"))
    # A link whose target's name is not valid UTF-8: the file itself is fine.
    target = os.path.join(os.fsencode(d), NON_UTF8)
    sf.write(target, _tone(hz=500), RATE)
    os.symlink(target, d / "to-latin1.wav")
    usable.append("to-latin1.wav")
    rows.append(("to-latin1.wav", "train"))

    # -- broken audio -----------------------------------------------------------------------
    (d / "zero-bytes.wav").write_bytes(b"")
    bad("zero-bytes.wav", "empty file (0 bytes)")
    full = (d / "good-0.wav").read_bytes()
    (d / "header-cut.wav").write_bytes(full[:20])
    bad("header-cut.wav", "corrupt header")
    (d / "data-cut.wav").write_bytes(full[: len(full) // 2])
    bad("data-cut.wav", "truncated")
    for ext in ("wav", "flac", "mp3"):
        (d / f"garbage.{ext}").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        bad(f"garbage.{ext}", "not an audio file")
    (d / "text.flac").write_text("this is a text file, not audio\n" * 20)
    bad("text.flac", "not an audio file")
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        x = _tone(hz=600)
        x[1000] = value
        sf.write(str(d / name), x, RATE, subtype="FLOAT")
        bad(name, "non-finite")
    _raw_wav(d / "huge-declared.wav", channels=1, rate=RATE, frames=RATE,
             declared=0x7FFFFFF0)
    bad("huge-declared.wav", "header declares 2147483632 data bytes")
    sf.write(str(d / "huge-declared.flac"), _tone(), RATE, format="FLAC")
    flac = bytearray((d / "huge-declared.flac").read_bytes())
    # STREAMINFO's total-samples field: the low 36 bits of the 8 bytes at offset 18.
    (field,) = struct.unpack(">Q", flac[18:26])
    flac[18:26] = struct.pack(">Q", field | (2**36 - 1))
    (d / "huge-declared.flac").write_bytes(bytes(flac))
    # Refused before decoding where the allocation fails (overcommit off), else cut short.
    bad("huge-declared.flac", "declares 68719476735 frames|truncated or corrupt data")
    _raw_wav(d / "zero-channels.wav", channels=0, rate=RATE, frames=RATE)
    bad("zero-channels.wav", "corrupt header")
    sf.write(str(d / "nine-channels.wav"), _tone(channels=9), RATE)
    bad("nine-channels.wav", "unsupported channel count 9")
    _raw_wav(d / "rate-1hz.wav", channels=1, rate=1, frames=RATE)
    bad("rate-1hz.wav", "unsupported sample rate 1 Hz")
    _raw_wav(d / "rate-4ghz.wav", channels=1, rate=4_000_000_000, frames=RATE)
    bad("rate-4ghz.wav", "corrupt header")  # above 2**31: libsndfile refuses the header
    _raw_wav(d / "rate-1mhz.wav", channels=1, rate=1_000_000, frames=RATE)
    bad("rate-1mhz.wav", "unsupported sample rate 1000000 Hz")
    sf.write(str(d / "too-short.wav"), _tone(seconds=0.1), RATE)
    bad("too-short.wav", "too short")

    # -- paths the OS will not give as a file -----------------------------------------------
    (d / "a-folder.wav").mkdir()
    bad("a-folder.wav", "is a directory")
    os.symlink("loop.wav", d / "loop.wav")
    bad("loop.wav", "symbolic link loop")
    os.symlink("ping.wav", d / "pong.wav")
    os.symlink("pong.wav", d / "ping.wav")
    bad("ping.wav", "symbolic link loop")
    os.symlink("gone.wav", d / "dangling.wav")
    bad("dangling.wav", "dangling symbolic link")
    os.mkfifo(d / "fifo.wav")
    bad("fifo.wav", "FIFO")
    os.symlink("/dev/zero", d / "dev-zero.wav")
    bad("dev-zero.wav", "character device")
    bad("good-1.wav/inside.wav", "not a directory")
    bad("x" * 300 + ".wav", "name too long")
    bad("missing.wav", "no such file")

    manifest = d / "manifest.csv"
    lines = ["path,label,split"] + [f"{p},class-{i % 3},{s}" for i, (p, s) in enumerate(rows)]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, broken, usable


def _check_listed(problems: dict[str, str], broken: dict[str, str]) -> None:
    assert set(problems) == set(broken), (set(problems) ^ set(broken))
    for source, fragments in broken.items():
        assert any(f in problems[source] for f in fragments.split("|")), (source,
                                                                           problems[source])
        assert "possibly a pipe" not in problems[source], (source, problems[source])


# -- item 1: in-process --------------------------------------------------------------------------


def test_every_broken_file_of_the_corpus_is_a_skipped_input_with_its_reason(tmp_path) -> None:
    manifest, broken, usable = build_corpus(tmp_path / "corpus")
    ds = FolderDataset(Params(manifest=str(manifest), clip_seconds=CLIP))
    ds.name = "folder"
    with _deadline(60):
        ds.prepare(_ctx(tmp_path / "cache"))
    _check_listed(dict(ds.problems()), broken)
    assert sorted(e.id for s in SPLITS for e in ds.examples(s)) == sorted(usable)
    for s in SPLITS:
        for e in ds.examples(s):
            assert torch.isfinite(e.audio).all() and e.audio.shape == (int(CLIP * RATE),)
    # Everything in problems() can be written as UTF-8 (results.sqlite, leaderboard.md).
    json.dumps(ds.problems(), ensure_ascii=False).encode("utf-8")


def test_a_symlink_loop_in_a_retrieval_manifest_is_skipped(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        sf.write(str(d / f"v{i}.wav"), _tone(hz=300 + 40 * i), RATE)
    os.symlink("loop.wav", d / "loop.wav")
    (d / "m.csv").write_text("path,work_id,split\nv0.wav,w1,test\nv1.wav,w1,test\n"
                             "v2.wav,w2,test\nloop.wav,w2,test\n")
    ds = FolderRetrievalDataset(Params(manifest=str(d / "m.csv"), clip_seconds=CLIP))
    ds.name = "folder-retrieval"
    ds.prepare(_ctx(tmp_path / "cache"))
    assert "symbolic link loop" in dict(ds.problems())["loop.wav"]
    assert [e.id for e in ds.queries("test")] == ["v1.wav"]


def _deny(monkeypatch: pytest.MonkeyPatch, locked: Path) -> None:
    """Root reads a chmod-000 folder anyway: make the OS calls fail as they do for a user."""
    prefix = os.fsencode(locked)

    def guard(fn):
        def wrapped(path, *args, **kw):
            p = path if isinstance(path, int) else os.fsencode(path)
            if not isinstance(p, int) and (p == prefix or p.startswith(prefix + b"/")):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return fn(path, *args, **kw)
        return wrapped

    for name in ("stat", "lstat", "open", "scandir", "listdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    import builtins
    import io

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))


def test_permission_denied_is_a_skipped_input(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "d"
    (d / "locked").mkdir(parents=True)
    for i, split in enumerate(["train", "valid", "test"]):
        sf.write(str(d / f"ok-{i}.wav"), _tone(hz=300 + 40 * i), RATE)
    sf.write(str(d / "locked" / "in.wav"), _tone(), RATE)
    sf.write(str(d / "no-read.wav"), _tone(), RATE)
    (d / "m.csv").write_text("path,label,split\nok-0.wav,a,train\nok-1.wav,a,valid\n"
                             "ok-2.wav,a,test\nlocked/in.wav,a,test\nno-read.wav,a,test\n")
    os.chmod(d / "locked", 0)
    os.chmod(d / "no-read.wav", 0)
    try:
        if os.geteuid() == 0:  # root is not stopped by the mode bits: simulate what a user gets
            _deny(monkeypatch, d / "locked")
            _deny(monkeypatch, d / "no-read.wav")
        ds = FolderDataset(Params(manifest=str(d / "m.csv"), clip_seconds=CLIP))
        ds.name = "folder"
        ds.prepare(_ctx(tmp_path / "cache"))
        problems = dict(ds.problems())
        monkeypatch.undo()
    finally:
        os.chmod(d / "locked", 0o755)
        os.chmod(d / "no-read.wav", 0o644)
    assert set(problems) == {"locked/in.wav", "no-read.wav"}
    for reason in problems.values():
        assert "permission denied" in reason.lower(), reason


def test_load_audio_turns_every_os_error_into_a_bad_audio_error(tmp_path: Path) -> None:
    os.symlink("loop.wav", tmp_path / "loop.wav")
    os.mkfifo(tmp_path / "fifo.wav")
    with _deadline(20):
        for name, fragment in (("loop.wav", "symbolic link loop"), ("fifo.wav", "FIFO")):
            with pytest.raises(BadAudioError) as info:
                load_audio(tmp_path / name, RATE)
            assert info.value.kind == "unreadable" and fragment in info.value.reason
    with pytest.raises(BadAudioError, match="NUL"):
        load_audio(str(tmp_path / "a\0b.wav"), RATE)
    # A name that is not valid UTF-8 is read all the same (bytes or surrogate-escaped str).
    path = os.path.join(os.fsencode(tmp_path), NON_UTF8)
    sf.write(path, _tone(), RATE)
    assert load_audio(os.fsdecode(path), RATE).shape == (RATE // 2,)


# -- item 7: garbage .mp3, GTZAN ------------------------------------------------------------------


def test_a_garbage_mp3_gets_the_decoders_complaint_not_not_a_regular_file(tmp_path) -> None:
    path = tmp_path / "garbage.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(BadAudioError) as info:
        load_audio(path, RATE)
    reason = info.value.reason
    assert info.value.kind == "not-audio"
    assert "regular file" not in reason and "pipe" not in reason, reason
    assert "MPEG" in reason, reason


def _gtzan(root: Path, genres: tuple[str, ...]) -> Path:
    for gi, g in enumerate(genres):
        (root / "genres" / g).mkdir(parents=True)
        for k in range(3):
            sf.write(str(root / "genres" / g / f"{g}.{k:05d}.wav"), _tone(hz=200 + 30 * gi + k),
                     RATE)
    return root / "genres"


def test_gtzan_skips_unreadable_tracks_and_names_that_are_not_utf8(tmp_path: Path) -> None:
    genres = _gtzan(tmp_path / "g", GENRES)
    os.mkfifo(genres / "jazz" / "jazz.00090.wav")
    os.symlink("rock.00091.wav", genres / "rock" / "rock.00091.wav")
    (genres / "pop" / "pop.00092.wav").mkdir()
    sf.write(os.path.join(os.fsencode(genres / "blues"), b"blues.\xff0093.wav"), _tone(), RATE)
    ds = GTZAN(GTZANParams(root=str(tmp_path / "g"), clip_seconds=CLIP))
    ds.name = "gtzan"
    with _deadline(60):
        ds.prepare(_ctx(tmp_path / "cache"))
    problems = dict(ds.problems())
    assert "FIFO" in problems["jazz/jazz.00090.wav"]
    assert "symbolic link loop" in problems["rock/rock.00091.wav"]
    assert "is a directory" in problems["pop/pop.00092.wav"]
    [(source, reason)] = [(s, r) for s, r in problems.items() if s.startswith("blues/")]
    assert source == "blues/blues.\\xff0093.wav" and "not valid UTF-8" in reason
    assert len(ds.examples("train")) + len(ds.examples("valid")) + len(ds.examples("test")) == 30
    json.dumps(ds.problems(), ensure_ascii=False).encode("utf-8")


def test_gtzan_absent_genre_folders_are_a_warning_not_skipped_inputs(tmp_path, caplog) -> None:
    _gtzan(tmp_path / "g", GENRES[:8])  # no reggae, no rock
    ds = GTZAN(GTZANParams(root=str(tmp_path / "g"), clip_seconds=CLIP))
    ds.name = "gtzan"
    with caplog.at_level(logging.WARNING, logger="musicbench.datasets"):
        ds.prepare(_ctx(tmp_path / "cache"))
    assert ds.problems() == []
    assert ds.labels == GENRES  # the label set is GTZAN's, whatever is on disk
    assert ds.info["missing_genres"] == ["reggae", "rock"]
    warned = [r.getMessage() for r in caplog.records if "reggae" in r.getMessage()]
    assert len(warned) == 1 and "rock" in warned[0] and "no folder" in warned[0], warned


# -- done-when: the corpus through the CLI ---------------------------------------------------------


CONFIG = """
[run]
fad_encoder = ""
name = "broken-inputs"
samples = 4
batch_size = 4
device = "cpu"

[[datasets]]
name = "folder"
manifest = "{manifest}"
clip_seconds = {clip}

[[models]]
name = "toy-model"

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = 0.004
"""


def test_the_corpus_through_run_and_validate_exits_0_and_lists_every_broken_file(
        tmp_path: Path, toy_site: Path) -> None:
    manifest, broken, _usable = build_corpus(tmp_path / "corpus")
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(manifest=manifest, clip=CLIP))
    out = tmp_path / "out"
    run = cli("run", str(config), "--out", str(out), sites=(toy_site,), timeout=240)
    assert run.returncode in (0, 2) and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.returncode == 0, run.stderr[-3000:]
    with sqlite3.connect(out / "results.sqlite") as db:
        (settings,) = db.execute("SELECT settings FROM runs").fetchone()
    [skipped] = json.loads(settings)["datasets"].values()
    _check_listed(dict(map(tuple, skipped["skipped"])), broken)
    board = (out / "leaderboard.md").read_text()
    assert f"{len(broken)} input(s) skipped" in board

    check = cli("validate", "folder", "-p", f"manifest={json.dumps(str(manifest))}",
                "-p", f"clip_seconds={CLIP}", sites=(toy_site,), timeout=240)
    assert check.returncode in (0, 2) and "Traceback" not in check.stderr, check.stderr[-3000:]
    assert check.returncode == 0, check.stderr[-3000:]
    text = "".join(check.stderr.split())  # the console wraps (and folds) long lines
    for source in broken:
        assert source in text, source



def test_gtzan_genre_folder_that_cannot_be_listed_is_a_skipped_input(tmp_path, monkeypatch):
    genres = _gtzan(tmp_path / "g", GENRES)
    listdir = Path.iterdir

    def iterdir(self):
        if self == genres / "jazz":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return listdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    ds = GTZAN(GTZANParams(root=str(tmp_path / "g"), clip_seconds=CLIP))
    ds.name = "gtzan"
    ds.prepare(_ctx(tmp_path / "cache"))
    assert ds.problems() == [("jazz/", "cannot list the jazz folder: permission denied")]


# -- bad command-line inputs (issue 26): one line, exit 2, before any work ---------------------


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A finished one-cell toy run, for the commands that read a store."""
    from conftest import run_toy_config

    return run_toy_config(tmp_path_factory.mktemp("toy-run"), TOY_CONFIG)[1]


@pytest.fixture
def no_loading(toy_plugins, monkeypatch) -> list[str]:
    """The toy plugins as the CLI's plugins, with every model load and dataset build recorded
    (and refused): a command that refuses its input before any work leaves the list empty."""
    import musicbench.plugins
    from musicbench.workspace import Workspace

    work: list[str] = []

    def refuse(what: str):
        def record(self, name, *args, **kwargs):
            work.append(f"{what} {name}")
            raise AssertionError(f"{what} {name} before the input was checked")
        return record

    monkeypatch.setattr(musicbench.plugins, "_SYSTEM", toy_plugins)
    monkeypatch.setattr(Workspace, "model", refuse("loaded model"))
    monkeypatch.setattr(Workspace, "dataset", refuse("built dataset"))
    return work


def _invoke(*args: str):
    """``musicbench ARGS`` in-process, as ``main()`` ends it: ``(exit code, stderr)``; a
    traceback (an exception other than a ConfigError, which main() prints as one line) fails."""
    from typer.testing import CliRunner

    from musicbench.cli import app
    from musicbench.errors import ConfigError

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    exc = result.exception
    if isinstance(exc, ConfigError):
        return 2, f"error: {exc}"
    assert exc is None or isinstance(exc, SystemExit), (args, repr(exc))
    return result.exit_code, result.stderr


def _refused(code: int, err: str, *fragments: str) -> None:
    """Exit 2 and one error (a rich console may fold it over lines) naming ``fragments``."""
    assert code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    flat = " ".join(err.split())
    for fragment in fragments:
        assert fragment in flat, (fragment, flat)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("kind", ["a file", "/dev/null", "/proc", "empty"])
def test_run_refuses_an_output_that_cannot_be_its_folder_before_any_work(
        tmp_path: Path, no_loading: list[str], monkeypatch, kind: str) -> None:
    (tmp_path / "run.toml").write_text(TOY_CONFIG)
    (tmp_path / "taken").write_text("mine\n")
    monkeypatch.chdir(tmp_path)  # `--out ""` used to write the run into the working directory
    out, says = {"a file": ("taken", "the output folder taken is a file, not a folder"),
                 "/dev/null": ("/dev/null", "is a character device, not a folder"),
                 "/proc": ("/proc/musicbench-test/out", "no file can be created in /proc"),
                 "empty": ("", "an empty path names nothing")}[kind]
    before = _files(tmp_path)
    code, err = _invoke("run", "run.toml", "--out", out)
    assert code == 2 and "Traceback" not in err and says in " ".join(err.split()), err
    assert _files(tmp_path) == before and no_loading == []


def test_merge_report_and_leaderboard_refuse_their_outputs_before_any_work(
        tmp_path: Path, toy_run: Path, no_loading: list[str]) -> None:
    taken, folder = tmp_path / "taken", tmp_path / "folder"
    taken.write_text("mine\n")
    folder.mkdir()
    before = _files(tmp_path)
    _refused(*_invoke("merge", str(taken), str(toy_run)),
             f"the merge destination {taken} is a file, not a folder")
    _refused(*_invoke("merge", "/proc/musicbench-test", str(toy_run)),
             "no file can be created in /proc")
    _refused(*_invoke("report", str(toy_run), "-o", str(taken)),
             f"the report folder {taken} is a file, not a folder")
    _refused(*_invoke("report", str(toy_run), "-o", "/proc/musicbench-test"),
             "no file can be created in /proc")
    _refused(*_invoke("leaderboard", str(toy_run), "-o", str(folder)),
             f"cannot write the leaderboard to {folder}: it is a folder")
    _refused(*_invoke("leaderboard", str(toy_run), "--store-copy", "/proc/musicbench-test/x"),
             "no file can be created in /proc")
    assert _files(tmp_path) == before


def _wav(path: Path, frames: int) -> Path:
    sf.write(path, _tone(frames / RATE), RATE)
    return path


@pytest.mark.parametrize("output, says", [
    ("adv.xyz", "its suffix '.xyz' names no audio format soundfile writes"),
    ("folder", "to {w}/folder: it is a folder; name the file to write in it"),
    ("/dev/null", "it is a character device"),
    ("/proc/musicbench-test.wav", "no file can be created in /proc"),
])
def test_attack_refuses_an_output_it_could_not_write_before_loading_a_model(
        tmp_path: Path, no_loading: list[str], output: str, says: str) -> None:
    source = _wav(tmp_path / "in.wav", RATE)
    (tmp_path / "folder").mkdir()
    out = output if output.startswith("/") else str(tmp_path / output)
    before = _files(tmp_path)
    code, err = _invoke("attack", str(source), "--model", "toy-model", "--attack", "fgsm",
                        "-o", out)
    _refused(code, err, says.format(w=tmp_path))
    assert no_loading == [] and _files(tmp_path) == before


@pytest.mark.parametrize("kind", ["missing", "fifo", "/dev/zero", "folder", "garbage",
                                  "one sample"])
def test_attack_refuses_a_source_a_run_would_skip_before_loading_a_model(
        tmp_path: Path, no_loading: list[str], kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(tmp_path / "in.wav")
    elif kind == "folder":
        (tmp_path / "in.wav").mkdir()
    elif kind == "garbage":
        (tmp_path / "in.wav").write_bytes(b"this is not audio" * 10)
    elif kind == "one sample":
        _wav(tmp_path / "in.wav", 1)
    source = "/dev/zero" if kind == "/dev/zero" else str(tmp_path / "in.wav")
    says = {"missing": "no such file", "fifo": "is a FIFO (named pipe), not a regular file",
            "/dev/zero": "is a character device, not a regular file",
            "folder": "is a directory, not a file", "garbage": "not an audio file",
            "one sample": "too short: 0.000 s < 0.1 s required"}[kind]
    with _deadline(20):  # a FIFO opened for reading would block here
        code, err = _invoke("attack", source, "--model", "toy-model", "--attack", "fgsm",
                            "-o", str(tmp_path / "adv.wav"))
    _refused(code, err, f"cannot attack {source}: {says}")
    assert no_loading == [] and not (tmp_path / "adv.wav").exists()


def test_attack_holds_a_file_to_the_shortest_clip_a_run_accepts() -> None:
    """`musicbench attack`'s floor is the file datasets' smallest clip_seconds: a run refuses
    a shorter clip setting, and skips a file shorter than its clip (`too short`)."""
    from musicbench.single import MIN_CLIP_SECONDS
    from musicbench_plugins.datasets.folder import check_audio_params

    check_audio_params(MIN_CLIP_SECONDS, RATE)
    with pytest.raises(ValueError, match="clip_seconds must be in"):
        check_audio_params(MIN_CLIP_SECONDS * 0.99, RATE)


def test_attack_of_a_file_just_long_enough_runs(tmp_path: Path, toy_plugins, monkeypatch):
    import musicbench.plugins

    monkeypatch.setattr(musicbench.plugins, "_SYSTEM", toy_plugins)
    source = _wav(tmp_path / "in.wav", int(0.1 * RATE))
    code, err = _invoke("attack", str(source), "--model", "toy-model", "--attack", "fgsm",
                        "-o", str(tmp_path / "adv.flac"))
    assert code == 0 and (tmp_path / "adv.flac").is_file(), err


def test_attack_refuses_a_retrieval_model_before_loading_it_or_building_data(
        tmp_path: Path, no_loading: list[str]) -> None:
    source = _wav(tmp_path / "in.wav", RATE)
    code, err = _invoke("attack", str(source), "--model", "toy-embedder", "--attack", "fgsm",
                        "-o", str(tmp_path / "adv.wav"))
    _refused(code, err, "model 'toy-embedder' is a retrieval model")
    assert no_loading == []


def test_attack_refuses_cover_net_without_training_or_rendering_anything(
        tmp_path: Path, monkeypatch) -> None:
    """cover-net's weights are trained on first use, on m21-covers rendered first (~150 s):
    its task is known from its class, so the refusal costs nothing."""
    import musicbench.plugins
    from musicbench.plugins import PluginSystem
    from musicbench.workspace import Workspace

    monkeypatch.setattr(musicbench.plugins, "_SYSTEM", PluginSystem())  # the installed ones

    def refuse(self, name, *args, **kwargs):
        raise AssertionError(f"{name} loaded or built before the model's task was checked")

    monkeypatch.setattr(Workspace, "model", refuse)
    monkeypatch.setattr(Workspace, "dataset", refuse)
    source = _wav(tmp_path / "in.wav", RATE)
    code, err = _invoke("attack", str(source), "--model", "cover-net", "--attack", "fgsm",
                        "-o", str(tmp_path / "adv.wav"))
    _refused(code, err, "model 'cover-net' is a retrieval model")


@pytest.mark.parametrize("params", [(), ("-p", 'manifest="/nonexistent/manifest.csv"')])
def test_validate_folder_without_a_usable_manifest_exits_2(toy_plugins, monkeypatch, params):
    import musicbench.plugins

    monkeypatch.setattr(musicbench.plugins, "_SYSTEM", toy_plugins)
    code, err = _invoke("validate", "folder", "--kind", "dataset", "--device", "cpu", *params)
    _refused(code, err, "manifest")
