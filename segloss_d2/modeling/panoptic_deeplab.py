"""Panoptic-DeepLab's semantic head (``detectron2.projects.panoptic_deeplab``) with segloss_d2's
losses, and what its per-pixel loss weights mean for each ``LOSS_TYPE``.

``MODEL.SEM_SEG_HEAD.NAME PanopticDeepLabSemSegLossHead`` is detectron2's
``PanopticDeepLabSemSegHead`` (decoder, extra head convolutions, inference) with ``losses``
replaced.
Panoptic-DeepLab weights the semantic loss per pixel: its target generator gives
``sem_seg_weights``, ``INPUT.SMALL_INSTANCE_WEIGHT`` (3) on the pixels of thing instances smaller
than ``INPUT.SMALL_INSTANCE_AREA`` and 1 elsewhere, and the model pads them with 0. What a weight
means depends on the loss (:func:`weighted_sem_seg_loss`):

* pixel-wise losses, ``LOSS_TYPE`` ``cross_entropy`` and ``hard_pixel_mining``: detectron2's
  behaviour, each pixel's loss multiplied by its weight before the loss's own reduction
  (``hard_pixel_mining`` equals detectron2's ``DeepLabCE(logits, labels, weights)``).
* region losses, ``naive``/``searched`` surrogates and ``wce``, ``dice``, ``lovasz``: a weight
  would scale a pixel's contribution to every soft count (weighted soft counts). Pixels of weight 0
  are exactly that, ignored; all other pixels must share one weight, which then changes nothing
  (every surrogate metric is a ratio of counts, docs/method.md §2.3). Several distinct positive
  weights are refused with a ValueError instead of being dropped silently: set
  ``INPUT.SMALL_INSTANCE_WEIGHT 1`` (or use a pixel-wise loss). The surrogates
  (segloss_d2.surrogate) do not take per-pixel weights, and weighting the boundary terms of BIoU
  and BF1 (computed on pooled soft maps) per pixel has no definition in the method.

``detectron2.projects.panoptic_deeplab`` imports ``panopticapi`` (not on PyPI) for its dataset
mapper only; :func:`import_panoptic_deeplab` imports the project without it, the mapper then
raising when used.
"""
import importlib
import sys
import types

import torch
import torch.nn.functional as F
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..losses import CrossEntropyLoss, HardPixelMiningLoss
from ..surrogate.inputs import check_logits_labels
from .heads import SegLossHeadMixin

__all__ = ["PanopticDeepLabSemSegLossHead", "import_panoptic_deeplab", "weighted_sem_seg_loss"]

_PROJECT = "detectron2.projects.panoptic_deeplab"


def _missing_panopticapi(*args, **kwargs):
    raise ModuleNotFoundError(
        "panopticapi is not installed: detectron2's PanopticDeeplabDatasetMapper reads COCO-format "
        "panoptic PNGs with panopticapi.utils.rgb2id; install panopticapi "
        "(cocodataset/panopticapi) to use it", name="panopticapi")


def import_panoptic_deeplab():
    """``detectron2.projects.panoptic_deeplab``, also where ``panopticapi`` is not installed.

    The project's ``__init__`` imports its dataset mapper, which imports ``panopticapi.utils`` for
    reading panoptic PNGs; the model, heads, config and target generator do not need it. Without
    panopticapi the project is imported with a stand-in ``panopticapi.utils.rgb2id`` that raises
    ModuleNotFoundError when the mapper calls it; the stand-in is removed from ``sys.modules``
    right after, so ``import panopticapi`` elsewhere still fails (or finds a later install).
    """
    try:
        return importlib.import_module(_PROJECT)
    except ModuleNotFoundError as e:
        if e.name not in ("panopticapi", "panopticapi.utils"):
            raise
    stand_in = types.ModuleType("panopticapi")
    stand_in.__path__ = []
    utils = types.ModuleType("panopticapi.utils")
    utils.rgb2id = _missing_panopticapi
    stand_in.utils = utils
    sys.modules.update({"panopticapi": stand_in, "panopticapi.utils": utils})
    try:
        return importlib.import_module(_PROJECT)
    finally:
        for name, module in (("panopticapi", stand_in), ("panopticapi.utils", utils)):
            if sys.modules.get(name) is module:
                del sys.modules[name]


PanopticDeepLabSemSegHead = import_panoptic_deeplab().panoptic_seg.PanopticDeepLabSemSegHead


def _check_weights(weights, labels):
    if not torch.is_tensor(weights) or not weights.is_floating_point():
        raise TypeError(f"weights must be a floating point tensor, got "
                        f"{getattr(weights, 'dtype', type(weights).__name__)}")
    if tuple(weights.shape) != tuple(labels.shape):
        raise ValueError(f"weights shape {tuple(weights.shape)} must match the labels' "
                         f"{tuple(labels.shape)}")
    if weights.numel() and not bool((torch.isfinite(weights) & (weights >= 0)).all()):
        raise ValueError("weights must be finite and >= 0, got values in "
                         f"[{weights.min().item():g}, {weights.max().item():g}]")


def _weighted_pixel_ce(loss_fn, logits, labels, weights):
    """CrossEntropyLoss / HardPixelMiningLoss with each pixel's CE multiplied by its weight."""
    check_logits_labels(logits, labels, loss_fn.num_classes, loss_fn.ignore_value)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        logits = logits.to(dtype)
        valid = (labels >= 0) & (labels < loss_fn.num_classes)
        if not bool(valid.any()):
            return logits.sum() * 0.0
        safe = torch.where(valid, labels, -100)
        pixel = F.cross_entropy(logits, safe, ignore_index=-100, reduction="none")
        pixel = (pixel * weights.to(dtype)).reshape(-1)
        if isinstance(loss_fn, HardPixelMiningLoss):  # as HardPixelMiningLoss / DeepLabCE
            if loss_fn.top_k_percent_pixels == 1.0:
                loss = pixel.mean()
            else:
                top_k = max(1, int(loss_fn.top_k_percent_pixels * pixel.numel()))
                loss = torch.topk(pixel, top_k).values.mean()
        else:  # as CrossEntropyLoss: the mean over the valid pixels
            loss = pixel.sum() / valid.sum()
        return loss_fn.loss_weight * loss


def weighted_sem_seg_loss(loss_fn, logits, labels, weights, ignore_value):
    """``loss_fn(logits, labels)`` with per-pixel weights (see the module docstring).

    Args:
        loss_fn (nn.Module): a loss of :func:`~segloss_d2.modeling.build_sem_seg_loss`.
        logits (Tensor): (N, C, H, W) at label resolution.
        labels (Tensor): (N, H, W) int64, ``ignore_value`` = void.
        weights (Tensor or None): (N, H, W) float >= 0; None = unweighted.
        ignore_value (int): the labels' void value.
    Returns:
        0-dim tensor. Pixel-wise losses (segloss_d2's CrossEntropyLoss, HardPixelMiningLoss):
        each pixel's CE times its weight, then the loss's reduction. Any other loss: the pixels of
        weight 0 are ignored, and the rest must share one weight (which leaves ratios of counts
        unchanged).
    Raises:
        ValueError: weights of the wrong shape or negative, or, for a non-pixel-wise loss, several
            distinct positive weights on the valid pixels.
    """
    if weights is None:
        return loss_fn(logits, labels)
    _check_weights(weights, labels)
    if isinstance(loss_fn, (CrossEntropyLoss, HardPixelMiningLoss)):
        return _weighted_pixel_ce(loss_fn, logits, labels, weights)
    positive = weights[(labels != ignore_value) & (weights > 0)]
    if positive.numel() and bool(positive.max() != positive.min()):
        raise ValueError(
            f"per-pixel semantic loss weights from {positive.min().item():g} to "
            f"{positive.max().item():g} cannot weight {type(loss_fn).__name__}: region losses and "
            "metric surrogates take weights 0 (ignored) and one common positive weight only. Set "
            "INPUT.SMALL_INSTANCE_WEIGHT 1 (Panoptic-DeepLab weights small instances), or use "
            "LOSS_TYPE cross_entropy or hard_pixel_mining, which weight each pixel's loss"
        )
    labels = torch.where(weights > 0, labels, torch.full_like(labels, ignore_value))
    return loss_fn(logits, labels)


@SEM_SEG_HEADS_REGISTRY.register()
class PanopticDeepLabSemSegLossHead(SegLossHeadMixin, PanopticDeepLabSemSegHead):
    """detectron2's PanopticDeepLabSemSegHead, trained with segloss_d2's ``LOSS_TYPE``.

    ``losses(predictions, targets, weights)``: predictions (N, C, h, w) logits, targets (N, H, W),
    weights (N, H, W) or None, applied as :func:`weighted_sem_seg_loss` defines per loss type.
    ``hard_pixel_mining`` keeps the fraction in ``MODEL.SEM_SEG_HEAD.HARD_PIXEL_TOP_K``, which must
    equal Panoptic-DeepLab's ``LOSS_TOP_K``.
    """

    _segloss_base = PanopticDeepLabSemSegHead

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        if head.LOSS_TYPE == "hard_pixel_mining" and head.LOSS_TOP_K != head.HARD_PIXEL_TOP_K:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.LOSS_TOP_K {head.LOSS_TOP_K} (Panoptic-DeepLab) and "
                f"HARD_PIXEL_TOP_K {head.HARD_PIXEL_TOP_K} (segloss_d2, which "
                "PanopticDeepLabSemSegLossHead uses) differ; set both to the same fraction"
            )
        return super().from_config(cfg, input_shape)

    def losses(self, predictions, targets, weights=None):
        predictions = F.interpolate(
            predictions.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
        )
        return {"loss_sem_seg": weighted_sem_seg_loss(
            self.loss_fn, predictions, targets, weights, self.ignore_value)}
