"""benchmarks/bench_loss.py: a quick CPU run of a chosen loss prints both ratio estimates and the
path's target; a bad loss name is refused."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_loss.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_quick_run_of_one_loss():
    proc = _run("--quick", "--device", "cpu", "--repeat", "2", "--losses", "mIoU", "--torch-path")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()
            if line.startswith(("cross_entropy", "mIoU"))]
    assert [row[0] for row in rows] == ["cross_entropy", "mIoU", "mIoU"]  # searched, naive
    for row in rows[1:]:  # ms, paired ratio, block ratio, peak MiB, its ratio, ops, target
        assert float(row[3]) > 0 and float(row[4]) > 0 and row[-2] == "<=3"
    assert "pure torch" in proc.stdout


def test_unknown_loss_is_refused():
    proc = _run("--quick", "--device", "cpu", "--losses", "mIoU,speed")
    assert proc.returncode == 2 and "--losses 'mIoU,speed'" in proc.stderr


@pytest.mark.slow
def test_default_run_times_each_loss_in_its_own_process():
    proc = _run("--quick", "--device", "cpu", "--repeat", "1", "--torch-path")
    assert proc.returncode == 0, proc.stderr[-3000:]
    firsts = [line.split()[0] for line in proc.stdout.splitlines()
              if line.split() and "ms" not in line.split()[1:2] and line.split()[-1] != "=="]
    # each loss once (the two mIoU rows come from one process), cross-entropy once
    names = ["cross_entropy", "mIoU", "mIoU", "fwIoU", "BIoU", "BF1", "mACC", "pACC", "wce",
             "dice", "lovasz", "hard_pixel_mining"]
    rows = [name for name in firsts if name in set(names)]
    assert rows == names, proc.stdout
    assert proc.stdout.count("== cpu") == 1


def test_cpu_peak_counts_each_allocation_once():
    """``empty_like`` allocates through ``empty_strided``: two profiler events, one allocation."""
    import torch

    from benchmarks.bench_loss import _cpu_peak, profiled

    size = 4 << 20
    with profiled(memory=True) as prof:
        first = torch.empty(size, dtype=torch.uint8)
        second = torch.empty_like(first)
        del first, second
        third = torch.empty(size // 2, dtype=torch.uint8)
        del third
    assert _cpu_peak(prof) == 2 * size
