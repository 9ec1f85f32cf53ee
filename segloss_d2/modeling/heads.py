"""SEM_SEG_HEADS_REGISTRY entries: detectron2's semantic heads with segloss_d2's losses.

``make_segloss_head(head_cls)`` makes the segloss variant of any semantic head that follows
detectron2's convention (``layers(features)`` gives logits at feature stride, ``losses(predictions,
targets)`` upsamples them by ``common_stride`` and returns ``{"loss_sem_seg": scalar}``, targets
(N, H, W) with ``IGNORE_VALUE``): the unmodified head with only ``losses`` replaced, taking the loss
as the constructor argument ``loss_fn`` (built by :func:`build_sem_seg_loss` from ``LOSS_TYPE``, or
given by the search for each candidate) and registered under a new name. Inference is unchanged,
so a checkpoint of the variant loads into the stock head and vice versa.

Registered here: ``DeepLabV3PlusSegLossHead`` and ``SemSegFPNSegLossHead``. Panoptic-DeepLab's and
PointRend's semantic heads are in :mod:`.panoptic_deeplab` and :mod:`.point_rend`.
"""
from typing import Optional, Type, Union

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.projects.deeplab import DeepLabV3PlusHead
from torch import nn

from .build import build_sem_seg_loss

__all__ = [
    "DeepLabV3PlusSegLossHead",
    "LossFnHead",
    "SegLossHeadMixin",
    "SemSegFPNSegLossHead",
    "make_segloss_head",
    "segloss_losses",
]


def segloss_losses(loss_fn, predictions, targets):
    """Upsample ``predictions`` (N, C, h, w) to the size of ``targets`` (N, H, W) and apply
    ``loss_fn``; returns detectron2's loss dict ``{"loss_sem_seg": scalar}``.

    detectron2's heads upsample by ``common_stride``, which gives the target size for the padded
    batches its meta-architectures build; resizing to the target size is the same there and also
    holds for any other size."""
    predictions = F.interpolate(
        predictions.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
    )
    return {"loss_sem_seg": loss_fn(predictions, targets)}


def parent_head_cfg(cfg):
    """The config the wrapped detectron2 head is built from: ``LOSS_TYPE`` ``cross_entropy``.

    detectron2's heads accept only their own loss types (DeepLab's: cross_entropy,
    hard_pixel_mining) and raise on segloss_d2's; their own loss is never called by the segloss
    variant, so they are built as if with cross-entropy. ``cfg`` itself is left unchanged."""
    head = cfg.MODEL.SEM_SEG_HEAD
    if head.get("LOSS_TYPE", "cross_entropy") == "cross_entropy":
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "cross_entropy"
    return cfg


class LossFnHead:
    """The contract between a semantic head and what gives it its training loss.

    A ``LossFnHead`` trains with the module ``self.loss_fn``, ``loss(logits (N, C, H, W), labels
    (N, H, W)) -> scalar``, and :meth:`set_loss_fn` replaces it; the search gives every candidate
    its own loss this way. segloss_d2's heads implement it (every :func:`make_segloss_head`
    variant, ``PanopticDeepLabSemSegLossHead``, ``PointRendSemSegLossHead``); a head of your own
    declares it by subclassing it. Check with ``isinstance(head, LossFnHead)``, or ``issubclass``
    on a registered class (what the search does before building anything).
    """

    def set_loss_fn(self, loss_fn: nn.Module) -> None:
        """Train with ``loss_fn`` from now on."""
        if not isinstance(loss_fn, nn.Module):
            raise TypeError(f"loss_fn must be an nn.Module, got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn


class SegLossHeadMixin(LossFnHead):
    """Put first in the bases of a ``@configurable`` detectron2 head to train it with ``loss_fn``.

    ``class MyHead(SegLossHeadMixin, DeepLabV3PlusHead)`` takes ``loss_fn`` as keyword argument
    (``from_config`` builds it with :func:`build_sem_seg_loss`) and its ``losses(predictions,
    targets)`` applies ``self.loss_fn`` to the predictions upsampled to label resolution. A head
    taking ``train_size`` (DeepLab's ASPP) gets None under
    ``MODEL.SEM_SEG_HEAD.ASPP_GLOBAL_POOLING``.
    """

    @configurable
    def __init__(self, input_shape, *, loss_fn: nn.Module, **kwargs):
        """
        Args:
            loss_fn (nn.Module): ``loss(logits (N,C,H,W), labels (N,H,W)) -> scalar`` (weighted
                by ``LOSS_WEIGHT`` already).
            input_shape, kwargs: as the wrapped head.
        """
        super().__init__(input_shape=input_shape, **kwargs)  # by keyword: a LazyConfig passes
        # input_shape as a DictConfig, which detectron2 would take for a config if positional
        self.loss_fn = loss_fn

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(parent_head_cfg(cfg), input_shape)
        ret["loss_fn"] = build_sem_seg_loss(cfg)
        if "train_size" in ret and cfg.MODEL.SEM_SEG_HEAD.get("ASPP_GLOBAL_POOLING", False):
            ret["train_size"] = None  # DeepLab-family ASPP pools globally: any test size works
        return ret

    def losses(self, predictions, targets):
        """predictions (N, C, h, w) logits, targets (N, H, W) -> {"loss_sem_seg": scalar}."""
        return segloss_losses(self.loss_fn, predictions, targets)


class CfgSegLossHeadMixin(LossFnHead):
    """:class:`SegLossHeadMixin` for heads built as ``Head(cfg, input_shape)`` (no
    ``@configurable``): ``Head(cfg, input_shape, loss_fn=None)``, None building it from ``cfg``."""

    def __init__(self, cfg, input_shape, *, loss_fn: Optional[nn.Module] = None):
        super().__init__(parent_head_cfg(cfg), input_shape)
        self.loss_fn = build_sem_seg_loss(cfg) if loss_fn is None else loss_fn

    def losses(self, predictions, targets):
        """predictions (N, C, h, w) logits, targets (N, H, W) -> {"loss_sem_seg": scalar}."""
        return segloss_losses(self.loss_fn, predictions, targets)


def _default_name(head_cls) -> str:
    base = head_cls.__name__
    return base[: -len("Head")] + "SegLossHead" if base.endswith("Head") else base + "SegLoss"


def make_segloss_head(
    head_cls: Union[str, Type[nn.Module]], name: Optional[str] = None, register: bool = True
) -> Type[nn.Module]:
    """The segloss variant of a semantic segmentation head, registered as ``name``.

    Args:
        head_cls: a head class, or its name in SEM_SEG_HEADS_REGISTRY, following detectron2's
            convention: ``losses(predictions, targets)`` with predictions (N, C, h, w) logits at
            feature stride (upsampled by ``common_stride`` to the label size) and targets (N, H, W)
            with ``IGNORE_VALUE``, returning ``{"loss_sem_seg": scalar}``. Both ``@configurable``
            heads (``Head(cfg, input_shape)`` or explicit arguments) and plain ``Head(cfg,
            input_shape)`` ones work.
        name: registry name; default the class name with ``Head`` -> ``SegLossHead``
            (``SemSegFPNHead`` -> ``SemSegFPNSegLossHead``).
        register: register it in SEM_SEG_HEADS_REGISTRY (then ``MODEL.SEM_SEG_HEAD.NAME name``
            builds it). Making the same variant again returns the registered class.

    Returns:
        A subclass of ``head_cls`` whose constructor also takes ``loss_fn`` (built from
        ``MODEL.SEM_SEG_HEAD.LOSS_TYPE`` when built from a config) and whose ``losses`` applies
        ``self.loss_fn`` to the logits upsampled to label resolution (any ``LOSS_TYPE``, and
        accepted by the search, which sets each candidate's ``sem_seg_head.loss_fn``).

    Raises:
        ValueError: ``head_cls`` is not a registered name or not an ``nn.Module`` class with
            ``losses``, or ``name`` is already registered for another class.
    """
    if isinstance(head_cls, str):
        try:
            head_cls = SEM_SEG_HEADS_REGISTRY.get(head_cls)
        except KeyError as e:
            raise ValueError(f"make_segloss_head: {head_cls!r} is not registered in "
                             "SEM_SEG_HEADS_REGISTRY") from e
    if not (isinstance(head_cls, type) and issubclass(head_cls, nn.Module)
            and callable(getattr(head_cls, "losses", None))):
        raise ValueError(f"make_segloss_head needs an nn.Module class with losses(predictions, "
                         f"targets), got {head_cls!r}")
    name = name or _default_name(head_cls)
    if register and name in SEM_SEG_HEADS_REGISTRY:
        existing = SEM_SEG_HEADS_REGISTRY.get(name)
        if getattr(existing, "_segloss_base", None) is head_cls:
            return existing
        raise ValueError(f"make_segloss_head: {name!r} is already registered in "
                         f"SEM_SEG_HEADS_REGISTRY for "
                         f"{existing.__module__}.{existing.__qualname__}; pass another name")
    mixin = SegLossHeadMixin if hasattr(head_cls, "from_config") else CfgSegLossHeadMixin
    cls = type(name, (mixin, head_cls), {
        "__doc__": f"{head_cls.__module__}.{head_cls.__qualname__}, trained with segloss_d2's "
                   "``LOSS_TYPE`` (``loss_fn``); inference unchanged.",
        "__module__": __name__,
        "_segloss_base": head_cls,
    })
    if register:
        SEM_SEG_HEADS_REGISTRY.register(cls)
    return cls


DeepLabV3PlusSegLossHead = make_segloss_head(DeepLabV3PlusHead)
SemSegFPNSegLossHead = make_segloss_head(SemSegFPNHead)
