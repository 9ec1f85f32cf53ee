"""Stop the processes a search leaves behind when it is killed.

A search that starts its own local Ray instance owns a tree of processes (GCS, raylet, dashboard
and runtime-env agents, workers). ``ray.shutdown()`` stops them on a normal exit, but after
``kill -9`` of the search some of them (the dashboard and runtime-env agents) linger for minutes
while they try to report to the dead GCS. :func:`start_reaper` starts a small watcher process
(in its own session, so a signal to the search's process group does not stop it) that records
the search's descendants every ``interval`` seconds and, once the search is gone, sends SIGTERM
and then SIGKILL to those still alive. Processes are identified by pid and start time, so a
reused pid is never hit.

Linux only (it reads ``/proc``); elsewhere :func:`start_reaper` returns None.
"""
import os
import signal
import subprocess
import sys
import time
from typing import Dict, Optional, Tuple

__all__ = ["start_reaper"]


def _stat(pid: int) -> Optional[Tuple[int, int, str]]:
    """(parent pid, start time in clock ticks, state) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19]), fields[0]


def _alive(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start and stat[2] not in ("Z", "X")


def _descendants(root: int) -> Dict[int, int]:
    """{pid: start time} of every descendant of ``root``."""
    children: Dict[int, list] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(name), stat[1]))
    found, todo = {}, [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def _watch(pid: int, start: int, interval: float) -> None:
    me, seen = os.getpid(), {}
    while _alive(pid, start):
        seen.update((p, s) for p, s in _descendants(pid).items() if p != me)
        time.sleep(interval)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        left = {p: s for p, s in seen.items() if _alive(p, s)}
        for p in left:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = {p: s for p, s in left.items() if _alive(p, s)}
        seen = left


def start_reaper(interval: float = 0.5) -> Optional[subprocess.Popen]:
    """Start a watcher that stops this process's descendants once this process dies.

    Returns the watcher (terminate it to stop watching), or None where ``/proc`` is missing.
    """
    me = _stat(os.getpid()) if os.path.isdir("/proc") else None
    if me is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(os.getpid()), str(me[1]), str(interval)],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    _watch(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
