"""Hand-crafted baseline losses with the SurrogateLoss call signature; LOSSES[name] picks one."""
from .baselines import (
    CrossEntropyLoss,
    DiceLoss,
    HardPixelMiningLoss,
    LovaszSoftmaxLoss,
    WeightedCrossEntropyLoss,
)

LOSSES = {
    "cross_entropy": CrossEntropyLoss,
    "wce": WeightedCrossEntropyLoss,
    "dice": DiceLoss,
    "lovasz": LovaszSoftmaxLoss,
    "hard_pixel_mining": HardPixelMiningLoss,
}

__all__ = ["LOSSES", *sorted(cls.__name__ for cls in LOSSES.values())]
