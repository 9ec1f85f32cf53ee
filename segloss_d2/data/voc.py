"""PASCAL VOC 2012 (+ SBD) semantic segmentation: loading, palette conversion, registration.

- ``voc_2012_sem_seg_train_aug``: ``<root>/VOCdevkit/VOC2012``, ids from
  ``ImageSets/Segmentation/train_aug.txt``, ``JPEGImages/<id>.jpg``,
  ``SegmentationClassAug/<id>.png`` (the SBD augmentation);
- ``voc_2012_sem_seg_val``: same, ``val.txt`` and ``SegmentationClass/<id>.png``.

``<root>`` is ``$DETECTRON2_DATASETS`` (default ``datasets``), as for detectron2's builtins.
Registering touches no file; checks and conversion happen in the loader, when
``DatasetCatalog.get(name)`` is called, and the missing-file checks also in the pre-flight
:func:`~segloss_d2.data.catalog.check_datasets`.

PASCAL VOC label PNGs are palette ("P" mode) images whose palette index is the class id, but
detectron2's ``DatasetMapper`` reads labels with ``read_image(path, "L")``, which turns palette
colours into luminance. The VOC loader therefore converts palette labels once into single-channel
index PNGs (``SegmentationClassRaw``/``SegmentationClassAugRaw`` next to the originals, or under
``~/.cache/segloss_d2/voc_labels/`` if that is not writable) and points ``sem_seg_file_name``
at them. A label that cannot be decoded there raises
:class:`~segloss_d2.data.errors.CorruptFileError` naming the dataset and the file.
"""
import hashlib
import logging
import os

import numpy as np
from PIL import Image

from .catalog import SeglossLoader, register_loader
from .errors import CorruptFileError, missing_file_error

__all__ = [
    "VOC_CLASSES",
    "VOC_SPLITS",
    "check_voc_sem_seg",
    "load_voc_sem_seg",
    "register_voc_sem_seg",
    "voc_palette",
]

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
"""The 21 PASCAL VOC classes; the index is the class id (= palette index in the label PNGs)."""

VOC_SPLITS = {
    "voc_2012_sem_seg_train_aug": "train_aug",
    "voc_2012_sem_seg_val": "val",
}
"""Registered dataset name -> split (list file ``ImageSets/Segmentation/<split>.txt``)."""

_VOC_LABEL_DIRS = {
    "train": "SegmentationClass", "val": "SegmentationClass", "trainval": "SegmentationClass",
    "train_aug": "SegmentationClassAug",
}
_VOC_LAYOUT = (
    "expected layout: <root>/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, "
    "SegmentationClass/<id>.png, ImageSets/Segmentation/{train,val}.txt} and, for train_aug, "
    "the SBD augmentation SegmentationClassAug/<id>.png + ImageSets/Segmentation/train_aug.txt "
    "(10582 ids)"
)


def voc_palette(num_colors=256):
    """The PASCAL VOC colour map (the ``bitget`` palette of the VOC devkit).

    Args:
        num_colors (int): in [1, 256].

    Returns:
        list[tuple[int, int, int]]: RGB colour of each palette index; index 255 (void) is
        (224, 224, 192).
    """
    if not isinstance(num_colors, int) or not 1 <= num_colors <= 256:
        raise ValueError(f"num_colors must be an int in [1, 256], got {num_colors!r}")
    palette = []
    for index in range(num_colors):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        palette.append(tuple(rgb))
    return palette


def _read_label_ids(path):
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: label PNG has mode {image.mode!r}; expected a palette ('P') "
                             "or single-channel ('L') image whose values are class ids")
        return np.asarray(image)


def _stale(label_dir, out_dir, ids):
    """Ids whose converted label in ``out_dir`` is missing or older than the original."""
    stale = []
    for image_id in ids:
        src = os.path.join(label_dir, image_id + ".png")
        dst = os.path.join(out_dir, image_id + ".png")
        try:
            if os.path.getmtime(dst) >= os.path.getmtime(src):
                continue
        except OSError:
            pass
        stale.append(image_id)
    return stale


def _usable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _read_label(dataset_name, path, mode_only=False):
    """The label ids of ``path`` (or its PIL mode if ``mode_only``), a CorruptFileError naming the
    dataset and the file if it cannot be decoded."""
    try:
        if mode_only:
            with Image.open(path) as image:
                return image.mode
        return _read_label_ids(path)
    except (OSError, SyntaxError, EOFError) as e:  # PIL's errors for truncated/corrupt files
        raise CorruptFileError(dataset_name, path, "label", e) from e


def _index_label_dir(label_dir, ids, dataset_name):
    """Directory of single-channel index PNGs for ``ids``: ``label_dir`` itself if its first label
    is not a palette image, else a converted copy (created or refreshed here, atomically per file).
    """
    if _read_label(dataset_name, os.path.join(label_dir, ids[0] + ".png"), mode_only=True) != "P":
        return label_dir
    label_dir = os.path.normpath(os.path.abspath(label_dir))
    key = hashlib.sha1(os.path.realpath(label_dir).encode()).hexdigest()[:12]
    raw_name = os.path.basename(label_dir) + "Raw"
    candidates = [
        os.path.join(os.path.dirname(label_dir), raw_name),
        os.path.join(os.path.expanduser("~"), ".cache", "segloss_d2", "voc_labels", key, raw_name),
    ]
    for out_dir in candidates:
        todo = _stale(label_dir, out_dir, ids)
        if not todo:
            return out_dir
        if not _usable_dir(out_dir):
            continue
        logger.info("Converting %d palette label PNGs of %s to index PNGs in %s (once).",
                    len(todo), label_dir, out_dir)
        for image_id in todo:
            dst = os.path.join(out_dir, image_id + ".png")
            tmp = f"{dst}.tmp-{os.getpid()}"
            ids_map = _read_label(dataset_name, os.path.join(label_dir, image_id + ".png"))
            Image.fromarray(ids_map).save(tmp, format="PNG")
            os.replace(tmp, dst)
        return out_dir
    raise PermissionError(f"Cannot write index PNGs converted from the palette labels in "
                          f"{label_dir}: none of {candidates} is writable")


def _valid_split(split):
    if split not in _VOC_LABEL_DIRS:
        raise ValueError(f"split must be one of {sorted(_VOC_LABEL_DIRS)}, got {split!r}")
    return split


def check_voc_sem_seg(voc_dir, split, dataset_name=None):
    """The missing-file check of a VOC split: directories, id list and every listed file.

    Reads the id list and stats the files; decodes, converts and writes nothing.

    Args:
        voc_dir, split, dataset_name: see :func:`load_voc_sem_seg`.

    Returns:
        list[str]: the ids of the split, in list-file order.

    Raises:
        FileNotFoundError: a missing directory, id list, image or label, naming the dataset, the
            path (the first missing file of how many), ``DETECTRON2_DATASETS`` and the layout.
        ValueError: an unknown split or an empty id list.
    """
    split = _valid_split(split)
    name = dataset_name or f"voc_2012_sem_seg_{split}"
    list_file = os.path.join(voc_dir, "ImageSets", "Segmentation", f"{split}.txt")
    image_dir = os.path.join(voc_dir, "JPEGImages")
    label_dir = os.path.join(voc_dir, _VOC_LABEL_DIRS[split])
    for path, what in [(voc_dir, "VOC2012 directory"), (list_file, "id list"),
                       (image_dir, "image directory"), (label_dir, "label directory")]:
        if not os.path.exists(path):
            raise missing_file_error(name, path, what, _VOC_LAYOUT)
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"Dataset '{name}': id list {os.path.abspath(list_file)} is empty")
    for directory, ext, what in [(image_dir, ".jpg", "image"), (label_dir, ".png", "label")]:
        absent = [i for i in ids if not os.path.isfile(os.path.join(directory, i + ext))]
        if absent:
            path = os.path.join(directory, absent[0] + ext)
            what = f"{what} file (first of {len(absent)} missing of the {len(ids)} listed)"
            raise missing_file_error(name, path, what, _VOC_LAYOUT)
    return ids


def load_voc_sem_seg(voc_dir, split, dataset_name=None):
    """Load a PASCAL VOC 2012 semantic-segmentation split as detectron2 dataset dicts.

    Palette label PNGs are converted once to single-channel index PNGs (see the module docstring),
    so that ``read_image(sem_seg_file_name, "L")`` yields class ids (0..20, 255 = void).

    Args:
        voc_dir (str): the ``VOCdevkit/VOC2012`` directory.
        split (str): one of "train", "val", "trainval" (labels in ``SegmentationClass``) or
            "train_aug" (SBD-augmented train, labels in ``SegmentationClassAug``); ids are read from
            ``ImageSets/Segmentation/<split>.txt``.
        dataset_name (str or None): name used in error messages.

    Returns:
        list[dict]: one per id, in list-file order: ``file_name`` (``JPEGImages/<id>.jpg``),
        ``sem_seg_file_name`` (index PNG) and ``image_id`` (the VOC id, str).

    Raises:
        FileNotFoundError: missing files (:func:`check_voc_sem_seg`), before any conversion.
        CorruptFileError: a label PNG that cannot be decoded.
    """
    ids = check_voc_sem_seg(voc_dir, split, dataset_name)
    name = dataset_name or f"voc_2012_sem_seg_{split}"
    image_dir = os.path.join(voc_dir, "JPEGImages")
    index_dir = _index_label_dir(os.path.join(voc_dir, _VOC_LABEL_DIRS[split]), ids, name)
    return [
        {"file_name": os.path.join(image_dir, i + ".jpg"),
         "sem_seg_file_name": os.path.join(index_dir, i + ".png"), "image_id": i}
        for i in ids
    ]


class _VOCLoader(SeglossLoader):
    """DatasetCatalog entry of a VOC split; ``root``/``split`` identify the registration."""

    def __init__(self, name, root, split):
        self.name, self.root, self.split = name, root, split

    def _voc_dir(self):
        return os.path.join(self.root, "VOCdevkit", "VOC2012")

    def check(self):
        check_voc_sem_seg(self._voc_dir(), self.split, dataset_name=self.name)

    def __call__(self):
        return load_voc_sem_seg(self._voc_dir(), self.split, dataset_name=self.name)


def register_voc_sem_seg(name, root, split):
    """Register a PASCAL VOC 2012 semantic-segmentation split (lazy: no file is read here).

    Args:
        name (str): dataset name, e.g. "voc_2012_sem_seg_val".
        root (str): dataset root holding ``VOCdevkit/VOC2012`` (what ``DETECTRON2_DATASETS`` is);
            ``~`` is expanded, a relative root is resolved at load time.
        split (str): see :func:`load_voc_sem_seg`.

    Calling it again with the same arguments is a no-op; with other arguments it replaces
    segloss_d2's earlier registration of ``name``. Metadata: ``stuff_classes`` (``VOC_CLASSES``),
    ``stuff_colors`` (VOC palette), ``ignore_label`` 255, ``evaluator_type`` "sem_seg",
    ``image_root`` and ``sem_seg_root`` (the original label directory).
    """
    split = _valid_split(split)
    root = os.path.expanduser(root)
    voc_dir = os.path.join(root, "VOCdevkit", "VOC2012")

    def same(f):
        return isinstance(f, _VOCLoader) and (f.name, f.root, f.split) == (name, root, split)

    register_loader(
        name, _VOCLoader(name, root, split), same,
        stuff_classes=list(VOC_CLASSES),
        stuff_colors=[list(c) for c in voc_palette(len(VOC_CLASSES))],
        ignore_label=255,
        evaluator_type="sem_seg",
        image_root=os.path.join(voc_dir, "JPEGImages"),
        sem_seg_root=os.path.join(voc_dir, _VOC_LABEL_DIRS[split]),
    )
