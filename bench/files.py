"""Files that survive kills and concurrent runs: atomic writes, advisory locks, and the one
permission policy of everything musicbench writes.

Permissions: musicbench follows the process umask for every file and folder it creates, caches
included (datasets, weights of models, inpainters and defenses, lock files, leaderboards). Temp
files and folders from :mod:`tempfile` are owner-only (0600/0700); whatever is renamed into
place is first given the mode a plain ``open``/``mkdir`` would have had, so a cache shared by a
group (``umask 002`` and a setgid folder, say) is readable and replaceable by the group, and a
private one (``umask 077``) stays private. Nothing is forced wider or narrower than the umask.

Locks: :func:`file_lock` is ``flock(2)`` on a lock file (POSIX). The kernel releases it when
its holder dies, even by ``kill -9``, so a lock is never stale. On NFS, Linux emulates
``flock`` with byte-range locks that the server arbitrates (NFSv4, or NFSv3 with ``lockd``):
then the lock holds across cluster nodes; on a mount with ``nolock`` or ``local_lock=all``/
``flock``, and on Lustre without ``-o flock``, it holds only between processes on one node.
Where ``fcntl`` does not exist (Windows), locking is skipped.

Paths: whatever musicbench writes is a regular file or nothing yet, in a folder
(:func:`check_output_file`, :func:`check_output_folder`; ``-o /dev/null`` is refused rather
than replaced), and a path read from a store is followed only inside its run folder's
``audio/`` (:func:`stored_audio_path`): a store is data, and data must not choose where the
harness writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from musicbench.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # the portable way: set and restore
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder: ``0o777`` less the umask."""
    return 0o777 & ~current_umask()


class UnsafePathError(ConfigError):
    """A path musicbench was asked to write, or read from a store, is not one it may use: an
    output that exists and is not a regular file (a device, a folder, a pipe), an output folder
    that is a file, or a stored path that leads out of its run folder. Raised before anything is
    written; the CLI exits 2."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _existing_mode(path: Path) -> int | None:
    """``path``'s mode, following symbolic links (``None``: nothing there, or a dangling link,
    which ``os.replace`` replaces as it would a file)."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a parent is a file: _check_parent says so
    except OSError as exc:
        raise UnsafePathError(f"cannot check {path}: {exc.strerror or exc}") from None


def _check_parent(path: Path, what: str) -> None:
    """The nearest existing folder above ``path`` is a folder (what ``mkdir -p`` needs)."""
    for parent in path.absolute().parents:
        mode = _existing_mode(parent)
        if mode is None:
            continue
        if not stat.S_ISDIR(mode):
            raise UnsafePathError(f"cannot write {what} {path}: {parent} is {_kind(mode)}, "
                                  "not a folder")
        return


def check_output_file(path: Path | str, what: str = "the output") -> Path:
    """Refuse (:class:`UnsafePathError`, exit 2) to write ``path`` unless it is a regular file
    or does not exist yet, and its folder is a folder or can be made. Writing replaces the
    file (:func:`atomic_write_text`), so ``-o /dev/null`` would replace the device node with a
    file, as root the system's: call this before any work."""
    path = Path(path)
    mode = _existing_mode(path)
    if mode is not None and not stat.S_ISREG(mode):
        raise UnsafePathError(f"cannot write {what} to {path}: it is {_kind(mode)}, and "
                              "musicbench writes only regular files (it would replace it); "
                              "name a file, or write to stdout without -o")
    _check_parent(path, what)
    return path


def check_output_folder(path: Path | str, what: str = "the output folder") -> Path:
    """Refuse (:class:`UnsafePathError`, exit 2) unless ``path`` is a folder or does not exist
    yet and could be made (the nearest existing folder above it is a folder)."""
    path = Path(path)
    mode = _existing_mode(path)
    if mode is not None and not stat.S_ISDIR(mode):
        raise UnsafePathError(f"{what} {path} is {_kind(mode)}, not a folder; name a folder "
                              "(it is created if missing)")
    _check_parent(path, what)
    return path


def check_writable_file(path: Path | str, what: str = "the output") -> Path:
    """:func:`check_output_file`, and the nearest existing folder above ``path`` takes new
    files (:func:`check_can_create_in`): what a command checks before any work, so that a
    path in ``/proc`` or a read-only folder is refused at once, not after hours of work."""
    path = check_output_file(path, what)
    check_can_create_in(path, what)
    return path


def check_writable_folder(path: Path | str, what: str = "the output folder") -> Path:
    """:func:`check_output_folder`, and the folder (or the nearest existing one above it, where
    it will be made) takes new files (:func:`check_can_create_in`)."""
    path = check_output_folder(path, what)
    check_can_create_in(path, what, folder=True)
    return path


def check_can_create_in(path: Path, what: str, *, folder: bool = False) -> None:
    """Refuse (:class:`UnsafePathError`) unless a file can be created in the nearest existing
    folder above ``path`` (``folder``: ``path`` itself, if it exists). Tried, not inferred from
    the mode bits: root may write where the mode says no, and ``/proc`` or a read-only mount
    refuse whatever the mode says. The probe file is removed at once."""
    absolute = path.absolute()
    candidates = ([absolute] if folder else []) + list(absolute.parents)
    where = next((p for p in candidates if _existing_mode(p) is not None), None)
    if where is None:
        return
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".musicbench-probe-")
    except OSError as exc:
        raise UnsafePathError(f"cannot write {what} {path}: no file can be created in "
                              f"{where} ({exc.strerror or exc}); name a folder you can "
                              "write to") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def stored_audio_path(folder: Path | str, rel: str, *, cell: str) -> Path:
    """``folder / rel`` for an audio path ``rel`` read from the store of run folder
    ``folder``, which a store only ever writes as ``audio/<cell>/<file>``: relative, no
    ``..``, under ``audio/``, and still inside ``folder/audio`` once symbolic links are
    resolved. Anything else (a store edited by hand, or written to attack whoever merges or
    reports it: ``../important.txt``) raises :class:`UnsafePathError` naming the cell and
    the path."""
    folder = Path(folder)
    path = None
    if isinstance(rel, str) and rel and "\x00" not in rel:
        pure = PurePosixPath(rel)
        if not pure.is_absolute() and len(pure.parts) >= 2 and pure.parts[0] == "audio" \
                and ".." not in pure.parts:
            path = folder / rel
            if (folder / "audio").resolve() not in path.resolve().parents:
                path = None  # a symbolic link out of the folder
    if path is None:
        raise UnsafePathError(
            f"cell {cell}: stored audio path {rel!r} is not inside {folder / 'audio'} (a store "
            "writes audio/<cell>/<file> only: this one was edited, or is not musicbench's); "
            "nothing written")
    return path


def check_stored_audio(entries: Iterable[tuple[str, str, str, str]], folder: Path | str
                       ) -> None:
    """:func:`stored_audio_path` for every ``(cell key, sample id, kind, path)`` of a store
    in run folder ``folder``, and every one that exists is a regular file (a named pipe
    would hang whoever reads it)."""
    for cell, _, _, rel in entries:
        path = stored_audio_path(folder, rel, cell=cell)
        mode = _existing_mode(path)
        if mode is not None and not stat.S_ISREG(mode):
            raise UnsafePathError(f"cell {cell}: stored audio file {path} is {_kind(mode)}, "
                                  "not a regular file; nothing written")


def atomic_copy(source: Path | str, target: Path | str) -> Path:
    """Copy ``source`` to ``target`` as :func:`atomic_write_text` writes, so a symbolic link
    at ``target`` is replaced, never followed, and a kill leaves the old file or the whole new
    one. Keeps ``source``'s times, with the umask's mode."""
    with open(source, "rb") as src:
        return _replace_with(Path(target), lambda f: shutil.copyfileobj(src, f),
                             times_of=Path(source))


def atomic_write_text(path: Path | str, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` so that readers (and a kill at any moment) see either the old
    file or the whole new one: a temp file in the same folder, flushed and fsync'ed, then
    ``os.replace``. The new file gets the umask's mode, like ``open(path, "w")``. A ``path``
    that exists and is not a regular file (``/dev/null``) raises :class:`UnsafePathError`
    (:func:`check_output_file`) instead of being replaced."""
    data = text.encode(encoding)
    return _replace_with(check_output_file(path), lambda f: f.write(data))


def _replace_with(path: Path, fill: Callable[[BinaryIO], object], *,
                  times_of: Path | None = None) -> Path:
    """``fill`` a temp file beside ``path``, fsync it, give it the umask's mode (and the
    times of ``times_of``), then ``os.replace`` it onto ``path``."""
    # a full disk: one line naming path, not a traceback (judged before the temp file goes)
    with storage_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with storage_full_as_error(path), os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            if times_of is not None:
                shutil.copystat(times_of, tmp)
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)  # replaces a symbolic link at path, never follows it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


class LockBusy(Exception):
    """A non-blocking :func:`file_lock` found the lock held; ``holder`` is what the holder
    wrote into the lock file (``pid``, ``host``, ``since``, ``what``), possibly empty."""

    def __init__(self, path: Path, holder: dict[str, str]):
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by {describe_holder(holder)}")


def describe_holder(holder: dict[str, str]) -> str:
    """``pid 123 on node7 since 2024-01-01 12:00:00`` (whatever parts are known)."""
    parts = []
    if holder.get("pid"):
        parts.append(f"pid {holder['pid']}")
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return " ".join(parts) or "another process"


def read_holder(path: Path) -> dict[str, str]:
    """The ``key=value`` lines a holder wrote into lock file ``path`` (``{}`` if none)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """``(fd, writable)``: read-write if we may (a lock file another user made in a shared
    cache may be read-only to us; ``flock`` works on a read-only descriptor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:
        return os.open(path, os.O_RDONLY), False


@contextlib.contextmanager
def file_lock(path: Path | str, *, blocking: bool = True, what: str = "",
              on_wait: Callable[[dict[str, str]], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, never deleted: deleting a
    lock file races with the next locker) for the ``with`` block.

    ``blocking=False`` raises :class:`LockBusy` at once when another process holds it;
    otherwise this waits, calling ``on_wait(holder)`` once first. The holder's pid, host, start
    time and ``what`` are written into the file for whoever waits. Separate ``file_lock`` calls
    exclude each other even within one process (``flock`` locks belong to open files)."""
    path = Path(path)
    if fcntl is None:  # pragma: no cover - no advisory locks on this OS
        yield
        return
    fd, writable = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _await_holder_note(path)
            if not blocking:
                raise LockBusy(path, holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if writable:
            info = (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                    f"since={time.strftime('%Y-%m-%d %H:%M:%S')}\nwhat={what}\n").encode()
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, info, 0)
        try:
            yield
        finally:
            if writable:  # a stale note would name a finished process to the next waiter
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _await_holder_note(path: Path, patience_s: float = 1.0) -> dict[str, str]:
    """The holder's note in lock file ``path``, waiting up to ``patience_s`` for it: the
    holder writes it just after taking the lock, so a waiter that arrives in between would
    otherwise read nothing (``{}`` if it never comes, e.g. a read-only lock file)."""
    deadline = time.monotonic() + patience_s
    while True:
        holder = read_holder(path)
        if "what" in holder or time.monotonic() >= deadline:  # "what" is the note's last line
            return holder
        time.sleep(0.02)


def read_input_file(path: Path | str, *, what: str, max_bytes: int, holds: str) -> bytes:
    """The bytes of a small file the user names as input (a config, a dataset manifest, a
    split list), or :class:`~musicbench.errors.ConfigError` (exit 2) saying why not.

    It must be a regular file of at most ``max_bytes``: a FIFO would block the read forever,
    a device (``/dev/zero``) never end it, a huge file fill the memory. The type is checked
    again on the open descriptor (opened without blocking), so a FIFO put in the file's place
    after the check cannot hang the run, and at most ``max_bytes + 1`` bytes are read, so a
    file that grows meanwhile cannot either. Messages name ``what`` and the path, never the
    file's content; ``holds`` says what such a file normally is (``"a run config is a few
    kB"``)."""
    path = Path(path)
    try:
        mode, size = _input_stat(os.stat(path))
        if mode is None and size > max_bytes:
            raise ConfigError(f"{what} '{path}' is {size} bytes; {holds} (at most {max_bytes} "
                              "bytes): is it the right file?")
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags) if mode is None else None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} '{path}': {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the name
        raise ConfigError(f"cannot read {what} '{path}': the name contains a NUL "
                          "character") from None
    if fd is None:
        raise ConfigError(f"{what} '{path}' is {mode}, not a regular file; name the file "
                          "itself")
    try:
        mode, _ = _input_stat(os.fstat(fd))
        if mode is not None:
            raise ConfigError(f"{what} '{path}' is {mode}, not a regular file (it changed "
                              "while being opened)")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} '{path}': {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ConfigError(f"{what} '{path}' is over {max_bytes} bytes; {holds}: is it the "
                          "right file?")
    return data


def _input_stat(st: os.stat_result) -> tuple[str | None, int]:
    """``(None, size)`` for a regular file, else ``(what it is, size)``."""
    return (None if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)), st.st_size


# -- full disks ------------------------------------------------------------------------------

STORAGE_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
"""``OSError`` numbers that mean "no space left": the disk is full, or the user's quota."""

NEARLY_FULL_BYTES = 1 << 20
"""Free space under which an SQLite I/O error on write is taken for a full disk: SQLite says
``SQLITE_FULL`` only where it sees ``ENOSPC`` itself, and reports a ``-shm`` it could not grow
(or a short write) as a plain ``disk I/O error``; it writes a page (or 32 KiB of ``-shm``)
at a time, so a write that failed with more than this free was not for want of space."""

_SQLITE_WRITE_ERRORS = ("SQLITE_IOERR_WRITE", "SQLITE_IOERR_SHMSIZE", "SQLITE_IOERR_FSYNC",
                        "SQLITE_IOERR_TRUNCATE", "SQLITE_IOERR_DIR_FSYNC")


def _free_bytes(folder: Path) -> int | None:
    """Bytes this process may still write in ``folder``'s file system (``None``: unknown)."""
    for place in (folder, *folder.parents):
        try:
            return shutil.disk_usage(place).free
        except OSError:
            continue  # not made yet: ask the nearest folder that exists
    return None


def storage_full_cause(exc: BaseException, folder: Path) -> str | None:
    """Why ``exc`` means that ``folder``'s disk is full (``No space left on device``,
    ``database or disk is full``), or ``None`` when it is another error. Call it before
    removing what the failed write left: an error that does not say "full" (a short write,
    SQLite's ``disk I/O error``) is judged by the space still free."""
    import sqlite3

    if isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS:
        return exc.strerror or os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.errno is None:  # numpy's "N requested and M written"
        return _if_nearly_full(folder, str(exc))
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name == "SQLITE_FULL" or "database or disk is full" in str(exc):
            return f"SQLite: {exc}"
        if name in _SQLITE_WRITE_ERRORS:
            return _if_nearly_full(folder, f"SQLite: {exc}")
    return None


def _if_nearly_full(folder: Path, cause: str) -> str | None:
    """``cause`` with the bytes still free, if ``folder``'s disk has under
    :data:`NEARLY_FULL_BYTES` free; ``None`` otherwise (the error was not for want of space)."""
    free = _free_bytes(folder)
    return f"{cause} ({free} bytes free)" if free is not None and free < NEARLY_FULL_BYTES \
        else None


@contextlib.contextmanager
def storage_full_as_error(path: Path | str) -> Iterator[None]:
    """Turn an error that means the disk holding ``path`` is full (``ENOSPC``, ``EDQUOT``,
    SQLite's ``database or disk is full``) raised in the ``with`` block into
    :class:`~musicbench.errors.StorageFullError` naming ``path`` (exit 2, one line, resumable);
    every other error passes unchanged. ``path`` is the file (or folder) being written: an
    ``OSError`` that names its own file names that one instead."""
    from musicbench.errors import StorageFullError

    path = Path(path)
    try:
        yield
    except StorageFullError:
        raise  # named already, by a write inside this one
    except Exception as exc:
        cause = storage_full_cause(exc, path.parent)
        if cause is None:
            raise
        named = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
        raise StorageFullError(os.fsdecode(named) if named else path, cause) from exc


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` as :func:`atomic_write_text` writes text: the old file or the
    whole new one, a symbolic link at ``path`` replaced (never followed), a full disk a
    :class:`~musicbench.errors.StorageFullError` naming ``path``."""
    return _replace_with(check_output_file(path), lambda f: f.write(data))
