"""Validation of (logits, labels) pairs shared by the surrogate and the baseline losses."""
import torch

__all__ = ["check_logits_labels"]


def check_logits_labels(logits, labels, num_classes, ignore_value):
    """Check a segmentation loss input pair; raise a clear error instead of a silent wrong loss.

    Args:
        logits (Tensor): (N, C, H, W) floating point, finite, C == ``num_classes``.
        labels (Tensor): (N, H, W) int64 (torch.long), values in [0, C) or ``ignore_value``.

    Raises:
        TypeError for non-tensors or wrong dtypes, ValueError for shapes, values and NaN/inf.
    """
    if not torch.is_tensor(logits) or not torch.is_tensor(labels):
        raise TypeError(f"logits and labels must be tensors, got {type(logits).__name__} and "
                        f"{type(labels).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating point tensor, got {logits.dtype}")
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be int64 (torch.long), got {labels.dtype}")
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (N, C, H, W), got {tuple(logits.shape)}")
    if labels.dim() != 3:
        raise ValueError(f"labels must have shape (N, H, W), got {tuple(labels.shape)}")
    n, c, h, w = logits.shape
    if c != num_classes:
        raise ValueError(f"logits have {c} channels but num_classes is {num_classes}")
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits "
                         f"{tuple(logits.shape)}; expected ({n}, {h}, {w}) (resize the logits "
                         f"to the label resolution first)")
    if labels.device != logits.device:
        raise ValueError(f"logits on {logits.device} but labels on {labels.device}")
    # One cheap vectorized reduction: min and max are both finite iff every value is (NaN
    # propagates through both). A float64 sum here cost as much as the whole cross-entropy.
    if logits.numel():
        low, high = torch.aminmax(logits.detach())
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            bad = "NaN" if bool(torch.isnan(low) | torch.isnan(high)) else "inf"
            raise ValueError(f"logits contain {bad} values")
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_value is not None:
        bad &= labels != ignore_value
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:10].tolist()
        raise ValueError(f"labels contain values {values} outside [0, {num_classes}) that are "
                         f"not the ignore value {ignore_value}")
