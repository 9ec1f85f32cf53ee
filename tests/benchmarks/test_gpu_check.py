"""benchmarks/gpu_check.py: the CPU smoke run (small sizes) prints every section and writes JSON."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")
SECTIONS = ("loss", "proxy", "train", "eval")


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_cpu_smoke_run_reports_every_section(tmp_path):
    out = tmp_path / "report" / "gpu_check.json"
    proc = _run("--device", "cpu", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in SECTIONS:
        assert f"== {name} ==" in proc.stdout
    assert "every section ran" in proc.stdout

    report = json.loads(out.read_text())
    assert report["mode"] == "small" and report["failed"] == []
    assert report["environment"]["device"] == "cpu"
    sections = report["sections"]
    assert set(sections) == set(SECTIONS) and not any("error" in s for s in sections.values())

    losses = sections["loss"]["rows"]
    names = ["cross_entropy", "mIoU", "fwIoU", "BIoU", "BF1", "mACC", "pACC"]
    assert [r["loss"] for r in losses] == names * 2  # fp32, then under autocast (bf16 on cpu)
    assert [r["precision"] for r in losses] == ["fp32"] * 7 + ["torch.bfloat16"] * 7
    assert all(r["finite"] and r["ms"] > 0 and r["ratio_vs_ce"] > 0 for r in losses)

    proxy = sections["proxy"]
    assert [r["run"] for r in proxy["rows"]] == ["K=1", "K=4"]  # AMP rows need CUDA
    assert all(r["trials_per_hour"] > 0 and set(r["statuses"]) == {"ok"} for r in proxy["rows"])
    assert proxy["k1_equals_k4"] is True

    train = sections["train"]["rows"]
    assert [(r["loss_type"], r["amp"]) for r in train] == [("cross_entropy", False),
                                                          ("searched", False)]
    assert all(r["finite"] and len(r["losses"]) == sections["train"]["iters"] for r in train)

    ev = sections["eval"]
    assert ev["agree"] is True and ev["evaluator_seconds_per_image"] > 0
    assert 0 <= ev["mIoU"] <= 100


def test_bad_arguments_are_refused():
    proc = _run("--device", "cpu", "--sections", "loss,speed", timeout=120)
    assert proc.returncode == 2 and "--sections 'loss,speed'" in proc.stderr
