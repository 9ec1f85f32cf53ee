"""SurrogateLoss: the Auto Seg-Loss training loss, ``loss_weight * Σ_k w_k (1 - surrogate_k)``."""
import copy

import torch
from torch import nn

from .boundary import relaxed_bf1
from .inputs import check_logits_labels
from .labels import LabelInfo
from .params import SurrogateParams
from .region import relaxed_biou, relaxed_fwiou, relaxed_gacc, relaxed_macc, relaxed_miou
from .stats import check_stats, reducer

__all__ = ["SurrogateLoss"]


class SurrogateLoss(nn.Module):
    """Weighted sum of searched (or naive) metric surrogates as one loss module.

    Args:
        params (SurrogateParams): metrics, weights and curves, e.g. ``load_params("voc_miou")``.
        num_classes (int): C.
        ignore_value (int): label value of void pixels (excluded; default 255).
        tolerance (int): boundary tolerance in pixels for BIoU/BF1 (square of side 2 t + 1).
        drop_background (bool): as the reference's ``drop_bg``: build the BIoU trimap from the
            boundaries of classes >= 1 only, and leave class 0 out of the BF1 mean. It does not
            change mIoU/fwIoU/mACC/pACC (nor the BIoU mean, which stays over all C classes).
        present_classes_only (bool): average mIoU/BIoU/mACC over the classes present in the batch's
            ground truth instead of all C classes (a deviation from the reference, off by default).
            "The batch" is the one of the statistics scope: the global batch under ``global``,
            each image under ``image``.
        loss_weight (float): overall factor.
        stats (str): statistics scope (docs/method.md §2.5), one of
            :data:`~segloss_d2.surrogate.stats.STATS_SCOPES`:

            - ``"local"`` (default, the reference): per-class sums over this process's mini-batch;
            - ``"global"``: the per-class label counts and soft sums (intersections, unions, BF1's
              boundary sums) are all-reduced over the default ``torch.distributed`` group in the
              forward pass, so every process gets the loss of one process holding the
              concatenated global batch; present classes, BF1's classes and empty means are
              decided on the global batch. Backward all-reduces (sums) the gradients of those
              sums: each process's logits get W times the one-process gradient of its slice
              (W = world size), which DDP's gradient averaging turns into exactly the
              one-process gradient of the parameters. Same as ``local`` without an initialized
              process group or with one process. Every process must call the loss in step
              (it holds collectives).
            - ``"image"``: every surrogate is computed on each image alone (its own present
              classes, boundaries and empty means), then averaged over the images where it is
              defined (an image where it is undefined, e.g. BF1 without a ground-truth boundary,
              is left out of that metric's mean; no image: the term is skipped).

    The control points are configuration, not state: plain Python floats (``control_points``,
    per metric a list of flat curves), so ``state_dict`` is empty (a checkpoint never overrides
    the configured params), ``.to()``/``.half()`` cannot round them, and every tensor is created
    on the device of the inputs. Inputs: logits (N, C, H, W) float at label resolution (computed
    in float32, also under autocast), labels (N, H, W) int64 in [0, C) ∪ {ignore_value}.
    Output: a 0-dim float32 tensor.

    Undefined terms (docs/method.md §2.3): a metric that counts no pixel of the batch (mIoU, fwIoU,
    mACC, pACC: no valid pixel; BIoU: no valid pixel inside the trimap; BF1: no ground-truth
    boundary of a kept class) has no value, and its term contributes 0 with zero gradient. So a
    batch whose every pixel is ignored gives a loss of exactly 0 with zero gradient for every
    metric, on every device and path: there is nothing to learn from it.
    """

    def __init__(self, params, num_classes, ignore_value=255, tolerance=5, drop_background=False,
                 present_classes_only=False, loss_weight=1.0, stats="local"):
        super().__init__()
        if not isinstance(params, SurrogateParams):
            raise TypeError(f"params must be a SurrogateParams (see load_params), got "
                            f"{type(params).__name__}")
        # params are a mutable dataclass, validated on construction: re-validate a copy in case
        # it was edited since (validate normalizes fields, so the caller's object stays as is)
        params = copy.copy(params)
        params.validate("SurrogateLoss params")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
        if ignore_value is not None and 0 <= ignore_value < num_classes:
            raise ValueError(f"ignore_value {ignore_value} collides with a class id in "
                             f"[0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.tolerance = tolerance
        self.drop_background = bool(drop_background)
        self.present_classes_only = bool(present_classes_only)
        self.loss_weight = float(loss_weight)
        self.stats = check_stats(stats, "SurrogateLoss stats (statistics scope)")
        self.metrics = list(params.metrics)
        self.weights = list(params.weights)
        self.num_pieces = list(params.num_pieces)
        # per metric: its curves' flat control points (validate returns fresh lists of floats)
        self.control_points = params.control_points

    def extra_repr(self):
        terms = " + ".join(f"{w:g}*(1-{m}~)" for m, w in zip(self.metrics, self.weights))
        return (f"{self.loss_weight:g} * [{terms}], num_classes={self.num_classes}, "
                f"ignore_value={self.ignore_value}, tolerance={self.tolerance}, "
                f"drop_background={self.drop_background}, "
                f"present_classes_only={self.present_classes_only}, stats={self.stats}")

    def _surrogate(self, metric, curves, logits, probs, labels, info):
        # the region surrogates also take the logits (probs = softmax(logits)): on the CPU
        # kernels their backward then includes the softmax's (docs/method.md §2.6)
        if metric == "mIoU":
            return relaxed_miou(probs, labels, curves[0], curves[1], self.present_classes_only,
                                info=info, logits=logits)
        if metric == "fwIoU":
            return relaxed_fwiou(probs, labels, curves[0], curves[1], info=info, logits=logits)
        if metric == "BIoU":
            return relaxed_biou(probs, labels, curves[0], curves[1], self.tolerance,
                                self.drop_background, self.present_classes_only, info=info,
                                logits=logits)
        if metric == "mACC":
            return relaxed_macc(probs, labels, curves[0], self.present_classes_only, info=info,
                                logits=logits)
        if metric == "pACC":
            return relaxed_gacc(probs, labels, curves[0], info=info, logits=logits)
        return relaxed_bf1(probs, labels, curves, self.tolerance, self.drop_background, info=info)

    def surrogates(self, logits, labels):
        """Per-metric surrogate values {metric: 0-dim tensor or None (undefined this batch)}."""
        check_logits_labels(logits, labels, self.num_classes, self.ignore_value)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
            logits = logits.to(dtype)
            probs = torch.softmax(logits, dim=1)
            if self.stats == "image":
                return self._per_image(logits, probs, labels), probs
            info = LabelInfo(labels, self.num_classes, reducer(self.stats))
            out = {}
            for metric, curves in zip(self.metrics, self.control_points):
                out[metric] = self._surrogate(metric, curves, logits, probs, labels, info)
        return out, probs

    def _per_image(self, logits, probs, labels):
        """``image`` statistics: every surrogate on each image alone, then the mean over the
        images where it is defined (None where it is defined on none)."""
        values = {metric: [] for metric in self.metrics}
        # one split: its backward concatenates the per-image gradients in one pass
        for logits_i, probs_i, labels_i in zip(logits.split(1), probs.split(1),
                                               labels.split(1)):
            info = LabelInfo(labels_i, self.num_classes)
            for metric, curves in zip(self.metrics, self.control_points):
                value = self._surrogate(metric, curves, logits_i, probs_i, labels_i, info)
                if value is not None:
                    values[metric].append(value)
        return {metric: torch.stack(v).mean() if v else None for metric, v in values.items()}

    def forward(self, logits, labels):
        """Loss ``loss_weight * Σ_k w_k (1 - surrogate_k)``; undefined terms contribute 0."""
        values, probs = self.surrogates(logits, labels)
        terms = [weight * (1.0 - values[metric])
                 for metric, weight in zip(self.metrics, self.weights)
                 if values[metric] is not None]
        if not terms:  # keep the graph connected, with zero gradient
            return probs.sum() * 0.0
        return self.loss_weight * torch.stack(terms).sum()
