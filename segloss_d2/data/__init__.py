"""Datasets: the ``segloss_shapes`` generator (core) and detectron2 registrations (adapter).

Importing this package registers ``voc_2012_sem_seg_{train_aug,val}`` and
``segloss_shapes_{train,val}`` in detectron2's ``DatasetCatalog`` and adds missing-file checks to
the Cityscapes/ADE20K builtins (see ``datasets.py``), like ``detectron2.data.datasets.builtin``.
Without detectron2 installed, only the core generator is available.
"""
import importlib.util

from .shapes import (
    DEFAULT_IMAGE_SIZE,
    IGNORE_LABEL,
    SHAPES_CLASSES,
    SHAPES_COLORS,
    SPLITS,
    generate_shapes_dataset,
    render_shapes_scene,
    shapes_cache_dir,
)

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "IGNORE_LABEL",
    "SHAPES_CLASSES",
    "SHAPES_COLORS",
    "SPLITS",
    "generate_shapes_dataset",
    "render_shapes_scene",
    "shapes_cache_dir",
]

if importlib.util.find_spec("detectron2") is not None:
    from .datasets import (
        CorruptFileError,
        register_all_segloss_datasets,
        register_shapes,
        register_voc_sem_seg,
    )
    from .mapper import SemSegDatasetMapper

    register_all_segloss_datasets()
    __all__ += ["CorruptFileError", "SemSegDatasetMapper", "register_all_segloss_datasets",
                "register_shapes", "register_voc_sem_seg"]
