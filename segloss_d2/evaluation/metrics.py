"""SegMetrics: exact, dataset-level semantic segmentation metrics (numpy + OpenCV, no detectron2).

Implements docs/method.md §1.2-1.4, i.e. the numbers of the reference evaluator
``mmseg/core/evaluation/metrics_fast.py`` of Auto Seg-Loss, plus Boundary IoU (Cheng et al., 2021):

* ``mIoU``, ``fwIoU``, ``mACC``, ``pACC``: from the (C, C) confusion matrix of valid pixels
  (gt != ignore), accumulated over all images. Means are NaN-means: a class whose ratio is 0/0
  is skipped. ``fwIoU = sum_c freq_c * IoU_c`` over classes with GT pixels (detectron2's
  definition; the reference's ``nanmean(freq * IoU) * C`` equals it unless some class is absent
  from both GT and prediction, in which case the reference rescales by C / #classes-with-IoU).
* ``BIoU``: IoU from the confusion matrix of the valid pixels inside the trimap
  ``T = Dil_tol(union of inner GT boundaries)``; with ``drop_background`` the trimap uses foreground
  boundaries only, and the mean still runs over all classes (background included), as the reference.
* ``BF1``: per class, ``n_pred`` / ``n_gt`` inner boundary pixels of prediction / GT and the matches
  ``match_pred = |BD(P_c) & Dil_tol(BD(G_c))|``, ``match_gt = |Dil_tol(BD(P_c)) & BD(G_c)|``, summed
  over the dataset; ``P = match_pred / (n_pred + 1e-8)``, ``R = match_gt / n_gt``,
  ``F1 = 2PR / (P + R + 1e-8)`` (NaN for classes without GT boundary). With ``drop_background`` the
  mean and the per-class values exclude class 0.
* ``BoundaryIoU``: per class, band = mask minus its erosion by a square of radius
  ``d = max(1, round(0.02 * image diagonal))``, pixels outside the image counting as background;
  intersection and union of the GT and prediction bands are summed over the dataset; mean over
  classes with a non-empty union. Ignore pixels: the GT mask of a class excludes them (so a class
  pixel next to void is on its GT band), the prediction mask is the full predicted map, and the
  counts only include valid pixels, like every other metric here.

Boundaries (docs/method.md §1.3): ``BD(y)`` is the inner boundary, a class pixel with at least one
8-neighbour inside the image of another label (void counts as another label for GT); the image
border is not a boundary. Prediction boundaries are taken on the full predicted map, void area
included. Dilations are squares of radius ``tolerance`` (``Dil_d = MaxPool_{2d+1}``).
"""
from collections.abc import Mapping

import cv2
import numpy as np

from ..metric_names import ALIASES, METRICS, canonical_metric
from .boundary import compact_dtype, dilate_mask, label_boundary

__all__ = ["SegMetrics", "ALL_METRICS"]

ALL_METRICS = METRICS + ("BoundaryIoU",)
_CONFUSION_METRICS = frozenset(("mIoU", "fwIoU", "mACC", "pACC"))
_STATE_KEYS = ("num_images", "confusion", "trimap_confusion", "bf1_counts", "boundary_iou_counts")
_BOUNDARY_IOU_RATIO = 0.02


def _nanmean(values):
    """np.nanmean without the warning on all-NaN input (which gives NaN)."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _ratio(num, den):
    """Element-wise num / den as float64, NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


# cv2.calcHist counts in float32, exact up to 2**24 per bin: larger images use np.bincount
_HIST_EXACT_PIXELS = 2**24


def _histogram(labels, mask, num_labels):
    """(num_labels,) int64 counts of the values of ``labels`` where ``mask`` (None: everywhere);
    values >= num_labels are dropped.

    Args:
        labels (np.ndarray): (H, W) uint8 or uint16 label map.
        mask (np.ndarray or None): (H, W) bool or uint8 map.
        num_labels (int): number of bins.
    """
    if labels.size >= _HIST_EXACT_PIXELS:
        values = labels.ravel() if mask is None else labels[mask.view(bool)]
        return np.bincount(values, minlength=num_labels)[:num_labels].astype(np.int64)
    # one pass without gathering the selected pixels (bins are exact: one per integer value)
    mask = None if mask is None else mask.view(np.uint8)
    hist = cv2.calcHist([labels], [0], mask, [num_labels], [0, num_labels])
    return hist.reshape(-1).astype(np.int64)


def _joint_histogram(rows, cols, mask, num_rows, num_cols):
    """(num_rows, num_cols) int64 counts of the pairs ``(rows, cols)`` where ``mask`` (None:
    everywhere): a confusion matrix; pairs out of range are dropped.

    Args:
        rows, cols (np.ndarray): (H, W) uint8 or uint16 label maps.
        mask (np.ndarray or None): (H, W) bool or uint8 map.
        num_rows, num_cols (int): number of row / column labels.
    """
    if rows.size >= _HIST_EXACT_PIXELS:
        index = rows.astype(np.intp) * num_cols + cols
        index = index.ravel() if mask is None else index[mask.view(bool)]
        counts = np.bincount(index, minlength=num_rows * num_cols)[: num_rows * num_cols]
        return counts.reshape(num_rows, num_cols).astype(np.int64)
    mask = None if mask is None else mask.view(np.uint8)
    hist = cv2.calcHist([rows, cols], [0, 1], mask, [num_rows, num_cols],
                        [0, num_rows, 0, num_cols])
    return hist.astype(np.int64)


def _points_by_label(mask, labels, num_labels):
    """The (ys, xs) coordinates of the pixels selected by ``mask``, grouped by their label in
    ``labels``: a list of ``num_labels`` pairs of int arrays (empty for absent labels)."""
    flat = np.flatnonzero(mask)  # several times faster than np.nonzero on a 2-D map
    lab = labels.ravel()[flat]
    order = np.argsort(lab, kind="stable")  # a radix sort for 8/16-bit labels
    ys, xs = np.divmod(flat[order], mask.shape[1])
    bounds = np.searchsorted(lab[order], np.arange(num_labels + 1))
    return [(ys[a:b], xs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _near(ays, axs, bys, bxs, window, radius):
    """How many of the points ``a`` inside ``window`` = (y0, y1, x0, x1) have a point ``b`` (of
    those inside it) within chessboard distance ``radius``: an integral image of ``b`` over the
    window, four lookups per ``a``."""
    y0, y1, x0, x1 = window
    a_in = (ays >= y0) & (ays < y1) & (axs >= x0) & (axs < x1)
    b_in = (bys >= y0) & (bys < y1) & (bxs >= x0) & (bxs < x1)
    h, w = y1 - y0, x1 - x0
    b_mask = np.zeros((h, w), dtype=np.uint8)
    b_mask[bys[b_in] - y0, bxs[b_in] - x0] = 1
    table = cv2.integral(b_mask, sdepth=cv2.CV_32S)  # (h + 1, w + 1)
    ys, xs = ays[a_in] - y0, axs[a_in] - x0
    top, bottom = np.maximum(ys - radius, 0), np.minimum(ys + radius + 1, h)
    left, right = np.maximum(xs - radius, 0), np.minimum(xs + radius + 1, w)
    inside = (table[bottom, right] - table[top, right] - table[bottom, left]
              + table[top, left])
    return int(np.count_nonzero(inside))


def _to_numpy(x, name):
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer label map (e.g. the argmax over classes), got dtype "
            f"{x.dtype}"
        )
    return x


class SegMetrics:
    """Accumulates mIoU, fwIoU, mACC, pACC, BIoU, BF1 and Boundary IoU over a dataset.

    Example::

        m = SegMetrics(19)
        for pred, gt in data:        # (H, W) integer label maps
            m.update(pred, gt)
        m.compute()["mIoU"]          # percent

    The state is a few (C, C) / (k, C) int64 arrays; ``merge`` adds another accumulator's state,
    so per-process accumulators can be gathered and merged for distributed evaluation.
    """

    def __init__(
        self,
        num_classes,
        ignore_value=255,
        tolerance=5,
        drop_background=False,
        metrics=None,
        class_names=None,
    ):
        """
        Args:
            num_classes (int): C >= 1 (>= 2 with ``drop_background``); labels are 0..C-1.
            ignore_value (int): GT label of void pixels; must not be a class label.
            tolerance (int): >= 0, radius in pixels of the square dilation of BIoU's trimap and of
                BF1's matching (the reference's ``radius`` and ``tol``, both 5).
            drop_background (bool): class 0 is background (PASCAL VOC): the BIoU trimap is built
                from foreground boundaries and BF1 is over the foreground classes.
            metrics (iterable[str] or None): subset of :data:`ALL_METRICS` to compute; None for all.
                Unrequested metrics cost nothing in ``update``.
            class_names (sequence[str] or None): C names for the per-class keys; default "0".."C-1".
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError(f"num_classes must be an int, got {num_classes!r}")
        if num_classes < (2 if drop_background else 1):
            raise ValueError(
                f"num_classes must be >= {2 if drop_background else 1}"
                f"{' with drop_background=True' if drop_background else ''}, got {num_classes}"
            )
        if isinstance(ignore_value, bool) or not isinstance(ignore_value, (int, np.integer)):
            raise TypeError(f"ignore_value must be an int, got {ignore_value!r}")
        if 0 <= ignore_value < num_classes:
            raise ValueError(
                f"ignore_value={ignore_value} is a class label; it must lie outside [0, "
                f"{num_classes})"
            )
        metrics_arg = metrics
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)):
            raise TypeError(f"tolerance must be an int number of pixels, got {tolerance!r}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        metrics = ALL_METRICS if metrics is None else tuple(metrics)
        try:  # one vocabulary: the paper's spellings (mAcc, gAcc, FWIoU) are accepted
            metrics = tuple(m if m == "BoundaryIoU" else canonical_metric(m) for m in metrics)
        except ValueError:
            metrics = ()
        if not metrics:
            raise ValueError(f"metrics must be a non-empty subset of {ALL_METRICS} (aliases "
                             f"{sorted(ALIASES)} accepted), got {metrics_arg!r}")
        if class_names is None:
            class_names = [str(i) for i in range(num_classes)]
        elif len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries, expected num_classes={num_classes}"
            )
        self.num_classes = int(num_classes)
        self.ignore_value = int(ignore_value)
        self.tolerance = int(tolerance)
        self.drop_background = bool(drop_background)
        self.metrics = tuple(m for m in ALL_METRICS if m in metrics)
        self.class_names = [str(n) for n in class_names]
        # labels are stored compactly with void = C; the dtype keeps one spare value as sentinel
        self._dtype = compact_dtype(self.num_classes + 1)
        self.reset()

    # ------------------------------------------------------------------------------------------
    # state
    def reset(self):
        """Clears the accumulated state."""
        c = self.num_classes
        self.num_images = 0
        self.confusion = np.zeros((c, c), dtype=np.int64)  # rows: GT, columns: prediction
        self.trimap_confusion = np.zeros((c, c), dtype=np.int64)
        self.bf1_counts = np.zeros((4, c), dtype=np.int64)  # n_pred, n_gt, match_pred, match_gt
        self.boundary_iou_counts = np.zeros((2, c), dtype=np.int64)  # intersection, union

    def state_dict(self):
        """The accumulated state as a dict of numpy arrays (copies), e.g. for ``all_gather``."""
        return {k: np.array(getattr(self, k), dtype=np.int64, copy=True) for k in _STATE_KEYS}

    def merge(self, other):
        """Adds another accumulator's state to this one (distributed evaluation).

        Args:
            other (SegMetrics or Mapping[str, np.ndarray]): an accumulator with the same settings,
                or its :meth:`state_dict`.
        Returns:
            self
        """
        if isinstance(other, SegMetrics):
            mine = (self.num_classes, self.ignore_value, self.tolerance, self.drop_background)
            theirs = (other.num_classes, other.ignore_value, other.tolerance, other.drop_background)
            if mine != theirs:
                raise ValueError(
                    "cannot merge SegMetrics with different settings (num_classes, ignore_value, "
                    f"tolerance, drop_background): {mine} vs {theirs}"
                )
            other = other.state_dict()
        elif not isinstance(other, Mapping):
            raise TypeError(f"merge expects a SegMetrics or its state_dict(), got {type(other)}")
        missing = [k for k in _STATE_KEYS if k not in other]
        if missing:
            raise ValueError(f"state is missing {missing}")
        for key in _STATE_KEYS:
            value = np.asarray(other[key])
            mine = getattr(self, key)
            if value.shape != np.shape(mine):
                raise ValueError(
                    f"state {key!r} has shape {value.shape}, expected {np.shape(mine)}"
                )
            merged = mine + value.astype(np.int64)
            setattr(self, key, int(merged) if key == "num_images" else merged)
        return self

    # ------------------------------------------------------------------------------------------
    # accumulation
    def update(self, pred, gt):
        """Adds one image, or a batch of images, to the statistics.

        Args:
            pred: (H, W) or (N, H, W) integer numpy array or torch tensor (any device), predicted
                labels in [0, C).
            gt: same shape, integer, GT labels in [0, C) or ``ignore_value``.
        """
        pred = _to_numpy(pred, "pred")
        gt = _to_numpy(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"pred has shape {pred.shape} but gt has shape {gt.shape}")
        if pred.ndim not in (2, 3) or pred.size == 0:
            raise ValueError(
                f"expected non-empty (H, W) or (N, H, W) label maps, got shape {pred.shape}"
            )
        pred, gt = self._compact(pred, gt)
        for p, g in zip(pred.reshape((-1,) + pred.shape[-2:]), gt.reshape((-1,) + gt.shape[-2:])):
            self._update_image(p, g)
            self.num_images += 1

    def _compact(self, pred, gt):
        """Validates the label ranges; returns both maps in the compact dtype with void = C."""
        c = self.num_classes
        pmin, pmax = int(pred.min()), int(pred.max())
        if pmin < 0 or pmax >= c:
            bad = pmin if pmin < 0 else pmax
            raise ValueError(f"pred holds label {bad}, expected labels in [0, {c})")
        is_void = gt == self.ignore_value
        gmin, gmax = int(gt.min()), int(gt.max())
        if gmin < 0 or gmax >= c:
            bad = ((gt < 0) | (gt >= c)) & ~is_void
            if bad.any():
                values = np.unique(gt[bad])[:5].tolist()
                raise ValueError(
                    f"gt holds labels {values}, expected labels in [0, {c}) or "
                    f"ignore_value={self.ignore_value}"
                )
        gt = np.where(is_void, c, gt).astype(self._dtype)
        return pred.astype(self._dtype), gt

    def _update_image(self, pred, gt):
        c = self.num_classes
        want = set(self.metrics)
        # confusion of (gt, pred); void GT (gt == C) is out of the rows' range and dropped
        if want & _CONFUSION_METRICS:
            self.confusion += _joint_histogram(gt, pred, None, c, c)
        valid = gt != c
        if want & {"BIoU", "BF1"}:
            gt_edge = label_boundary(gt, 1) & valid
            pred_edge = label_boundary(pred, 1)
        if "BIoU" in want:
            seeds = gt_edge & (gt != 0) if self.drop_background else gt_edge
            trimap = dilate_mask(seeds, self.tolerance)
            self.trimap_confusion += _joint_histogram(gt, pred, trimap, c, c)
        if "BF1" in want:
            self.bf1_counts += self._bf1_counts(pred, gt, pred_edge, gt_edge)
        if "BoundaryIoU" in want:
            self.boundary_iou_counts += self._boundary_iou_counts(pred, gt, valid)

    def _bf1_counts(self, pred, gt, pred_edge, gt_edge):
        """(4, C) counts n_pred, n_gt, match_pred, match_gt of one image.

        Per class, a boundary pixel matches if the other side's boundary has a pixel in the
        square of radius ``tolerance`` around it (the square dilation of §1.3), counted with an
        integral image of the window where matches are possible (both boundaries' bounding boxes
        grown by the tolerance, intersected): four lookups per boundary pixel, whatever the
        tolerance."""
        c, tol = self.num_classes, self.tolerance
        counts = np.zeros((4, c), dtype=np.int64)
        pred_points = _points_by_label(pred_edge, pred, c)
        gt_points = _points_by_label(gt_edge, gt, c)
        counts[0] = [len(ys) for ys, _ in pred_points]
        counts[1] = [len(ys) for ys, _ in gt_points]
        height, width = gt.shape
        for k in np.flatnonzero((counts[0] > 0) & (counts[1] > 0)):
            (pys, pxs), (gys, gxs) = pred_points[k], gt_points[k]
            # every pixel that can match (or be matched) lies in both boxes grown by tol
            y0 = max(pys.min(), gys.min()) - tol
            y1 = min(pys.max(), gys.max()) + 1 + tol
            x0 = max(pxs.min(), gxs.min()) - tol
            x1 = min(pxs.max(), gxs.max()) + 1 + tol
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
            if y0 >= y1 or x0 >= x1:
                continue
            window = (y0, y1, x0, x1)
            counts[2, k] = _near(pys, pxs, gys, gxs, window, tol)
            counts[3, k] = _near(gys, gxs, pys, pxs, window, tol)
        return counts

    def _boundary_iou_counts(self, pred, gt, valid):
        """(2, C) intersection and union of the Boundary IoU bands of one image."""
        c = self.num_classes
        height, width = gt.shape
        radius = max(1, int(round(_BOUNDARY_IOU_RATIO * np.hypot(height, width))))
        gt_band = label_boundary(gt, radius, border_is_boundary=True)
        pred_band = label_boundary(pred, radius, border_is_boundary=True) & valid
        both = gt_band & pred_band & (gt == pred)
        # void GT pixels have label C: out of the histogram's range, dropped
        n_gt = _histogram(gt, gt_band, c)
        n_pred = _histogram(pred, pred_band, c)
        inter = _histogram(gt, both, c)
        return np.stack([inter, n_gt + n_pred - inter])

    # ------------------------------------------------------------------------------------------
    # results
    def per_class(self):
        """Per-class ratios in [0, 1] (NaN where undefined), as a dict of (C,) float64 arrays with
        keys among ``IoU, ACC, BIoU, BF1, BoundaryIoU`` (only those of the requested metrics).
        With ``drop_background`` the background entry of BF1 is NaN (excluded)."""
        self._check_updated()
        out = {}
        tp = np.diag(self.confusion)
        if {"mIoU", "fwIoU"} & set(self.metrics):
            out["IoU"] = _ratio(tp, self.confusion.sum(0) + self.confusion.sum(1) - tp)
        if "mACC" in self.metrics:
            out["ACC"] = _ratio(tp, self.confusion.sum(1))
        if "BIoU" in self.metrics:
            tp = np.diag(self.trimap_confusion)
            union = self.trimap_confusion.sum(0) + self.trimap_confusion.sum(1) - tp
            out["BIoU"] = _ratio(tp, union)
        if "BF1" in self.metrics:
            n_pred, n_gt, match_pred, match_gt = self.bf1_counts.astype(np.float64)
            precision = match_pred / (n_pred + 1e-8)
            recall = _ratio(match_gt, n_gt)
            out["BF1"] = 2 * precision * recall / (precision + recall + 1e-8)
            if self.drop_background:
                out["BF1"][0] = np.nan
        if "BoundaryIoU" in self.metrics:
            out["BoundaryIoU"] = _ratio(*self.boundary_iou_counts)
        return out

    def compute(self):
        """The metrics in percent.

        Returns:
            dict[str, float]: the requested summary metrics (``mIoU, fwIoU, mACC, pACC, BIoU, BF1,
            BoundaryIoU``) followed by per-class values ``IoU-<name>``, ``ACC-<name>``,
            ``BIoU-<name>``, ``BF1-<name>``, ``BoundaryIoU-<name>`` (NaN for undefined classes; with
            ``drop_background`` no ``BF1`` entry for class 0).
        """
        per_class = self.per_class()
        summary = {}
        if "mIoU" in self.metrics:
            summary["mIoU"] = _nanmean(per_class["IoU"])
        if "fwIoU" in self.metrics:
            gt_pixels = self.confusion.sum(1)
            present = gt_pixels > 0
            freq = _ratio(gt_pixels, gt_pixels.sum())
            summary["fwIoU"] = (
                float(np.sum(freq[present] * per_class["IoU"][present]))
                if present.any() else float("nan")
            )
        if "mACC" in self.metrics:
            summary["mACC"] = _nanmean(per_class["ACC"])
        if "pACC" in self.metrics:
            summary["pACC"] = float(_ratio(np.trace(self.confusion), self.confusion.sum()))
        if "BIoU" in self.metrics:
            summary["BIoU"] = _nanmean(per_class["BIoU"])
        if "BF1" in self.metrics:
            summary["BF1"] = _nanmean(per_class["BF1"])
        if "BoundaryIoU" in self.metrics:
            summary["BoundaryIoU"] = _nanmean(per_class["BoundaryIoU"])
        results = {k: 100.0 * v for k, v in summary.items()}
        for key, values in per_class.items():
            for i, name in enumerate(self.class_names):
                if key == "BF1" and self.drop_background and i == 0:
                    continue
                results[f"{key}-{name}"] = 100.0 * float(values[i])
        return results

    def _check_updated(self):
        if self.num_images == 0:
            raise RuntimeError("SegMetrics.compute() called before any update()")

    def __repr__(self):
        return (
            f"SegMetrics(num_classes={self.num_classes}, ignore_value={self.ignore_value}, "
            f"tolerance={self.tolerance}, drop_background={self.drop_background}, "
            f"metrics={self.metrics}, images={self.num_images})"
        )
