"""Missing-file checks for detectron2's builtin Cityscapes and ADE20K sem-seg datasets.

detectron2 registers ``cityscapes_fine_sem_seg_{train,val,test}`` and ``ade20k_sem_seg_{train,val}``
itself (``detectron2/data/datasets/builtin.py``); segloss_d2 leaves those registrations as they are.
Their loaders fail on missing files late and without naming the dataset root (an empty dataset, an
``AssertionError`` or a bare ``FileNotFoundError``), so the pre-flight
:func:`~segloss_d2.data.catalog.check_datasets` runs the checks below first: each reads the paths
the loader will use from the dataset's metadata (Cityscapes: ``image_dir``, ``gt_dir``; ADE20K:
``image_root``, ``sem_seg_root``), so it follows whatever root the dataset was registered with, and
raises a ``FileNotFoundError`` naming the dataset, the missing path, the expected layout and
``DETECTRON2_DATASETS``. Nothing here reads more than the first entries of a directory.

A dataset registered under another name with one of these layouts gets the same check with
:func:`register_dataset_check`.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .errors import missing_file_error

__all__ = [
    "BUILTIN_DATASET_CHECKS",
    "DATASET_CHECK_KINDS",
    "check_builtin_dataset",
    "dataset_check_kind",
    "guard_builtin_dataset",
    "register_dataset_check",
]

_CITYSCAPES_LAYOUT = (
    "expected layout: <root>/cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "<root>/cityscapes/gtFine/<split>/<city>/*_gtFine_{labelTrainIds.png,labelIds.png,"
    "instanceIds.png,polygons.json}; *_labelTrainIds.png are produced by cityscapesscripts' "
    "createTrainIdLabelImgs (CITYSCAPES_DATASET=<root>/cityscapes csCreateTrainIdLabelImgs)"
)
_ADE20K_LAYOUT = (
    "expected layout: <root>/ADEChallengeData2016/images/{training,validation}/*.jpg and "
    "<root>/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png, the latter "
    "produced by detectron2's datasets/prepare_ade20k_sem_seg.py"
)

BUILTIN_DATASET_CHECKS = {
    "cityscapes_fine_sem_seg_train": "cityscapes_sem_seg",
    "cityscapes_fine_sem_seg_val": "cityscapes_sem_seg",
    "cityscapes_fine_sem_seg_test": "cityscapes_sem_seg",
    "ade20k_sem_seg_train": "ade20k_sem_seg",
    "ade20k_sem_seg_val": "ade20k_sem_seg",
}
"""detectron2's builtin dataset name -> the kind of check it gets."""

_EXTRA_CHECKS = {}  # register_dataset_check(name, kind)


def _first_entry(directory, keep):
    """First (sorted) name in ``directory`` accepted by ``keep``, or None."""
    return next((n for n in sorted(os.listdir(directory)) if keep(n)), None)


def _check_cityscapes(name, meta):
    image_dir, gt_dir = meta.get("image_dir"), meta.get("gt_dir")
    if image_dir is None or gt_dir is None:
        return
    for path, what in [(image_dir, "image directory"), (gt_dir, "annotation directory")]:
        if not os.path.isdir(path):
            raise missing_file_error(name, path, what, _CITYSCAPES_LAYOUT, "detectron2")
    city = _first_entry(image_dir, lambda n: os.path.isdir(os.path.join(image_dir, n)))
    city_dir = os.path.join(image_dir, city or "<city>")
    image = city and _first_entry(city_dir, lambda n: n.endswith("_leftImg8bit.png"))
    if not image:
        raise missing_file_error(name, os.path.join(city_dir, "*_leftImg8bit.png"), "image",
                                 _CITYSCAPES_LAYOUT, "detectron2")
    prefix = os.path.join(gt_dir, city, image[: -len("leftImg8bit.png")])
    for suffix in ["gtFine_labelTrainIds.png", "gtFine_polygons.json", "gtFine_labelIds.png",
                   "gtFine_instanceIds.png"]:
        if not os.path.isfile(prefix + suffix):
            raise missing_file_error(name, prefix + suffix, "annotation of " + image,
                                     _CITYSCAPES_LAYOUT, "detectron2")


def _check_ade20k(name, meta):
    image_root, gt_root = meta.get("image_root"), meta.get("sem_seg_root")
    if image_root is None or gt_root is None:
        return
    for path, ext, what in [(image_root, ".jpg", "image"), (gt_root, ".png", "annotation")]:
        if not os.path.isdir(path):
            raise missing_file_error(name, path, what + " directory", _ADE20K_LAYOUT, "detectron2")
        if _first_entry(path, lambda n, ext=ext: n.endswith(ext)) is None:
            raise missing_file_error(name, os.path.join(path, "*" + ext), what + " files",
                                     _ADE20K_LAYOUT, "detectron2")


_CHECKS = {"cityscapes_sem_seg": _check_cityscapes, "ade20k_sem_seg": _check_ade20k}
DATASET_CHECK_KINDS = tuple(sorted(_CHECKS))
"""The layouts :func:`register_dataset_check` knows."""


def _valid_kind(kind):
    if kind not in _CHECKS:
        raise ValueError(f"kind must be one of {sorted(_CHECKS)}, got {kind!r}")
    return kind


def register_dataset_check(name, kind):
    """Check ``name`` like detectron2's builtin ``kind`` datasets in the pre-flight.

    For a dataset registered under another name with detectron2's Cityscapes or ADE20K layout and
    the same metadata keys. Only a table entry: neither ``DatasetCatalog`` nor any file is touched.

    Args:
        name (str): dataset name (need not be registered yet).
        kind (str): "cityscapes_sem_seg" or "ade20k_sem_seg".
    """
    _EXTRA_CHECKS[name] = _valid_kind(kind)


def guard_builtin_dataset(name, kind):
    """Former name of :func:`register_dataset_check`, kept for compatibility.

    It used to replace the registered loader by a checking wrapper; now the check runs in the
    pre-flight :func:`~segloss_d2.data.catalog.check_datasets` and ``DatasetCatalog`` is left as is.

    Returns:
        bool: whether ``name`` is registered in ``DatasetCatalog``.
    """
    register_dataset_check(name, kind)
    return name in DatasetCatalog.list()


def dataset_check_kind(name):
    """The kind of check ``name`` gets ("cityscapes_sem_seg", "ade20k_sem_seg"), or None."""
    return _EXTRA_CHECKS.get(name, BUILTIN_DATASET_CHECKS.get(name))


def check_builtin_dataset(name, kind=None):
    """Raise a clear ``FileNotFoundError`` if the files of ``name`` are missing (see module doc).

    Args:
        name (str): a registered dataset.
        kind (str or None): the check; None = :func:`dataset_check_kind` (no check if that is None).
    """
    kind = dataset_check_kind(name) if kind is None else _valid_kind(kind)
    if kind is not None:
        _CHECKS[kind](name, MetadataCatalog.get(name))
