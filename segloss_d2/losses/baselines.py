"""Hand-crafted segmentation losses (paper Table 1 baselines), one call signature for all.

Every loss is an ``nn.Module`` built as
``Loss(num_classes, ignore_value=255, loss_weight=1.0, ...)``
and called as ``loss(logits, labels)`` with logits (N, C, H, W) float at label resolution and
labels (N, H, W) int64 in [0, C) ∪ {ignore_value}; it returns a 0-dim float32 tensor (float64 for
float64 logits) and is computed in float32 also under autocast. A batch without any valid pixel
gives a loss of 0 with zero gradient, never NaN.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..surrogate.inputs import check_logits_labels

__all__ = [
    "CrossEntropyLoss",
    "WeightedCrossEntropyLoss",
    "DiceLoss",
    "LovaszSoftmaxLoss",
    "HardPixelMiningLoss",
]


class _SegLoss(nn.Module):
    def __init__(self, num_classes, ignore_value=255, loss_weight=1.0):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = float(loss_weight)

    def forward(self, logits, labels):
        check_logits_labels(logits, labels, self.num_classes, self.ignore_value)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
            logits = logits.to(dtype)
            valid = (labels >= 0) & (labels < self.num_classes)
            if not bool(valid.any()):
                return logits.sum() * 0.0
            return self.loss_weight * self._loss(logits, labels, valid)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, ignore_value={self.ignore_value}, "
                f"loss_weight={self.loss_weight:g}")


class CrossEntropyLoss(_SegLoss):
    """Pixel-wise softmax cross-entropy averaged over the valid pixels."""

    def _loss(self, logits, labels, valid):
        safe = torch.where(valid, labels, -100)
        return F.cross_entropy(logits, safe, ignore_index=-100)


class WeightedCrossEntropyLoss(_SegLoss):
    """Class-weighted cross-entropy (WCE), ``Σ_i w_{y_i} CE_i / Σ_i w_{y_i}`` over valid pixels.

    Args:
        class_weights (sequence of C floats or None): fixed weights. If None (default), weights
            are the inverse pixel frequency of each class in the batch, ``w_c = 1 / n_c``, so the
            loss is the mean over the present classes of each class's mean pixel CE (every present
            class counts equally, however small).
    """

    def __init__(self, num_classes, ignore_value=255, loss_weight=1.0, class_weights=None):
        super().__init__(num_classes, ignore_value, loss_weight)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float64)
            if class_weights.shape != (num_classes,) or not bool(
                    (torch.isfinite(class_weights) & (class_weights >= 0)).all()):
                raise ValueError(f"class_weights must be {num_classes} finite non-negative "
                                 f"numbers, got {class_weights.tolist()}")
            self.register_buffer("class_weights", class_weights)
        else:
            self.class_weights = None

    def _loss(self, logits, labels, valid):
        safe = torch.where(valid, labels, -100)
        if self.class_weights is not None:
            weight = self.class_weights.to(logits.dtype)
        else:
            counts = torch.bincount(labels[valid], minlength=self.num_classes).to(logits.dtype)
            weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1), 0.0)
        if not bool((weight[labels[valid]] > 0).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, safe, weight=weight, ignore_index=-100)


class DiceLoss(_SegLoss):
    """Multi-class soft Dice (Milletari et al., 2016) on softmax probabilities.

    ``1 - (1/C) Σ_c (2 Σ p_c y_c + smooth) / (Σ p_c^e + Σ y_c^e + smooth)`` with sums over the valid
    pixels of the whole batch, exponent ``e`` (2 as in V-Net and mmseg) and ``smooth`` 1.
    """

    def __init__(self, num_classes, ignore_value=255, loss_weight=1.0, smooth=1.0, exponent=2):
        super().__init__(num_classes, ignore_value, loss_weight)
        self.smooth = float(smooth)
        self.exponent = exponent

    def _loss(self, logits, labels, valid):
        probs = torch.softmax(logits, dim=1)
        m = valid.unsqueeze(1).to(probs.dtype)
        safe = torch.where(valid, labels, 0)
        inter = probs.new_zeros(self.num_classes).index_add(
            0, safe.reshape(-1), (probs.gather(1, safe.unsqueeze(1)) * m).reshape(-1))
        counts = torch.bincount(labels[valid], minlength=self.num_classes).to(probs.dtype)
        p_sum = (probs.pow(self.exponent) * m).sum(dim=(0, 2, 3))
        dice = (2 * inter + self.smooth) / (p_sum + counts + self.smooth)
        return 1 - dice.mean()


def _lovasz_grad(gt_sorted):
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors (Berman 2018)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


class LovaszSoftmaxLoss(_SegLoss):
    """Lovász-Softmax (Berman et al., CVPR 2018) over the whole batch (``per_image=False``).

    Averages the Lovász hinge of each class's errors ``|y_c - p_c|`` over the valid pixels; the
    classes are those present in the batch's labels (``classes="present"``, the paper's default),
    or all C with ``classes="all"``.
    """

    def __init__(self, num_classes, ignore_value=255, loss_weight=1.0, classes="present"):
        super().__init__(num_classes, ignore_value, loss_weight)
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
        self.classes = classes

    def _loss(self, logits, labels, valid):
        probs = torch.softmax(logits, dim=1).permute(0, 2, 3, 1)[valid]  # (P, C)
        target = labels[valid]
        losses = []
        for c in range(self.num_classes):
            fg = (target == c).to(probs.dtype)
            if self.classes == "present" and not bool(fg.any()):
                continue
            errors = (fg - probs[:, c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
        return torch.stack(losses).mean()


class HardPixelMiningLoss(_SegLoss):
    """Cross-entropy over the hardest pixels, as detectron2's DeepLab ``DeepLabCE``.

    Per-pixel CE (ignored pixels count as 0), then the mean of the top ``top_k_percent_pixels``
    fraction of all N·H·W pixel losses (the count includes ignored pixels, as in detectron2);
    1.0 gives plain CE over all pixels.
    """

    def __init__(self, num_classes, ignore_value=255, loss_weight=1.0, top_k_percent_pixels=0.2):
        super().__init__(num_classes, ignore_value, loss_weight)
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ValueError(f"top_k_percent_pixels must be in (0, 1], got "
                             f"{top_k_percent_pixels!r}")
        self.top_k_percent_pixels = float(top_k_percent_pixels)

    def _loss(self, logits, labels, valid):
        safe = torch.where(valid, labels, -100)
        pixel_losses = F.cross_entropy(logits, safe, ignore_index=-100, reduction="none")
        pixel_losses = pixel_losses.reshape(-1)
        if self.top_k_percent_pixels == 1.0:
            return pixel_losses.mean()
        top_k = max(1, int(self.top_k_percent_pixels * pixel_losses.numel()))
        return torch.topk(pixel_losses, top_k).values.mean()
