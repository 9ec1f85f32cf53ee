"""`make demo` (tools/demo.py) end to end with a miniature budget: every stage and output."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "tools/demo.py", "--output-dir", str(out), "--retrain-iters", "3",
         "--pretrain-iters", "2", "--train-seeds", "2",
         "SEARCH.ITERATIONS", "1", "SEARCH.SAMPLES_PER_ITER", "2", "SEARCH.PROXY.MAX_ITER", "3",
         "SEARCH.HOLDOUT.SIZE", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("predictions.png", "reward_curve.png", "searched_curves.png",
                 "searched_surfaces.png", "results.md", "search_bf1/best_params.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"cross_entropy", "naive BF1 (unsearched)", "searched BF1"}
    for runs in results.values():
        assert len(runs) == 2  # one per training seed
        for row in runs:
            for key in ("mIoU", "fwIoU", "BIoU", "BF1", "mACC", "pACC"):
                assert 0.0 <= row[key] <= 100.0
    assert "| loss" in proc.stdout and "BF1 (target)" in proc.stdout and " ± " in proc.stdout
    # every step says how long it has run and how long is left; the verdict is plain
    assert proc.stdout.count("time left") >= 7 and "ETA" in proc.stdout
    assert "searched vs naive BF1" in proc.stdout and "over 2 training seeds" in proc.stdout
    assert "reward of the search mean mu" in proc.stdout and "seed-to-seed std" in proc.stdout
    noise = json.loads((out / "search_bf1" / "reward_noise.json").read_text())
    assert sorted(noise) == ["2", "3", "4"]  # the identity candidate with 3 other proxy seeds
