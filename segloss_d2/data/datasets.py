"""segloss_d2's dataset registrations: :func:`register_all_segloss_datasets`.

:func:`register_all_segloss_datasets` runs on ``import segloss_d2.data``, like detectron2's
``detectron2/data/datasets/builtin.py``: it registers segloss_d2's own datasets (PASCAL VOC in
``voc.py``, ``segloss_shapes`` in ``shapes_catalog.py``) and touches neither a file nor detectron2's
registrations. Missing files are reported by the pre-flight
:func:`~segloss_d2.data.catalog.check_datasets` (the checks of detectron2's Cityscapes/ADE20K
builtins are in ``builtin.py``) and by the loaders; unreadable files by
:class:`~segloss_d2.data.errors.CorruptFileError`.
"""
import logging
import os

from .shapes import SPLITS, VARIANT_SPLITS
from .shapes_catalog import register_shapes
from .voc import VOC_SPLITS, register_voc_sem_seg

__all__ = ["register_all_segloss_datasets"]

logger = logging.getLogger(__name__)


def register_all_segloss_datasets(root=None):
    """Register segloss_d2's datasets: ``voc_2012_sem_seg_{train_aug,val}``, ``segloss_shapes_*``
    (:data:`~segloss_d2.data.shapes.SPLITS` and :data:`~segloss_d2.data.shapes.VARIANT_SPLITS`).

    Called on ``import segloss_d2.data``; cheap (no file system access) and idempotent. Calling it
    with another ``root`` re-registers the VOC datasets under that root; ``segloss_shapes_*`` use
    ``shapes_cache_dir()``. detectron2's builtins are left as detectron2 registered them.

    Args:
        root (str or None): dataset root (``~`` expanded); None = ``$DETECTRON2_DATASETS`` or
            "datasets", like detectron2's builtins.
    """
    root = os.getenv("DETECTRON2_DATASETS", "datasets") if root is None else root
    for name, split in VOC_SPLITS.items():
        try:
            register_voc_sem_seg(name, root, split)
        except ValueError as e:  # somebody else's dataset of that name: leave it alone
            logger.warning("Not registering %s: %s", name, e)
    shapes = {name: (split, num_images, seed) for name, (split, num_images, seed) in
              SPLITS.items()}
    shapes.update(VARIANT_SPLITS)
    for name, args in shapes.items():
        try:
            register_shapes(name, *args[:3], None, *args[3:])
        except ValueError as e:
            logger.warning("Not registering %s: %s", name, e)
