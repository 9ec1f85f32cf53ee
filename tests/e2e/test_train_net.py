"""tools/train_net.py end to end on CPU: train with a searched preset, then --eval-only."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "shapes", "Base-Tiny-DeepLabV3Plus.yaml")
SIX = ("mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1")


def _run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_searched_then_eval_only(tmp_path):
    out = str(tmp_path / "run")
    _run("tools/train_net.py", "--config-file", TINY,
         "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
         "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", "voc_miou",
         "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", out)
    weights = os.path.join(out, "model_final.pth")
    assert os.path.isfile(weights)
    log = _run("tools/train_net.py", "--config-file", TINY, "--eval-only",
               "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out)
    with open(os.path.join(out, "inference", "segloss_shapes_val",
                           "sem_seg_segloss_evaluation.json")) as f:
        results = json.load(f)
    for key in SIX + ("BoundaryIoU",):
        assert key in results and key in log
        assert results[key] is None or 0.0 <= results[key] <= 100.0


def test_train_net_rejects_a_bad_loss_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TINY,
         "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched", "OUTPUT_DIR", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "needs MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS" in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, "model_final.pth"))


def test_deeplab_project_example_trains_with_a_searched_loss(tmp_path):
    # projects/DeepLab-SegLoss/train_net.py: detectron2's DeepLab trainer + three segloss lines.
    code = (
        "import runpy, sys; import segloss_d2.data; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    _run("-c", code, "projects/DeepLab-SegLoss/train_net.py", "--config-file", TINY,
         "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched", "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS",
         "voc_bf1", "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path))
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))


def test_pointrend_project_example_trains_with_a_searched_loss_and_evaluates(tmp_path):
    # projects/PointRend-SegLoss/train_net.py: detectron2's PointRend trainer + three segloss lines,
    # on the tiny PointRend config (segloss coarse head); then --eval-only with detectron2's
    # SemSegEvaluator.
    code = (
        "import runpy, sys; import segloss_d2.data; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    config = os.path.join(ROOT, "configs", "shapes", "Base-Tiny-PointRend.yaml")
    script = "projects/PointRend-SegLoss/train_net.py"
    _run("-c", code, script, "--config-file", config,
         "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched", "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS",
         "voc_miou", "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path))
    weights = os.path.join(tmp_path, "model_final.pth")
    assert os.path.isfile(weights)
    log = _run("-c", code, script, "--config-file", config, "--eval-only",
               "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path))
    import torch

    # our own file, holding numpy floats
    res = torch.load(os.path.join(tmp_path, "inference", "sem_seg_evaluation.pth"),
                     weights_only=False)
    assert 0.0 <= res["mIoU"] <= 100.0 and "mIoU" in log, res
