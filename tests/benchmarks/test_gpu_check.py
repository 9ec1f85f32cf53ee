"""benchmarks/gpu_check.py: the CPU smoke runs (small sizes) print every section and write JSON.

Two runs: with detectron2 (every section), and as on a bare GPU machine, with detectron2 and the
compiled extension made unimportable (a ``sys.meta_path`` blocker in the subprocess): the
``loss`` and ``eval`` sections still run (the fused rows in Triton's interpreter) and the
detectron2 sections are reported as skipped without failing the run.
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")
SECTIONS = ("loss", "proxy", "train", "eval")
SURROGATES = ["mIoU", "fwIoU", "BIoU", "BF1", "mACC", "pACC"]

# Run gpu_check.py in a process where these modules do not import, as on a machine without them.
BLOCKED_RUN = """
import importlib.abc, runpy, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
sys.meta_path.insert(0, Blocker())
sys.argv = [{script!r}] + {args!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def _run(*args, timeout=600, blocked=(), interpret=False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    if blocked:
        command = [sys.executable, "-c", BLOCKED_RUN.format(blocked=list(blocked), script=SCRIPT,
                                                            args=list(args))]
    else:
        command = [sys.executable, SCRIPT, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_cpu_smoke_run_reports_every_section(tmp_path):
    pytest.importorskip("detectron2")
    out = tmp_path / "report" / "gpu_check.json"
    proc = _run("--device", "cpu", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in SECTIONS:
        assert f"== {name} ==" in proc.stdout
    assert "every section ran" in proc.stdout

    report = json.loads(out.read_text())
    assert report["mode"] == "small" and report["failed"] == [] and report["skipped"] == []
    assert report["environment"]["device"] == "cpu"
    sections = report["sections"]
    assert set(sections) == set(SECTIONS) and not any("error" in s for s in sections.values())

    loss = sections["loss"]
    assert loss["paths"] == ["eager"] and "TRITON_INTERPRET" in loss["fused_skipped"]
    rows = loss["rows"]
    names = ["cross_entropy"] + SURROGATES
    assert [r["loss"] for r in rows] == names * 2  # fp32, then under autocast (bf16 on cpu)
    assert [r["precision"] for r in rows] == ["fp32"] * 7 + ["torch.bfloat16"] * 7
    assert all(r["finite"] and r["ms"] > 0 and r["ratio_vs_ce"] > 0 for r in rows)
    assert all(r["constant"] for r in loss["ops"])

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


def test_bare_machine_run_without_detectron2_and_extension(tmp_path):
    """What a bare GPU machine has: torch, numpy, OpenCV, Triton; no detectron2, no segloss_d2._C.
    The fused rows run in Triton's interpreter (the same code as on a GPU)."""
    pytest.importorskip("triton")
    out = tmp_path / "gpu_check.json"
    proc = _run("--device", "cpu", "--output", str(out),
                blocked=("detectron2", "segloss_d2._C"), interpret=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped: detectron2 is not importable" in proc.stdout
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["detectron2"] is None and "blocked" in env["detectron2_error"]
    assert env["cpu_kernels"] is False and "blocked" in env["cpu_kernels_error"]
    assert env["fused_available"] is True
    assert report["failed"] == [] and report["skipped"] == ["proxy", "train"]
    sections = report["sections"]
    assert all("detectron2 is not importable" in sections[s]["skipped"] for s in ("proxy",
                                                                                "train"))

    loss = sections["loss"]
    assert loss["paths"] == ["eager", "fused"] and loss["fused_skipped"] is None
    rows = loss["rows"]
    per_precision = ["cross_entropy"] + [name for name in SURROGATES for _ in range(2)]
    assert [r["loss"] for r in rows] == per_precision * 2
    assert [r["path"] for r in rows] == ([None] + ["eager", "fused"] * 6) * 2
    assert all(r["finite"] and r["ms"] > 0 for r in rows)
    full = [r for r in loss["agreement"] if not r.get("edge")]
    assert [(r["loss"], r["precision"]) for r in full] == [
        (name, precision) for precision in ("fp32", "torch.bfloat16") for name in SURROGATES]
    edge = [(r["loss"], r["precision"]) for r in loss["agreement"] if r.get("edge")]
    assert len(edge) == 2 * len(SURROGATES) * 2 * 2  # shapes, losses, all-ignore or not, dtypes
    assert ("BF1 all-ignore", "torch.bfloat16 (3, 7, 61, 29)") in edge
    assert all(r["agree"] for r in loss["agreement"]), loss["agreement"]
    ops = loss["ops"]
    assert [(r["loss"], r["path"]) for r in ops] == [("cross_entropy", None)] + [
        (name, path) for name in SURROGATES for path in ("eager", "fused")]
    assert all(r["constant"] for r in ops), ops
    for r in ops:
        launches = r["counts"][-1]["fused_launches"]
        assert launches == (0 if r["path"] != "fused" else 5 if r["loss"] == "BF1" else 2), r

    ev = sections["eval"]
    assert "detectron2 is not importable" in ev["evaluator_skipped"]
    assert ev["segmetrics_seconds_per_image"] > 0 and 0 <= ev["mIoU"] <= 100


def test_bad_arguments_are_refused():
    proc = _run("--device", "cpu", "--sections", "loss,speed", timeout=120)
    assert proc.returncode == 2 and "--sections 'loss,speed'" in proc.stderr
