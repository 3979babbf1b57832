"""Files every writer shares: atomic writes that honour the umask, an exclusive lock on an
output folder, and JSON-lines files read back after a crash.

    atomic_write(path, write)     write a temporary sibling, then rename it into place
    atomic_dir(directory)         fill a temporary sibling folder, then swap it in whole
    OutDirLock(out_dir, what)     one writer per training / evaluation folder (an OS lock)
    read_jsonl(path)              the complete records; a torn last line is dropped

A file written through here gets the mode an ordinary ``open()`` would give it (0666 less the
umask) and a folder that of ``mkdir`` (0777 less the umask): ``tempfile`` makes both private
(0600 / 0700), which is right for a scratch file but wrong for a model others read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"


def current_umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never half of it; the new file has the
    mode ``open()`` would give it under the current umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _swap_dir_into_place(tmp: Path, target: Path) -> None:
    """Replace ``target`` (maybe existing) with ``tmp``; the old copy is removed only after."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_dir(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``directory`` to fill; on success it replaces ``directory``
    whole (with ``mkdir``'s mode under the umask), on error it is removed and ``directory`` is
    left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        _swap_dir_into_place(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class OutDirLockedError(RuntimeError):
    """Another process holds the output folder."""


# Locks this process holds. A forked child (a DataLoader worker) shares each lock's open file:
# it closes its copy at once, so that a holder killed with kill -9 frees its folder then, not
# when its workers notice they are orphans.
_HELD: set[OutDirLock] = set()  # strong: a lock dropped unreleased still holds its descriptor


def _close_held_in_child() -> None:
    for lock in list(_HELD):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None


os.register_at_fork(after_in_child=_close_held_in_child)


class OutDirLock:
    """An exclusive ``flock`` on ``<out_dir>/.lock``, held for a run's whole life.

    The operating system releases it when the holder exits, however it exits (a kill -9
    included), so a stale lock file never blocks a rerun: only a live holder does. The file
    holds the holder's PID and what it is doing, for the message a second writer gets.

    Use as a context manager or with :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, out_dir: str | Path, what: str) -> None:
        self.out_dir, self.what = Path(out_dir), what
        self.path = self.out_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> OutDirLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutDirLockedError(
                f"{self.out_dir} is in use by {holder}: two runs writing one folder would mix their "
                "files. Wait for it to finish (or stop it), or choose another out_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} ({self.what})\n".encode(), 0)
        self._fd = fd
        _HELD.add(self)
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor of the open file drops the flock
            self._fd = None
        _HELD.discard(self)

    def __enter__(self) -> OutDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class JSONLError(ValueError):
    """A JSON-lines file with a broken line that is not the last one."""


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[Any]:
    """The records of a JSON-lines file that a killed writer may have left torn.

    Every record is written with its newline, so text after the last newline is what a kill
    mid-write leaves: it is dropped (and, with ``repair``, cut off the file so that appends start
    on a clean line). A complete line that does not parse means the file was damaged some other
    way: an error naming the file and line. A missing file holds no records.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after it: a torn last record
    records = []
    for number, raw in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            records.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise JSONLError(
                f"{path}, line {number}: not valid JSON ({e}); a kill only tears the last line, so "
                "this file was damaged otherwise: fix or delete that line"
            ) from None
    if repair and end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return records


__all__ = [
    "JSONLError",
    "OutDirLock",
    "OutDirLockedError",
    "atomic_dir",
    "atomic_write",
    "current_umask",
    "read_jsonl",
]
