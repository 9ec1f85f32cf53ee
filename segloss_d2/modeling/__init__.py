"""detectron2 adapters: importing this module registers segloss_d2's heads and tiny backbone."""
from .backbone import TinySegBackbone, build_tiny_seg_backbone
from .build import build_sem_seg_loss, build_surrogate_params
from .heads import DeepLabV3PlusSegLossHead, SemSegFPNSegLossHead, segloss_losses

__all__ = [
    "DeepLabV3PlusSegLossHead",
    "SemSegFPNSegLossHead",
    "TinySegBackbone",
    "build_sem_seg_loss",
    "build_surrogate_params",
    "build_tiny_seg_backbone",
    "segloss_losses",
]
