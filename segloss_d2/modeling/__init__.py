"""detectron2 adapters: importing this module registers segloss_d2's heads and tiny backbone.

Heads (SEM_SEG_HEADS_REGISTRY): DeepLabV3PlusSegLossHead, SemSegFPNSegLossHead,
PanopticDeepLabSemSegLossHead, PointRendSemSegLossHead; ``make_segloss_head`` makes the segloss
variant of any other registered semantic head. All of them are ``LossFnHead``s: the declared
contract (train with ``self.loss_fn``, replaced by ``set_loss_fn``) that the search relies on.
"""
from .backbone import TinySegBackbone, build_tiny_seg_backbone
from .build import build_sem_seg_loss, build_surrogate_params
from .heads import (
    DeepLabV3PlusSegLossHead,
    LossFnHead,
    SegLossHeadMixin,
    SemSegFPNSegLossHead,
    make_segloss_head,
    segloss_losses,
)
from .panoptic_deeplab import PanopticDeepLabSemSegLossHead, weighted_sem_seg_loss
from .point_rend import PointRendSemSegLossHead

__all__ = [
    "DeepLabV3PlusSegLossHead",
    "LossFnHead",
    "PanopticDeepLabSemSegLossHead",
    "PointRendSemSegLossHead",
    "SegLossHeadMixin",
    "SemSegFPNSegLossHead",
    "TinySegBackbone",
    "build_sem_seg_loss",
    "build_surrogate_params",
    "build_tiny_seg_backbone",
    "make_segloss_head",
    "segloss_losses",
    "weighted_sem_seg_loss",
]
