"""segloss_d2.search.reaper: the descendants of a killed process are stopped."""
import os
import subprocess
import sys
import time

import pytest

from segloss_d2.search.reaper import _alive, _descendants, _stat

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the reaper reads /proc")

# A parent that starts a reaper and a grandchild (sleeping, ignoring SIGTERM), then waits.
_PARENT = """
import signal, subprocess, sys, time
from segloss_d2.search.reaper import start_reaper
start_reaper(interval=0.1)
subprocess.Popen([sys.executable, "-c",
                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('ready', flush=True); time.sleep(600)"])
time.sleep(600)
"""


def _wait(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_descendants_of_a_killed_process_are_stopped():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT])
    try:
        assert _wait(lambda: len(_descendants(parent.pid)) >= 2)  # reaper + sleeper
        tree = {p: s for p, s in _descendants(parent.pid).items()}
        time.sleep(0.5)  # let the reaper record the sleeper
    finally:
        parent.kill()
        parent.wait()
    # the sleeper ignores SIGTERM, so this also checks the SIGKILL that follows
    assert _wait(lambda: not any(_alive(p, s) for p, s in tree.items()))


@pytest.mark.slow
def test_reaper_leaves_a_living_process_alone():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT])
    try:
        assert _wait(lambda: len(_descendants(parent.pid)) >= 2)
        tree = _descendants(parent.pid)
        time.sleep(1.0)
        assert all(_alive(p, s) for p, s in tree.items())
    finally:
        for pid in tree:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def test_stat_of_a_missing_process_is_none():
    assert _stat(2 ** 22 + 12345) is None
    assert _stat(os.getpid())[0] == os.getppid()
