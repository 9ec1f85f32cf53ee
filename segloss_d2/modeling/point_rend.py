"""PointRend's semantic segmentation (``detectron2.projects.point_rend``) with segloss_d2's losses.

detectron2's ``PointRendSemSegHead`` wraps a coarse head named by
``MODEL.POINT_HEAD.COARSE_SEM_SEG_HEAD_NAME`` (``SemSegFPNHead`` in PointRend's configs) and adds
a point head that refines uncertain points. Two levels of use:

* ``COARSE_SEM_SEG_HEAD_NAME SemSegFPNSegLossHead`` (any segloss head, see
  :func:`~segloss_d2.modeling.heads.make_segloss_head`) with the stock ``PointRendSemSegHead``: the
  coarse prediction trains with ``LOSS_TYPE``.
* ``MODEL.SEM_SEG_HEAD.NAME PointRendSemSegLossHead`` on top of that: the same model, with a
  ``loss_fn`` constructor argument and attribute that reach the coarse head, which is what the
  search needs to train each candidate with its own loss.

The point head keeps detectron2's cross-entropy on its ``TRAIN_NUM_POINTS`` sampled points (the
``loss_sem_seg_point`` term): a metric surrogate is a ratio of soft counts over whole regions and
boundaries (docs/method.md §2.3), which a few hundred points sampled around uncertain locations
do not form, so it would not estimate the metric there.
"""
from typing import Dict, Optional

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.point_rend import PointRendSemSegHead, add_pointrend_config
from torch import nn

from .heads import LossFnHead

__all__ = ["PointRendSemSegLossHead", "add_pointrend_config"]


@SEM_SEG_HEADS_REGISTRY.register()
class PointRendSemSegLossHead(LossFnHead, PointRendSemSegHead):
    """detectron2's PointRendSemSegHead whose coarse head trains with segloss_d2's ``LOSS_TYPE``.

    ``MODEL.POINT_HEAD.COARSE_SEM_SEG_HEAD_NAME`` must name a segloss head (one whose ``losses``
    use ``self.loss_fn``, e.g. ``SemSegFPNSegLossHead``). ``loss_fn`` (argument and attribute) is
    the coarse head's; the point head keeps cross-entropy on its sampled points (see the module
    docstring). Inference is PointRend's, unchanged.
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec], *,
                 loss_fn: Optional[nn.Module] = None):
        """
        Args:
            cfg, input_shape: as PointRendSemSegHead.
            loss_fn (nn.Module or None): the coarse head's loss ``loss(logits (N,C,H,W), labels
                (N,H,W)) -> scalar``; None keeps the one the coarse head built from ``LOSS_TYPE``.
        Raises:
            ValueError: the coarse head takes no ``loss_fn`` (a stock detectron2 head).
        """
        super().__init__(cfg, input_shape)
        coarse = self.coarse_sem_seg_head
        if not isinstance(getattr(coarse, "loss_fn", None), nn.Module):
            name = cfg.MODEL.POINT_HEAD.COARSE_SEM_SEG_HEAD_NAME
            raise ValueError(
                f"MODEL.POINT_HEAD.COARSE_SEM_SEG_HEAD_NAME {name!r} trains with its own loss "
                f"({type(coarse).__module__}.{type(coarse).__qualname__} has no loss_fn); "
                "PointRendSemSegLossHead needs a segloss coarse head such as "
                "'SemSegFPNSegLossHead' (segloss_d2.modeling.make_segloss_head makes one for any "
                "registered head)"
            )
        if loss_fn is not None:
            self.loss_fn = loss_fn

    @property
    def loss_fn(self) -> nn.Module:
        """The coarse head's loss (setting it replaces the coarse head's loss)."""
        return self.coarse_sem_seg_head.loss_fn

    def __setattr__(self, name, value):
        # nn.Module.__setattr__ stores modules in _modules without consulting properties
        if name == "loss_fn":
            self.coarse_sem_seg_head.loss_fn = value
        else:
            super().__setattr__(name, value)
