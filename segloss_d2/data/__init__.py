"""Datasets: the ``segloss_shapes`` generator (core) and detectron2 registrations (adapter).

One module per concern:

- ``shapes.py``: the ``segloss_shapes`` generator (no detectron2);
- ``voc.py``: PASCAL VOC 2012 (+ SBD) loading, palette conversion and registration;
- ``shapes_catalog.py``: the detectron2 registration of ``segloss_shapes_*``;
- ``builtin.py``: missing-file checks for detectron2's Cityscapes/ADE20K builtins;
- ``catalog.py``: the shared registration helper and the pre-flight :func:`check_datasets` /
  :func:`check_config_datasets`, run before training, evaluating or searching;
- ``errors.py``: :class:`CorruptFileError` and the missing-file error;
- ``mapper.py``: :class:`SemSegDatasetMapper`;
- ``datasets.py``: :func:`register_all_segloss_datasets`.

Importing this package registers ``voc_2012_sem_seg_{train_aug,val}`` and
``segloss_shapes_{train,val}`` in detectron2's ``DatasetCatalog`` (touching no file), like
``detectron2.data.datasets.builtin``; detectron2's own registrations are left untouched. Without
detectron2 installed, only the core generator is available.
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
    from .builtin import register_dataset_check
    from .catalog import UnregisteredDatasetError, check_config_datasets, check_datasets
    from .datasets import register_all_segloss_datasets
    from .errors import CorruptFileError
    from .mapper import SemSegDatasetMapper
    from .shapes_catalog import register_shapes
    from .voc import register_voc_sem_seg

    register_all_segloss_datasets()
    __all__ += ["CorruptFileError", "SemSegDatasetMapper", "UnregisteredDatasetError",
                "check_config_datasets", "check_datasets", "register_all_segloss_datasets",
                "register_dataset_check", "register_shapes", "register_voc_sem_seg"]
