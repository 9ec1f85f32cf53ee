"""Reliability sweep, inputs to the library: one test per case, reproduced end to end.

- case 5: a huge BF1/BIoU tolerance (10**6) on a (2, 21, 16, 16) batch once allocated GBs in the
  surrogates (and an OpenCV allocation error in SegMetrics); work and memory are now bounded by
  the image size, measured as peak RSS in a subprocess (torch's CPU allocations are invisible to
  tracemalloc), under an address-space limit so that a regression fails instead of swapping;
- case 8: truncated VOC label PNGs and JPEGs, and out-of-range label values, name the file and
  the dataset (VOC palette conversion, the training mapper with loader workers, the evaluator);
- case 9c: a params file whose θ contradicts its control points, or with negative or all-zero
  weights, is refused naming the term and the values;
- case 9e: a batch whose every pixel is ignored gives a loss of 0 with zero gradient for every
  metric, on the CPU kernels and the pure-torch path.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from segloss_d2.surrogate import kernels
from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import (
    SurrogateParams,
    list_presets,
    load_params,
    save_params,
    theta_dim,
)

PATHS = ["cpu_kernels", "torch"]


@pytest.fixture(params=PATHS)
def compute_path(request, monkeypatch):
    if request.param == "cpu_kernels" and not kernels.available():
        pytest.skip(f"segloss_d2._C not built: {kernels.load_error()}")
    monkeypatch.setattr(kernels, "ENABLED", request.param == "cpu_kernels")
    return request.param


# ------------------------------------------------------------------------------------- case 5

_MEMORY_PROBE = r"""
import json, resource, sys
import numpy as np, torch
from segloss_d2.evaluation.metrics import SegMetrics
from segloss_d2.surrogate import kernels
from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import load_params

huge = int(sys.argv[1])
gen = torch.Generator().manual_seed(0)
n, c, h, w = 2, 21, 16, 16
labels = torch.randint(0, 4, (n, h // 4, w // 4), generator=gen)
labels = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)
labels[0, 0, 0] = 7  # a one-pixel class in a corner: its dilation grows up to max(H, W) - 1
labels[1, 5] = 255
logits = 2 * torch.randn(n, c, h, w, generator=gen)
pred = logits.argmax(1).numpy()

def run(tol):
    out = []
    for enabled in (True, False):  # CPU kernels, then the pure-torch path
        kernels.ENABLED = enabled and kernels.available()
        for preset in ("voc_bf1", "voc_biou"):
            for drop in (False, True):
                loss = SurrogateLoss(load_params(preset), c, tolerance=tol, drop_background=drop)
                x = logits.clone().requires_grad_()
                value = loss(x, labels)
                value.backward()
                out.append([value.item(), x.grad.abs().sum().item(), x.grad[0, 7].sum().item()])
    for drop in (False, True):
        m = SegMetrics(c, tolerance=tol, drop_background=drop, metrics=["BIoU", "BF1"])
        m.update(pred, labels.numpy())
        out.append([m.compute()["BIoU"], m.compute()["BF1"]])
    return out

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

bounded = run(max(h, w) - 1)  # also warms up threads and allocator pools
before = peak_mb()
# a regression that allocates GBs fails here with an allocation error instead of swapping
vm_kb = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0])
resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + (2 << 30), resource.RLIM_INFINITY))
result = run(huge)
print(json.dumps({"bounded": bounded, "huge": result, "growth_mb": peak_mb() - before,
                  "peak_mb": peak_mb()}))
"""


@pytest.mark.slow
def test_case5_huge_tolerance_memory_and_values_bounded_by_the_image():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(10**6)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # tolerance 10**6 gives exactly what tolerance max(H, W) - 1 gives (values and gradients)
    assert report["huge"] == report["bounded"]
    assert all(np.isfinite(v) for row in report["huge"] for v in row)
    # and costs no more memory: the peak RSS grows by less than 64 MB on top of the peak of the
    # bounded run (it grew by about 8 GB before the radius was clamped)
    assert report["growth_mb"] < 64, report


# ------------------------------------------------------------------------------------- case 8

pytest.importorskip("detectron2")

from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
)

from segloss_d2.data import CorruptFileError, SemSegDatasetMapper  # noqa: E402
from segloss_d2.data.voc import register_voc_sem_seg, voc_palette  # noqa: E402
from segloss_d2.engine import SegLossTrainer, get_segloss_cfg  # noqa: E402
from segloss_d2.evaluation.evaluator import SegLossEvaluator  # noqa: E402

IDS = ["2007_000032", "2007_000039", "2007_000063"]


@pytest.fixture
def voc(tmp_path):
    """A VOC val split on disk (JPEGs, palette label PNGs), registered under a unique name."""
    rng = np.random.default_rng(0)
    voc_dir = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_dir / sub).mkdir(parents=True)
    for image_id in IDS:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            voc_dir / "JPEGImages" / f"{image_id}.jpg", quality=95)
        labels = np.kron(rng.integers(0, 21, (5, 6)), np.ones((8, 8), np.int64)).astype(np.uint8)
        labels[0] = 255
        image = Image.fromarray(labels, mode="P")
        image.putpalette([v for rgb in voc_palette() for v in rgb])
        image.save(voc_dir / "SegmentationClass" / f"{image_id}.png")
    (voc_dir / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(IDS) + "\n")
    name = f"reliability_voc_{uuid.uuid4().hex[:8]}"
    register_voc_sem_seg(name, str(tmp_path), "val")
    yield name, voc_dir
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _train_cfg(name, workers):
    cfg = get_segloss_cfg()
    cfg.merge_from_file("configs/shapes/Base-Tiny-DeepLabV3Plus.yaml")
    cfg.merge_from_list(["DATASETS.TRAIN", (name,), "DATALOADER.NUM_WORKERS", workers,
                         "SOLVER.IMS_PER_BATCH", 3, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 21,
                         "INPUT.CROP.ENABLED", False])
    return cfg


def _first_batches(cfg, count=3, trainer=False):
    if trainer:  # what training runs: SegLossTrainer's loader (its mapper and augmentations)
        loader = iter(SegLossTrainer.build_train_loader(cfg))
    else:
        mapper = SemSegDatasetMapper(cfg, is_train=True, augmentations=[])
        loader = iter(build_detection_train_loader(cfg, mapper=mapper))
    for _ in range(count):
        next(loader)


def test_case8_truncated_voc_label_png_is_named_in_the_palette_conversion(voc):
    name, voc_dir = voc
    path = voc_dir / "SegmentationClass" / f"{IDS[1]}.png"
    _truncate(path)
    with pytest.raises(CorruptFileError, match=re.escape(
            f"Dataset '{name}': cannot read label file '{path}'")) as info:
        DatasetCatalog.get(name)
    assert "truncated" in str(info.value) and isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("which", ["image", "label"])
@pytest.mark.slow
def test_case8_truncated_file_during_training_is_named(voc, workers, which):
    name, voc_dir = voc
    dicts = DatasetCatalog.get(name)  # converts the labels while they are intact
    key = "file_name" if which == "image" else "sem_seg_file_name"
    path = dicts[2][key]
    _truncate(pathlib.Path(path))
    with pytest.raises(CorruptFileError, match=re.escape(
            f"Dataset '{name}': cannot read {which} file '{path}'")):
        _first_batches(_train_cfg(name, workers), trainer=True)


@pytest.mark.slow
def test_case8_label_value_out_of_range_during_training_names_file_and_dataset(voc):
    name, voc_dir = voc
    dicts = DatasetCatalog.get(name)
    path = dicts[0]["sem_seg_file_name"]
    labels = np.array(Image.open(path))
    labels[7, 9] = 40  # neither a VOC class nor the ignore value
    Image.fromarray(labels).save(path)
    with pytest.raises(ValueError, match=re.escape(
            f"Dataset '{name}': label file '{path}' holds values [40] (1 pixels")):
        _first_batches(_train_cfg(name, 0))


def test_case8_truncated_gt_file_during_evaluation_is_named(voc):
    name, _ = voc
    dicts = DatasetCatalog.get(name)
    path = dicts[1]["sem_seg_file_name"]
    _truncate(pathlib.Path(path))
    evaluator = SegLossEvaluator(name, distributed=False)
    evaluator.reset()
    output = {"sem_seg": torch.zeros(21, 40, 48)}
    evaluator.process([dicts[0]], [output])
    with pytest.raises(OSError, match=re.escape(f"Dataset '{name}': cannot read GT file '{path}'")):
        evaluator.process([dicts[1]], [output])


# ------------------------------------------------------------------------------------ case 9c


def _searched_params(tmp_path):
    gen = torch.Generator().manual_seed(0)
    thetas = [torch.rand(theta_dim(m), generator=gen).tolist() for m in ("mIoU", "BF1")]
    params = SurrogateParams.from_theta(["mIoU", "BF1"], thetas, reward=0.7)
    path = tmp_path / "best_params.json"
    save_params(params, path)
    return path


def test_case9c_theta_contradicting_control_points_is_refused(tmp_path):
    path = _searched_params(tmp_path)
    load_params(path)  # as written: consistent
    data = json.loads(path.read_text())
    data["terms"][0]["theta"][1][0] = 0.999  # hand-edited θ of mIoU's OR curve
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"terms\[0\] \(mIoU\): theta\[1\] and control_points\[1\] "
                                         r"describe different curves") as info:
        load_params(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("weights, match", [
    ([1.0, -1.0], r"weights\[1\] \(BF1\) must be a finite number >= 0, got -1\.0"),
    ([0.0, 0.0], r"weights are all 0"),
])
def test_case9c_negative_or_all_zero_weights_are_refused(tmp_path, weights, match):
    path = _searched_params(tmp_path)
    data = json.loads(path.read_text())
    for term, w in zip(data["terms"], weights):
        term["weight"] = w
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        load_params(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------ case 9e


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_case9e_all_ignored_batch_gives_zero_loss_and_gradient(preset, compute_path):
    loss = SurrogateLoss(load_params(preset), 21)
    labels = torch.full((2, 16, 16), 255, dtype=torch.long)
    logits = torch.randn(2, 21, 16, 16, requires_grad=True)
    value = loss(logits, labels)
    value.backward()
    assert value.item() == 0.0
    assert not logits.grad.any()
