"""SEM_SEG_HEADS_REGISTRY entries: detectron2's DeepLabV3+ and FPN heads with segloss_d2's losses.

``MODEL.SEM_SEG_HEAD.NAME "DeepLabV3PlusSegLossHead"`` (or ``"SemSegFPNSegLossHead"``) builds the
unmodified detectron2 head and replaces only its ``losses``: the logits are upsampled to label
resolution and fed to :func:`build_sem_seg_loss` (any ``LOSS_TYPE``). Inference is unchanged.
"""
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.projects.deeplab import DeepLabV3PlusHead

from .build import build_sem_seg_loss

__all__ = ["DeepLabV3PlusSegLossHead", "SemSegFPNSegLossHead", "segloss_losses"]


def segloss_losses(loss_fn, predictions, targets):
    """Upsample ``predictions`` (N, C, h, w) to the size of ``targets`` (N, H, W) and apply
    ``loss_fn``; returns detectron2's loss dict ``{"loss_sem_seg": scalar}``."""
    predictions = F.interpolate(
        predictions.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
    )
    return {"loss_sem_seg": loss_fn(predictions, targets)}


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3PlusSegLossHead(DeepLabV3PlusHead):
    """detectron2's DeepLabV3PlusHead, trained with segloss_d2's ``LOSS_TYPE``."""

    @configurable
    def __init__(self, input_shape, *, loss_fn, **kwargs):
        """
        Args:
            loss_fn (nn.Module): ``loss(logits (N,C,H,W), labels (N,H,W)) -> scalar``.
            input_shape, kwargs: as DeepLabV3PlusHead.
        """
        super().__init__(input_shape, **kwargs)
        self.loss_fn = loss_fn

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["loss_type"] = "cross_entropy"  # the parent's own loss is never called
        if cfg.MODEL.SEM_SEG_HEAD.ASPP_GLOBAL_POOLING:
            ret["train_size"] = None  # ASPP pools globally: any test image size works
        ret["loss_fn"] = build_sem_seg_loss(cfg)
        return ret

    def losses(self, predictions, targets):
        return segloss_losses(self.loss_fn, predictions, targets)


@SEM_SEG_HEADS_REGISTRY.register()
class SemSegFPNSegLossHead(SemSegFPNHead):
    """detectron2's SemSegFPNHead, trained with segloss_d2's ``LOSS_TYPE``."""

    @configurable
    def __init__(self, input_shape, *, loss_fn, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.loss_fn = loss_fn

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["loss_fn"] = build_sem_seg_loss(cfg)
        return ret

    def losses(self, predictions, targets):
        return segloss_losses(self.loss_fn, predictions, targets)
