"""SegLossEvaluator against detectron2's SemSegEvaluator on a tiny in-memory dataset."""
import json
import logging
import math
import os
import re
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

try:
    import detectron2  # noqa: F401
except ImportError:
    if os.environ.get("SEGLOSS_REQUIRE_D2") == "1":
        raise
    pytest.skip("detectron2 is not installed", allow_module_level=True)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import SemSegEvaluator  # noqa: E402

from segloss_d2 import SegLossEvaluator, SegMetrics  # noqa: E402
from segloss_d2.evaluation.evaluator import load_sem_seg_gt  # noqa: E402

CLASSES = ["road", "car", "sky", "tree"]  # "tree" never occurs in GT, only in predictions
IGNORE = 255


def _sample(rng, shape):
    coarse = rng.integers(0, 3, (shape[0] // 12 + 1, shape[1] // 12 + 1))
    gt = np.kron(coarse, np.ones((12, 12), dtype=np.int64))[: shape[0], : shape[1]]
    gt[rng.random(shape) < 0.05] = IGNORE
    gt[:3, :5] = IGNORE
    labels = np.where(rng.random(shape) < 0.8, gt, rng.integers(0, len(CLASSES), shape))
    labels[labels == IGNORE] = 0
    logits = torch.randn(len(CLASSES), *shape)
    logits[torch.from_numpy(labels)[None] == torch.arange(len(CLASSES))[:, None, None]] += 5.0
    return gt, logits


@pytest.fixture
def dataset(tmp_path):
    """A registered dataset of 3 images of different sizes with PNG GT files, and model outputs."""
    rng = np.random.default_rng(0)
    records, outputs = [], []
    for i, shape in enumerate([(48, 64), (40, 56), (60, 44)]):
        gt, logits = _sample(rng, shape)
        path = str(tmp_path / f"gt_{i}.png")
        Image.fromarray(gt.astype(np.uint8)).save(path)
        records.append({"file_name": f"img_{i}.jpg", "sem_seg_file_name": path,
                        "height": shape[0], "width": shape[1]})
        outputs.append({"sem_seg": logits})
    name = f"segloss_test_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGNORE)
    yield name, records, outputs
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _absent_classes_count_in_d2_miou(tmp_path):
    """How the installed detectron2's SemSegEvaluator averages mIoU, detected by behaviour.

    One 2x2 image of class 0 with one pixel predicted as class 1 (absent from the GT):
    v0.6 (like cityscapesScripts, MMSegmentation and SegMetrics) counts class 1 as IoU 0, mIoU
    (3/4 + 0) / 2 = 37.5; upstream main leaves classes absent from the GT out, mIoU 75.
    Returns True for the first convention, False for the second.
    """
    path = str(tmp_path / "probe_gt.png")
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(path)
    name = f"segloss_probe_{uuid.uuid4().hex}"
    record = {"file_name": "probe.jpg", "sem_seg_file_name": path, "height": 2, "width": 2}
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=IGNORE)
    try:
        logits = torch.zeros(2, 2, 2)
        logits[0] = 1.0
        logits[1, 0, 0] = 2.0
        miou = _run(SemSegEvaluator(name, distributed=False), [record],
                    [{"sem_seg": logits}])["sem_seg"]["mIoU"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if miou == pytest.approx(37.5):
        return True
    if miou == pytest.approx(75.0):
        return False
    raise AssertionError(f"detectron2's SemSegEvaluator gave mIoU {miou} on the probe; expected "
                         "37.5 (absent classes count as IoU 0) or 75 (absent classes left out)")


def _run(evaluator, records, outputs):
    evaluator.reset()
    evaluator.process(records[:1], outputs[:1])  # one image, then a batch of two
    evaluator.process(records[1:], outputs[1:])
    return evaluator.evaluate()


# detectron2's own SemSegEvaluator converts tensors with np.array(..., dtype=int)
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_matches_sem_seg_evaluator(dataset, tmp_path, caplog):
    """Same numbers as detectron2's SemSegEvaluator under its mIoU convention, detected by
    behaviour (v0.6 and upstream main differ); keys only detectron2 reports (main's
    ``BoundaryIoU-*``, another definition than ours) are not compared."""
    name, records, outputs = dataset
    caplog.set_level(logging.INFO)
    absent_count = _absent_classes_count_in_d2_miou(tmp_path)
    ours = _run(SegLossEvaluator(name, output_dir=str(tmp_path / "out")), records, outputs)
    theirs = _run(SemSegEvaluator(name, distributed=False), records, outputs)
    ours, theirs = ours["sem_seg"], theirs["sem_seg"]
    for key in ["fwIoU", "mACC", "pACC"]:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12), key
    for cls in CLASSES[:3]:
        for key in [f"IoU-{cls}", f"ACC-{cls}"]:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12), key
    # "tree" is predicted but never in GT: SegMetrics counts IoU 0 for it in mIoU, as v0.6 does
    # (v0.6 prints NaN for it, SegMetrics 0, so that mIoU is the NaN-mean of the per-class values);
    # main leaves it out of mIoU (and prints NaN)
    assert math.isnan(ours["ACC-tree"]) and math.isnan(theirs["ACC-tree"])
    assert ours["IoU-tree"] == 0.0 and math.isnan(theirs["IoU-tree"])
    in_gt = [c for c in CLASSES if not math.isnan(ours[f"ACC-{c}"])]
    assert in_gt == CLASSES[:3]
    if absent_count:
        assert ours["mIoU"] == pytest.approx(theirs["mIoU"], rel=1e-12)
    else:
        assert ours["mIoU"] != pytest.approx(theirs["mIoU"])  # the case differs
        gt_only = np.mean([ours[f"IoU-{c}"] for c in in_gt])
        assert gt_only == pytest.approx(theirs["mIoU"], rel=1e-12)

    # the boundary metrics are SegMetrics' on the same label maps
    direct = SegMetrics(len(CLASSES), ignore_value=IGNORE, class_names=CLASSES)
    for record, output in zip(records, outputs):
        gt = np.array(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
        direct.update(output["sem_seg"].argmax(0), gt)
    assert ours == pytest.approx(direct.compute(), nan_ok=True)
    assert list(ours)[:7] == ["mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1", "BoundaryIoU"]
    assert ours["BIoU"] != pytest.approx(ours["mIoU"])  # the trimap is not the whole image

    with open(tmp_path / "out" / "sem_seg_segloss_evaluation.json") as f:
        saved = json.load(f)
    assert saved["BF1"] == pytest.approx(ours["BF1"]) and saved["ACC-tree"] is None
    assert "Per-class results" in caplog.text and "| road" in caplog.text


def test_options_reach_segmetrics(dataset, caplog):
    name, records, outputs = dataset
    caplog.set_level(logging.INFO)
    res = _run(
        SegLossEvaluator(name, distributed=False, metrics=["mIoU", "BF1"], tolerance=2,
                         drop_background=True),
        records, outputs,
    )["sem_seg"]
    assert "BF1-road" not in res and "BF1-car" in res and "BIoU" not in res
    direct = SegMetrics(len(CLASSES), tolerance=2, drop_background=True, class_names=CLASSES,
                        metrics=["mIoU", "BF1"])
    for record, output in zip(records, outputs):
        direct.update(output["sem_seg"].argmax(0),
                      np.array(Image.open(record["sem_seg_file_name"]), dtype=np.int64))
    assert res == pytest.approx(direct.compute(), nan_ok=True)
    assert "| road" in caplog.text


def test_distributed_gathers_and_merges_states(dataset, monkeypatch):
    name, records, outputs = dataset
    single = _run(SegLossEvaluator(name, distributed=False), records, outputs)
    # rank 1 saw the first image, rank 0 (this process) the other two
    rank1 = SegLossEvaluator(name, distributed=False)
    rank1.process(records[:1], outputs[:1])
    rank1_state = rank1._metrics.state_dict()
    from segloss_d2.evaluation import evaluator as module

    gathered = []
    monkeypatch.setattr(module.comm, "synchronize", lambda: None)
    monkeypatch.setattr(module.comm, "gather",
                        lambda data, dst=0: gathered.append(data) or [data, rank1_state])
    rank0 = SegLossEvaluator(name, distributed=True)
    rank0.process(records[1:], outputs[1:])
    merged = rank0.evaluate()
    assert len(gathered) == 1 and merged["sem_seg"] == pytest.approx(single["sem_seg"], nan_ok=True)
    monkeypatch.setattr(module.comm, "is_main_process", lambda: False)
    assert rank0.evaluate() is None


def test_errors(dataset):
    name, records, outputs = dataset
    with pytest.raises(ValueError, match="num_classes=3 but dataset"):
        SegLossEvaluator(name, num_classes=3)
    evaluator = SegLossEvaluator(name)
    evaluator.reset()
    assert evaluator.evaluate() == {}
    bad = {"sem_seg": torch.zeros(len(CLASSES), 5, 5)}
    with pytest.raises(ValueError, match="shape.*img_0.jpg"):
        evaluator.process(records[:1], [bad])


def _palette_png(path, ids):
    """Save class ids (uint8 (H, W)) as a "P" PNG whose colours' luminance differs from the ids."""
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252
    image.putpalette(palette)
    image.save(path)


def test_load_sem_seg_gt_reads_palette_indices(tmp_path):
    ids = np.array([[0, 1, 2, 3], [3, 2, 1, 255]], dtype=np.uint8)
    _palette_png(tmp_path / "p.png", ids)
    assert not np.array_equal(np.array(Image.open(tmp_path / "p.png").convert("L")), ids)
    gt = load_sem_seg_gt(str(tmp_path / "p.png"))
    assert gt.dtype == np.int64 and gt.tolist() == ids.tolist()
    Image.fromarray(ids).save(tmp_path / "l.png")
    assert load_sem_seg_gt(str(tmp_path / "l.png")).tolist() == ids.tolist()
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb.png must be a single-channel.*\(2, 4, 3\)"):
        load_sem_seg_gt(str(tmp_path / "rgb.png"))


def test_truncated_gt_file_is_named(dataset):
    """A truncated label PNG fails with an OSError naming the file and the dataset (PIL's own
    error, chained, names neither)."""
    name, records, outputs = dataset
    path = records[1]["sem_seg_file_name"]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(OSError, match=re.escape(f"Dataset '{name}': cannot read GT file '{path}'")
                       ) as info:
        load_sem_seg_gt(path, name)
    assert isinstance(info.value.__cause__, OSError)
    evaluator = SegLossEvaluator(name)
    evaluator.reset()
    evaluator.process(records[:1], outputs[:1])
    with pytest.raises(OSError, match=f"Dataset '{name}'.*{re.escape(path)}.*truncated"):
        evaluator.process(records[1:2], outputs[1:2])
