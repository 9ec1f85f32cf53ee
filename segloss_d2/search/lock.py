"""An exclusive, process-wide lock on a search directory.

Two processes writing one search directory would both train every trial and interleave their
logs. :class:`DirectoryLock` holds an advisory ``flock`` on ``<dir>/search.lock`` for the life of a
:class:`~segloss_d2.search.state.SearchState`; a second process is refused at once with
:class:`SearchLockedError`, which names the holder (pid, host, start time, command line) that the
holder wrote into the lock file.

- The kernel releases the lock when the holder dies, even by ``kill -9``: a stale ``search.lock``
  never blocks anyone, the next process simply takes it.
- The file is removed when the lock is released normally, so a finished search leaves no trace;
  acquiring checks that the locked file is still the one at the path (a releaser may have
  unlinked it in between) and retries otherwise.
- Within one process the lock is shared (reference counted): the lock guards against other
  processes, not against one program opening a directory twice.
- Advisory locks work on local file systems and on NFS (Linux emulates ``flock`` with POSIX
  locks there). Where ``fcntl`` does not exist (Windows) no lock is taken and a warning says so.
"""
import datetime
import json
import logging
import os
import socket
import sys
import threading
from typing import Dict, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["DirectoryLock", "SearchLockedError", "LOCK_FILE"]

LOCK_FILE = "search.lock"
logger = logging.getLogger(__name__)
_HELD: Dict[str, list] = {}  # realpath of the lock file -> [fd, reference count]
_HELD_GUARD = threading.Lock()


class SearchLockedError(RuntimeError):
    """Another process holds the search directory."""


def _holder_text(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode("utf-8"))
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}, "
                f"command: {info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _try_lock(path: str) -> int:
    """Open and lock ``path`` without blocking; return the fd. Raises SearchLockedError."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise SearchLockedError(
                f"{os.path.dirname(path)} is in use by another search ({holder}). Only one "
                "process may write a search directory: wait for that one to finish or stop it, "
                "or use another output directory."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder unlinked it after we opened it: try again


class DirectoryLock:
    """Exclusive lock on ``directory`` (which must exist) for this process.

    Args:
        directory (str): the search directory.

    Raises:
        SearchLockedError: another process holds it.
        OSError: the lock file cannot be created (e.g. a read-only directory).
    """

    def __init__(self, directory: str):
        self.path = os.path.realpath(os.path.join(directory, LOCK_FILE))
        self._released = False
        if fcntl is None:  # pragma: no cover - Windows
            logger.warning("no fcntl on this platform: %s is not locked against other "
                           "processes", directory)
            return
        with _HELD_GUARD:
            held = _HELD.get(self.path)
            if held is not None:
                held[1] += 1
                return
            fd = _try_lock(self.path)
            try:
                info = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now().isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)}
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(info).encode("utf-8"))
            except BaseException:
                self._unlink_and_close(fd)
                raise
            _HELD[self.path] = [fd, 1]

    def _unlink_and_close(self, fd: int) -> None:
        try:
            os.unlink(self.path)  # before unlocking, so nobody locks a file about to vanish
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor releases the flock

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return self._released

    def release(self) -> None:
        """Release this holder's share of the lock (idempotent)."""
        if self._released or fcntl is None:
            self._released = True
            return
        self._released = True
        with _HELD_GUARD:
            held: Optional[list] = _HELD.get(self.path)
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                del _HELD[self.path]
                self._unlink_and_close(held[0])
