"""SegMetrics: hand-computed toy cases, a brute-force per-pixel reference, merge, bad input."""
import math

import cv2
import numpy as np
import pytest
import torch

from segloss_d2 import SegMetrics
from segloss_d2.evaluation.metrics import ALL_METRICS

V = 255  # ignore value

# --------------------------------------------------------------------------------------------
# hand-computed toy cases (the derivations are in the comments)

# valid pairs (gt, pred): 0->0 x3, 0->1, 1->1 x4, 1->2, 2->2, 2->0; one void pixel
TOY_GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, V, 1]])
TOY_PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 2, 2]])
# inner GT boundaries (void is "another label"; the image border is not a boundary):
#   0 1 1 0 / 1 1 1 1 / 1 1 . 1  -> class 0 {(0,1),(1,0),(1,1)}, class 1 {(0,2),(1,2),(1,3),(2,3)},
#   class 2 {(2,0),(2,1)}
# inner prediction boundaries: every pixel but (0,3) -> class 0 {(0,0),(1,0),(1,1),(2,1)},
#   class 1 {(0,1),(0,2),(1,2),(1,3)}, class 2 {(2,0),(2,2),(2,3)}


def _toy(**kwargs):
    m = SegMetrics(3, **kwargs)
    m.update(TOY_PRED, TOY_GT)
    return m.compute()


def test_toy_confusion_metrics():
    r = _toy()
    # tp = (3, 4, 1), GT pixels = (4, 5, 2), predicted pixels = (4, 5, 2)
    iou = [3 / 5, 4 / 6, 1 / 3]
    assert r["IoU-0"] == pytest.approx(100 * iou[0])
    assert r["IoU-2"] == pytest.approx(100 * iou[2])
    assert r["mIoU"] == pytest.approx(100 * sum(iou) / 3)
    assert r["fwIoU"] == pytest.approx(100 * (4 * iou[0] + 5 * iou[1] + 2 * iou[2]) / 11)
    assert r["ACC-1"] == pytest.approx(80.0)
    assert r["mACC"] == pytest.approx(100 * (3 / 4 + 4 / 5 + 1 / 2) / 3)
    assert r["pACC"] == pytest.approx(100 * 8 / 11)


def test_toy_biou_trimap_tolerance_0():
    # trimap = the 9 GT boundary pixels; pairs there: 0->0 x2, 0->1, 1->1 x3, 1->2, 2->2, 2->0
    r = _toy(tolerance=0)
    biou = [2 / 4, 3 / 5, 1 / 3]
    assert [r[f"BIoU-{c}"] for c in range(3)] == pytest.approx([100 * b for b in biou])
    assert r["BIoU"] == pytest.approx(100 * sum(biou) / 3)


def test_toy_biou_drop_background():
    # trimap = foreground GT boundaries only (6 pixels): 1->1 x3, 1->2, 2->2, 2->0;
    # background: tp 0, predicted once -> 0; the mean still includes background (reference).
    r = _toy(tolerance=0, drop_background=True)
    biou = [0.0, 3 / 4, 1 / 3]
    assert [r[f"BIoU-{c}"] for c in range(3)] == pytest.approx([100 * b for b in biou])
    assert r["BIoU"] == pytest.approx(100 * sum(biou) / 3)


def test_toy_biou_large_tolerance_is_iou():
    r = _toy(tolerance=1)  # the dilated trimap covers the whole 3x4 image
    assert r["BIoU"] == pytest.approx(r["mIoU"])


def _f1(p, r):
    return 2 * p * r / (p + r + 1e-8)


def test_toy_bf1_tolerance_0():
    # n_pred = (4, 4, 3), n_gt = (3, 4, 2), matches = (2, 3, 1)
    r = _toy(tolerance=0)
    f1 = [_f1(2 / 4, 2 / 3), _f1(3 / 4, 3 / 4), _f1(1 / 3, 1 / 2)]
    assert [r[f"BF1-{c}"] for c in range(3)] == pytest.approx([100 * f for f in f1])
    assert r["BF1"] == pytest.approx(100 * sum(f1) / 3)
    dropped = _toy(tolerance=0, drop_background=True)
    assert "BF1-0" not in dropped
    assert dropped["BF1"] == pytest.approx(100 * (f1[1] + f1[2]) / 2)


def test_toy_bf1_tolerance_1():
    # class 2: Dil_1(GT boundary) = rows 1-2, cols 0-2 holds 2 of the 3 predicted boundary pixels;
    # Dil_1(predicted boundary) holds both GT boundary pixels. Classes 0 and 1 match fully.
    r = _toy(tolerance=1)
    f1 = [_f1(1, 1), _f1(1, 1), _f1(2 / 3, 1)]
    assert [r[f"BF1-{c}"] for c in range(3)] == pytest.approx([100 * f for f in f1])


def _squares_16(void=False):
    # 16x16: diagonal 22.6 -> Boundary IoU radius d = max(1, round(0.45)) = 1
    gt = np.zeros((16, 16), dtype=np.int64)
    gt[4:10, 4:10] = 1
    pred = np.zeros_like(gt)
    pred[4:10, 6:12] = 1
    if void:
        gt[12:14, 12:14] = V
    return pred, gt


def test_toy_boundary_iou():
    # class 1: two 6x6 rings of 20 pixels sharing 4 + 4 pixels on rows 4 and 9 -> 8 / 32
    # class 0: 60 border-ring pixels (the image border is a boundary here) + 28 around each
    #   square, sharing the border ring and 6 + 6 pixels on rows 3 and 10 -> 72 / (88 + 88 - 72)
    m = SegMetrics(2, metrics=["BoundaryIoU"])
    m.update(*_squares_16())
    r = m.compute()
    assert r["BoundaryIoU-1"] == pytest.approx(100 * 8 / 32)
    assert r["BoundaryIoU-0"] == pytest.approx(100 * 72 / 104)
    assert r["BoundaryIoU"] == pytest.approx(100 * (8 / 32 + 72 / 104) / 2)
    assert set(r) == {"BoundaryIoU", "BoundaryIoU-0", "BoundaryIoU-1"}


def test_toy_boundary_iou_ignore():
    # a 2x2 void block inside background adds the 12 background pixels around it to the GT band
    # of class 0 (void is not class 0); the prediction there is interior background: no band.
    m = SegMetrics(2, metrics=["BoundaryIoU"])
    m.update(*_squares_16(void=True))
    r = m.compute()
    assert r["BoundaryIoU-0"] == pytest.approx(100 * 72 / 116)
    assert r["BoundaryIoU-1"] == pytest.approx(100 * 8 / 32)


def test_absent_classes_are_nan_and_skipped():
    # class 2 predicted but never in GT: IoU 0, ACC NaN; class 3 absent everywhere: NaN
    m = SegMetrics(4, tolerance=0)
    m.update(np.array([[0, 2], [1, 1]]), np.array([[0, 0], [1, 1]]))
    r = m.compute()
    assert r["IoU-2"] == 0.0
    assert math.isnan(r["IoU-3"]) and math.isnan(r["ACC-2"]) and math.isnan(r["ACC-3"])
    assert math.isnan(r["BIoU-3"]) and math.isnan(r["BF1-3"]) and math.isnan(r["BoundaryIoU-3"])
    assert r["mIoU"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert r["mACC"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert r["fwIoU"] == pytest.approx(100 * (2 * 0.5 + 2 * 1) / 4)
    assert r["pACC"] == pytest.approx(75.0)


def test_class_names_and_metric_subset():
    m = SegMetrics(3, metrics=["mACC", "BF1"], class_names=["a", "b", "c"])
    m.update(TOY_PRED, TOY_GT)
    r = m.compute()
    assert set(r) == {"mACC", "BF1", "ACC-a", "ACC-b", "ACC-c", "BF1-a", "BF1-b", "BF1-c"}
    assert r["mACC"] == pytest.approx(_toy()["mACC"])
    assert not m.trimap_confusion.any() and not m.boundary_iou_counts.any()


# --------------------------------------------------------------------------------------------
# brute force: per-pixel python loops over the definitions of docs/method.md §1.3-1.4


def _window(h, w, y, x, r):
    """In-image pixels of the square window of radius r, and whether it leaves the image."""
    inside = [(j, i) for j in range(y - r, y + r + 1) for i in range(x - r, x + r + 1)
              if 0 <= j < h and 0 <= i < w]
    return inside, len(inside) < (2 * r + 1) ** 2


def _inner_boundary(mask):
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                out[y, x] = any(not mask[j, i] for j, i in _window(h, w, y, x, 1)[0])
    return out


def _dilate(mask, r):
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            out[y, x] = any(mask[j, i] for j, i in _window(h, w, y, x, r)[0])
    return out


def _band(mask, r):
    """Cheng et al.: mask minus its erosion, outside the image counting as background."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if mask[y, x]:
                pixels, leaves = _window(h, w, y, x, r)
                out[y, x] = leaves or any(not mask[j, i] for j, i in pixels)
    return out


def _brute_force(images, num_classes, tol, drop_bg):
    c_range = range(num_classes)
    tp, gt_n, pred_n = np.zeros((3, num_classes))
    btp, bgt_n, bpred_n = np.zeros((3, num_classes))
    n_pred, n_gt, m_pred, m_gt = np.zeros((4, num_classes))
    inter, union = np.zeros((2, num_classes))
    for pred, gt in images:
        valid = gt != V
        gt_bd = {c: _inner_boundary(gt == c) for c in c_range}
        pred_bd = {c: _inner_boundary(pred == c) for c in c_range}
        seeds = np.zeros(gt.shape, dtype=bool)
        for c in c_range:
            if not (drop_bg and c == 0):
                seeds |= gt_bd[c]
        trimap = _dilate(seeds, tol) & valid
        radius = max(1, int(round(0.02 * math.hypot(*gt.shape))))
        for c in c_range:
            g, p = (gt == c), (pred == c) & valid
            tp[c] += (g & p).sum()
            gt_n[c] += g.sum()
            pred_n[c] += p.sum()
            btp[c] += (g & p & trimap).sum()
            bgt_n[c] += (g & trimap).sum()
            bpred_n[c] += (p & trimap).sum()
            n_pred[c] += pred_bd[c].sum()
            n_gt[c] += gt_bd[c].sum()
            m_pred[c] += (pred_bd[c] & _dilate(gt_bd[c], tol)).sum()
            m_gt[c] += (_dilate(pred_bd[c], tol) & gt_bd[c]).sum()
            gb, pb = _band(g, radius), _band(pred == c, radius) & valid
            inter[c] += (gb & pb).sum()
            union[c] += (gb | pb).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (gt_n + pred_n - tp)
        acc = tp / gt_n
        biou = btp / (bgt_n + bpred_n - btp)
        prec = m_pred / (n_pred + 1e-8)
        rec = m_gt / n_gt
        bf1 = 2 * prec * rec / (prec + rec + 1e-8)
        boundary_iou = inter / union
    if drop_bg:
        bf1[0] = np.nan
    freq = gt_n / gt_n.sum()
    present = gt_n > 0
    return {
        "mIoU": np.nanmean(iou), "fwIoU": np.sum(freq[present] * iou[present]),
        "mACC": np.nanmean(acc), "pACC": tp.sum() / gt_n.sum(), "BIoU": np.nanmean(biou),
        "BF1": np.nanmean(bf1), "BoundaryIoU": np.nanmean(boundary_iou),
        "IoU": iou, "ACC": acc, "BIoU-": biou, "BF1-": bf1, "BoundaryIoU-": boundary_iou,
    }


def _blocky(rng, shape, num_classes, block):
    """Random label map made of blocks, with sprinkled single-pixel noise."""
    coarse = rng.integers(0, num_classes, (shape[0] // block + 1, shape[1] // block + 1))
    labels = np.kron(coarse, np.ones((block, block), dtype=np.int64))[: shape[0], : shape[1]]
    noise = rng.random(shape) < 0.05
    labels[noise] = rng.integers(0, num_classes, noise.sum())
    return labels


def _random_pair(rng, shape, num_classes):
    gt = _blocky(rng, shape, num_classes, block=int(rng.integers(2, 5)))
    pred = np.where(rng.random(shape) < 0.7, gt, _blocky(rng, shape, num_classes, block=3))
    y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
    gt[y : y + 3, x : x + 4] = V  # an ignore region
    gt[rng.random(shape) < 0.03] = V  # and scattered ignore pixels
    return pred, gt


# shapes include thin images whose diagonal gives Boundary IoU radii 2 and 3
@pytest.mark.parametrize("tol", [0, 1, 2, 3])
@pytest.mark.parametrize("drop_bg", [False, True])
@pytest.mark.parametrize("histogram", ["calcHist", "bincount"])
def test_equals_brute_force(tol, drop_bg, histogram, monkeypatch):
    """Both counting paths: OpenCV's histograms, and np.bincount (images of 2**24 pixels or more,
    where calcHist's float32 bins stop being exact)."""
    from segloss_d2.evaluation import metrics

    if histogram == "bincount":
        monkeypatch.setattr(metrics, "_HIST_EXACT_PIXELS", 0)
    rng = np.random.default_rng(100 * tol + drop_bg)
    num_classes = 4
    images = [_random_pair(rng, s, num_classes) for s in [(11, 13), (9, 16), (4, 80), (3, 130)]]
    m = SegMetrics(num_classes, tolerance=tol, drop_background=drop_bg)
    for pred, gt in images:
        m.update(pred, gt)
    got = m.compute()
    want = _brute_force(images, num_classes, tol, drop_bg)
    for key in ALL_METRICS:
        assert got[key] == pytest.approx(100 * want[key], rel=1e-9, nan_ok=True), key
    for prefix, key in [("IoU", "IoU"), ("ACC", "ACC"), ("BIoU", "BIoU-"), ("BF1", "BF1-"),
                        ("BoundaryIoU", "BoundaryIoU-")]:
        for c in range(num_classes):
            name = f"{prefix}-{c}"
            if prefix == "BF1" and drop_bg and c == 0:
                assert name not in got
                continue
            assert got[name] == pytest.approx(100 * want[key][c], rel=1e-9, nan_ok=True), name


@pytest.mark.parametrize("tol", [2, 5, 40])
@pytest.mark.slow
def test_large_tolerances_equal_brute_force(tol, monkeypatch):
    """BF1 counts its matches with integral images and the trimap / Boundary IoU bands come from
    a distance transform from DISTANCE_RADIUS on (patched down here): still the brute-force
    numbers, at tolerances up to past the image."""
    from segloss_d2.evaluation import boundary

    monkeypatch.setattr(boundary, "DISTANCE_RADIUS", 3)
    rng = np.random.default_rng(tol)
    images = [_random_pair(rng, s, 4) for s in [(21, 30), (9, 40), (33, 12)]]
    m = SegMetrics(4, tolerance=tol)
    for pred, gt in images:
        m.update(pred, gt)
    got = m.compute()
    want = _brute_force(images, 4, tol, False)
    for key in ALL_METRICS:
        assert got[key] == pytest.approx(100 * want[key], rel=1e-9, nan_ok=True), key


def _cheng_mask_to_boundary(mask, dilation_ratio=0.02):
    """Boundary IoU's reference band (boundary-iou-api ``mask_to_boundary``), written with cv2."""
    h, w = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(h**2 + w**2))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1 : h + 1, 1 : w + 1]
    return mask - eroded


def test_boundary_iou_equals_cheng_bands():
    rng = np.random.default_rng(7)
    pred, gt = _random_pair(rng, (120, 170), 5)  # radius round(0.02 * 208.1) = 4
    m = SegMetrics(5, metrics=["BoundaryIoU"])
    m.update(pred, gt)
    valid = gt != V
    for c in range(5):
        gb = _cheng_mask_to_boundary((gt == c).astype(np.uint8)).astype(bool)
        pb = _cheng_mask_to_boundary((pred == c).astype(np.uint8)).astype(bool) & valid
        assert m.boundary_iou_counts[:, c].tolist() == [(gb & pb).sum(), (gb | pb).sum()]


def test_merge_equals_single_accumulation():
    rng = np.random.default_rng(3)
    images = [_random_pair(rng, (20, 24), 5) for _ in range(6)]
    whole = SegMetrics(5, tolerance=2)
    parts = [SegMetrics(5, tolerance=2) for _ in range(3)]
    for i, (pred, gt) in enumerate(images):
        whole.update(pred, gt)
        parts[i % 3].update(pred, gt)
    merged = SegMetrics(5, tolerance=2).merge(parts[0]).merge(parts[1].state_dict())
    merged.merge(parts[2])
    assert merged.num_images == 6
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(merged.state_dict()[key], value)
    assert merged.compute() == pytest.approx(whole.compute(), nan_ok=True)
    with pytest.raises(ValueError, match="different settings"):
        merged.merge(SegMetrics(5, tolerance=3))
    merged.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        merged.compute()


def test_batch_and_torch_input_equal_numpy_loop():
    rng = np.random.default_rng(5)
    images = [_random_pair(rng, (10, 12), 3) for _ in range(3)]
    one = SegMetrics(3)
    for pred, gt in images:
        one.update(pred, gt)
    batched = SegMetrics(3)
    batched.update(torch.from_numpy(np.stack([p for p, _ in images])),
                   torch.from_numpy(np.stack([g for _, g in images]).astype(np.uint8)))
    assert batched.num_images == 3
    assert batched.compute() == pytest.approx(one.compute(), nan_ok=True)


def test_many_classes_use_wider_labels():
    # 300 classes do not fit uint8; ignore value 1000
    rng = np.random.default_rng(11)
    gt = _blocky(rng, (12, 14), 300, block=3)
    pred = np.where(rng.random(gt.shape) < 0.8, gt, (gt + 1) % 300)
    gt[0, :5] = 1000
    m = SegMetrics(300, ignore_value=1000, tolerance=1)
    m.update(pred, gt)
    r = m.compute()
    small = SegMetrics(300, ignore_value=1000, tolerance=1)
    small.update(pred.astype(np.int32), gt.astype(np.int32))
    assert r["mIoU"] > 0 and r == pytest.approx(small.compute(), nan_ok=True)
    valid = gt != 1000  # the uint16 maps' histograms count exactly
    want = np.bincount(gt[valid] * 300 + pred[valid], minlength=300 * 300).reshape(300, 300)
    assert np.array_equal(m.confusion, want)


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_input():
    m = SegMetrics(3)
    with pytest.raises(RuntimeError, match="before any update"):
        m.compute()
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((4, 5), int), np.zeros((5, 4), int))
    with pytest.raises(TypeError, match="integer label map.*float32"):
        m.update(np.zeros((4, 5), np.float32), np.zeros((4, 5), int))
    with pytest.raises(TypeError, match="integer label map.*bool"):
        m.update(np.zeros((4, 5), int), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match=r"pred holds label 3, expected labels in \[0, 3\)"):
        m.update(np.full((4, 5), 3), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match=r"pred holds label -1"):
        m.update(np.full((4, 5), -1), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match=r"gt holds labels \[7\].*ignore_value=255"):
        m.update(np.zeros((4, 5), int), np.array([[7, 255, 0, 1, 2]] * 4))
    with pytest.raises(ValueError, match="non-empty"):
        m.update(np.zeros((0, 5), int), np.zeros((0, 5), int))
    with pytest.raises(ValueError, match="non-empty"):
        m.update(np.zeros(5, int), np.zeros(5, int))
    assert m.num_images == 0 and not m.confusion.any()
    m.update(np.zeros((4, 5), int), np.full((4, 5), 255))  # all void: defined, NaN metrics
    assert math.isnan(m.compute()["mIoU"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_classes": 0}, ValueError, "num_classes must be >= 1"),
        ({"num_classes": 1, "drop_background": True}, ValueError, ">= 2 with drop_background"),
        ({"num_classes": 2.0}, TypeError, "num_classes must be an int"),
        ({"num_classes": 3, "ignore_value": 2}, ValueError, "ignore_value=2 is a class label"),
        ({"num_classes": 3, "tolerance": -1}, ValueError, "tolerance must be >= 0"),
        ({"num_classes": 3, "tolerance": 1.5}, TypeError, "tolerance must be an int"),
        ({"num_classes": 3, "metrics": ["mIoU", "Dice"]}, ValueError, "subset of"),
        ({"num_classes": 3, "class_names": ["a"]}, ValueError, "class_names has 1 entries"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        SegMetrics(**kwargs)


def test_huge_tolerance_equals_the_image_bound():
    """Every tolerance from max(H, W) - 1 on gives the same BIoU and BF1 (the morphology clamps
    it there, instead of OpenCV failing to allocate a (2 tol + 1)^2 kernel), and max(H, W) - 2
    does not: class 1 is one pixel in a corner, predicted also in the opposite corner."""
    h, w = 9, 12
    gt = np.zeros((h, w), np.int64)
    gt[0, 0] = 1
    pred = gt.copy()
    pred[-1, -1] = 1
    bound = max(h, w) - 1
    results = {}
    for tol in (bound - 1, bound, bound + 1, 10**6, 10**12):
        m = SegMetrics(2, tolerance=tol, drop_background=True, metrics=["BIoU", "BF1"])
        m.update(pred, gt)
        results[tol] = m.compute()
    for tol in (bound + 1, 10**6, 10**12):
        assert results[tol] == results[bound], tol
    assert results[bound - 1]["BIoU"] != results[bound]["BIoU"]
    assert results[bound - 1]["BF1"] != results[bound]["BF1"]
