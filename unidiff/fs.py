"""Writing files so that a crash or a full disk never leaves half of one, OS errors as one line, and out_dir locks.

Every file a command or a training run writes goes through `atomic_path` (or `atomic_write`): the writer fills a
file of the same name in a temporary folder beside the target, and one ``os.replace`` makes it visible, so a reader
sees the old file or the new one, never part of one, and two writers of one file leave the last one's whole. A
write that fails (a full disk, a read-only mount, a folder not ours) removes the temporary folder and raises an
`OutputError` that names the path, the cause in words and the fix (`os_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator

from unidiff.errors import UnidiffError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not guarded
    fcntl = None

LOCK = ".lock"

# errno -> (the cause in words, the usual remedy)
CAUSES = {
    errno.ENOSPC: ("no space is left on the device", "free some space"),
    errno.EDQUOT: ("the disk quota is used up", "free some space"),
    errno.EROFS: ("the file system is read-only", "remount it read-write"),
    errno.EACCES: ("permission denied", "change its permissions"),
    errno.EPERM: ("the operation is not permitted", "change its permissions"),
    errno.ENOENT: ("a folder on the path does not exist", "create it"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "fix the path"),
    errno.EEXIST: ("a file of that name is in the way", "remove it"),
    errno.EISDIR: ("it is a folder", "give the path of a file"),
    errno.ENAMETOOLONG: ("the name is too long", "shorten it"),
}
ELSEWHERE = "write somewhere else"


class OutputError(UnidiffError):
    """A file or folder that cannot be written: the disk is full or read-only, the folder is not ours, ..."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


def error_code(err: BaseException) -> int | None:
    """The errno behind ``err``: an `OSError`'s own, or the ``(os error N)`` that safetensors writes into its text."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = re.search(r"os error (\d+)", str(err))
    return int(found.group(1)) if found else None


def os_error(path: str | Path, err: BaseException, elsewhere: str = ELSEWHERE) -> OutputError:
    """``err`` (raised while writing ``path``) as one line: the path, the cause in words, its usual remedy and the
    way around it (``elsewhere``: e.g. "give --out another path")."""
    code = error_code(err)
    cause, remedy = CAUSES.get(code, (None, "check the path"))
    if cause is None:
        cause = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
    name = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
    return OutputError(f"cannot write {path}: {cause}{name}: {remedy}, or {elsewhere}", code)


def writes_here(err: BaseException) -> bool:
    """Whether ``err`` is a failed write of the file system (an `OSError`, or a library's error that wraps one)."""
    return isinstance(err, OSError) or error_code(err) is not None


def fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    """fsync a file or folder (a folder: to make the renames in it durable); a platform that cannot open folders
    skips it."""
    try:
        fd = os.open(path, flags)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, elsewhere: str = ELSEWHERE) -> Iterator[Path]:
    """Yield the path a writer should fill instead of ``path``: a file of the same name (writers that go by the
    suffix still do) in a fresh temporary folder beside it. On success the file is made durable and renamed over
    ``path``; on any failure the temporary folder goes, ``path`` is left as it was, and an OS error becomes an
    `OutputError` (see `os_error`)."""
    path = Path(path)
    if path.name in ("", ".", "..") or path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder: give the path of a file (e.g. {path / 'out'})",
                          errno.EISDIR)
    tmp_dir = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir()
        tmp = tmp_dir / path.name
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(e, Exception) and not isinstance(e, UnidiffError) and writes_here(e):
            raise os_error(path, e, elsewhere) from None
        raise
    os.rmdir(tmp_dir)
    fsync_path(path.parent)  # make the rename itself durable


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (not atomically: use inside `atomic_path` or a temporary folder) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes, elsewhere: str = ELSEWHERE) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8) in one rename; see `atomic_path`."""
    with atomic_path(path, elsewhere) as tmp:
        write_bytes(tmp, data.encode("utf-8") if isinstance(data, str) else data)


def ensure_writable(folder: str | Path, elsewhere: str = ELSEWHERE) -> Path:
    """Create ``folder`` if needed and check that files can be written in it by writing (and removing) a small probe
    file: mode bits alone miss read-only mounts, ACLs and a full disk, and say nothing when running as root."""
    folder = Path(folder)
    probe = folder / f".unidiff-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(probe, b"unidiff\n")
    except OSError as e:
        raise os_error(folder, e, elsewhere) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


def _holder(fd: int) -> str:
    """The pid that the lock file holds (written just after its holder took the lock: wait briefly for it)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


@contextlib.contextmanager
def folder_lock(folder: str | Path, fix: str = "wait for it to finish or stop it, or pick another train.out_dir"
                ) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the ``with`` block: ``flock`` on ``folder/.lock``, which records the
    holder's pid. A second holder is refused at once with an `UnidiffError` naming that pid. The kernel drops the
    lock when its process dies, so a killed run never leaves ``folder`` locked."""
    folder = Path(folder)
    if fcntl is None:
        yield
        return
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise os_error(path, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UnidiffError(f"{folder} is in use by another run (pid {_holder(fd)}): {fix}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody holds it now
    finally:
        os.close(fd)  # releases the lock
