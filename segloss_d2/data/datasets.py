"""detectron2 registration of the semantic-segmentation datasets segloss_d2 trains and evaluates on.

Adapter (thin): registering touches no file; every check, scan, conversion or generation happens
lazily in the loaders, when ``DatasetCatalog.get(name)`` is called.

- ``voc_2012_sem_seg_train_aug``: ``<root>/VOCdevkit/VOC2012``, ids from
  ``ImageSets/Segmentation/train_aug.txt``, ``JPEGImages/<id>.jpg``,
  ``SegmentationClassAug/<id>.png`` (the SBD augmentation);
- ``voc_2012_sem_seg_val``: same, ``val.txt`` and ``SegmentationClass/<id>.png``;
- ``segloss_shapes_{train,val}``: generated on first use under ``shapes_cache_dir()``;
- ``cityscapes_fine_sem_seg_{train,val,test}``, ``ade20k_sem_seg_{train,val}``: detectron2's
  builtins, unchanged except for a missing-file check before loading.

``<root>`` is ``$DETECTRON2_DATASETS`` (default ``datasets``), as for detectron2's builtins.

PASCAL VOC label PNGs are palette ("P" mode) images whose palette index is the class id, but
detectron2's ``DatasetMapper`` reads labels with ``read_image(path, "L")``, which turns palette
colours into luminance. The VOC loader therefore converts palette labels once into single-channel
index PNGs (``SegmentationClassRaw``/``SegmentationClassAugRaw`` next to the originals, or under
``~/.cache/segloss_d2/voc_labels/`` if that is not writable) and points ``sem_seg_file_name``
at them.

A dataset whose files are missing raises ``FileNotFoundError`` naming the dataset, the expected
path, ``DETECTRON2_DATASETS`` and the expected layout, before any loading starts. A file that
cannot be decoded (truncated or corrupt) raises :class:`CorruptFileError` naming the dataset and
the file, where it is read: in the VOC palette conversion here, and while training or evaluating in
:class:`~segloss_d2.data.mapper.SemSegDatasetMapper`.
"""
import hashlib
import logging
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager
from PIL import Image

from .shapes import (
    DEFAULT_IMAGE_SIZE,
    IGNORE_LABEL,
    SHAPES_CLASSES,
    SHAPES_COLORS,
    SPLITS,
    generate_shapes_dataset,
    shapes_cache_dir,
)

__all__ = [
    "CorruptFileError",
    "VOC_CLASSES",
    "VOC_SPLITS",
    "voc_palette",
    "load_voc_sem_seg",
    "register_voc_sem_seg",
    "register_shapes",
    "guard_builtin_dataset",
    "register_all_segloss_datasets",
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
_BUILTIN_DATASETS = {
    "cityscapes_fine_sem_seg_train": "cityscapes_sem_seg",
    "cityscapes_fine_sem_seg_val": "cityscapes_sem_seg",
    "cityscapes_fine_sem_seg_test": "cityscapes_sem_seg",
    "ade20k_sem_seg_train": "ade20k_sem_seg",
    "ade20k_sem_seg_val": "ade20k_sem_seg",
}


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


def _env_hint():
    value = os.environ.get("DETECTRON2_DATASETS")
    if value is None:
        return (f"DETECTRON2_DATASETS is not set, so the root is 'datasets' relative to the "
                f"working directory {os.getcwd()!r}")
    return f"DETECTRON2_DATASETS={value!r}"


def _missing(dataset_name, path, what, layout, registered_by="segloss_d2"):
    """A FileNotFoundError naming the dataset, the path, DETECTRON2_DATASETS and the layout."""
    return FileNotFoundError(
        f"Dataset '{dataset_name}': {what} not found: '{os.path.abspath(path)}'. "
        f"{registered_by} registered it under a dataset root that defaults to the "
        f"DETECTRON2_DATASETS environment variable as read at registration (now: {_env_hint()}); "
        f"set it to the directory that holds your datasets before starting. "
        f"{layout[0].upper()}{layout[1:]}."
    )


class CorruptFileError(OSError):
    """An image or label file of a dataset that cannot be read or decoded (e.g. truncated).

    An ``OSError`` (what PIL raises for such files), with the dataset, the file and the original
    exception (also chained as ``__cause__``) in the message and as attributes.

    Args:
        dataset (str): dataset name (or a description of the candidates).
        path (str): the file.
        kind (str): what the file is, e.g. "image" or "label".
        error (BaseException): the original exception.

    ``CorruptFileError(message)`` (one argument) keeps a finished message: a DataLoader worker's
    exception is re-raised in the main process that way, so the type survives workers.
    """

    def __init__(self, dataset, path=None, kind=None, error=None):
        if path is None:  # a finished message (re-raised from a DataLoader worker)
            self.dataset = self.path = self.kind = self.error = None
            super().__init__(dataset)
            return
        self.dataset, self.path, self.kind, self.error = dataset, os.path.abspath(path), kind, error
        if isinstance(error, FileNotFoundError):
            hint = "The file is missing: restore it, or remove its id from the dataset."
        else:
            hint = ("The file is probably truncated or corrupt (e.g. an interrupted download or "
                    "copy): restore it from the dataset's original archive, or remove its id from "
                    "the dataset.")
        super().__init__(f"Dataset '{dataset}': cannot read {kind} file '{self.path}' "
                         f"({type(error).__name__}: {error}). {hint}")

    def __reduce__(self):  # picklable with its fields
        if self.path is None:
            return type(self), self.args
        return type(self), (self.dataset, self.path, self.kind, self.error)


def decode_image_file(path):
    """Open ``path`` with PIL and decode all of its pixels (what a reader will do); raise the
    reader's exception if that fails (a truncated or corrupt file), else return None."""
    with PathManager.open(path, "rb") as f, Image.open(f) as image:
        image.load()


# ---------------------------------------------------------------- PASCAL VOC 2012 (+ SBD)


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
    """
    if split not in _VOC_LABEL_DIRS:
        raise ValueError(f"split must be one of {sorted(_VOC_LABEL_DIRS)}, got {split!r}")
    name = dataset_name or f"voc_2012_sem_seg_{split}"
    list_file = os.path.join(voc_dir, "ImageSets", "Segmentation", f"{split}.txt")
    image_dir = os.path.join(voc_dir, "JPEGImages")
    label_dir = os.path.join(voc_dir, _VOC_LABEL_DIRS[split])
    for path, what in [(voc_dir, "VOC2012 directory"), (list_file, "id list"),
                       (image_dir, "image directory"), (label_dir, "label directory")]:
        if not os.path.exists(path):
            raise _missing(name, path, what, _VOC_LAYOUT)
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError(f"Dataset '{name}': id list {os.path.abspath(list_file)} is empty")
    for directory, ext, what in [(image_dir, ".jpg", "image"), (label_dir, ".png", "label")]:
        absent = [i for i in ids if not os.path.isfile(os.path.join(directory, i + ext))]
        if absent:
            path = os.path.join(directory, absent[0] + ext)
            what = f"{what} file (first of {len(absent)} missing of the {len(ids)} listed)"
            raise _missing(name, path, what, _VOC_LAYOUT)
    index_dir = _index_label_dir(label_dir, ids, name)
    return [
        {"file_name": os.path.join(image_dir, i + ".jpg"),
         "sem_seg_file_name": os.path.join(index_dir, i + ".png"), "image_id": i}
        for i in ids
    ]


class _VOCLoader:
    """DatasetCatalog entry of a VOC split; ``root``/``split`` identify the registration."""

    def __init__(self, name, root, split):
        self.name, self.root, self.split = name, root, split

    def __call__(self):
        voc_dir = os.path.join(self.root, "VOCdevkit", "VOC2012")
        return load_voc_sem_seg(voc_dir, self.split, dataset_name=self.name)


class _ShapesLoader:
    """DatasetCatalog entry of a ``segloss_shapes`` split; root None = ``shapes_cache_dir()``."""

    def __init__(self, split, num_images, seed, root, image_size):
        self.args = (split, num_images, seed, root, tuple(image_size))

    def __call__(self):
        split, num_images, seed, root, image_size = self.args
        return generate_shapes_dataset(root if root is not None else shapes_cache_dir(), split,
                                       num_images, image_size=image_size, seed=seed)


def _register(name, loader, same, **metadata):
    """Register ``loader`` under ``name``; idempotent if ``same(existing_loader)``.

    A previous registration by this module with other arguments is replaced (dataset and
    metadata); one by anybody else raises ValueError.
    """
    if name in DatasetCatalog.list():
        existing = DatasetCatalog[name]
        if same(existing):
            return
        if not isinstance(existing, (_VOCLoader, _ShapesLoader)):
            raise ValueError(f"Dataset '{name}' is already registered by another module "
                             f"({existing!r}); choose another name")
        DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_voc_sem_seg(name, root, split):
    """Register a PASCAL VOC 2012 semantic-segmentation split (lazy: no file is read here).

    Args:
        name (str): dataset name, e.g. "voc_2012_sem_seg_val".
        root (str): dataset root holding ``VOCdevkit/VOC2012`` (what ``DETECTRON2_DATASETS`` is);
            ``~`` is expanded, a relative root is resolved at load time.
        split (str): see :func:`load_voc_sem_seg`.

    Calling it again with the same arguments is a no-op; with other arguments it replaces this
    module's earlier registration of ``name``. Metadata: ``stuff_classes`` (``VOC_CLASSES``),
    ``stuff_colors`` (VOC palette), ``ignore_label`` 255, ``evaluator_type`` "sem_seg",
    ``image_root`` and ``sem_seg_root`` (the original label directory).
    """
    if split not in _VOC_LABEL_DIRS:
        raise ValueError(f"split must be one of {sorted(_VOC_LABEL_DIRS)}, got {split!r}")
    root = os.path.expanduser(root)
    voc_dir = os.path.join(root, "VOCdevkit", "VOC2012")

    def same(f):
        return isinstance(f, _VOCLoader) and (f.name, f.root, f.split) == (name, root, split)

    _register(
        name, _VOCLoader(name, root, split), same,
        stuff_classes=list(VOC_CLASSES),
        stuff_colors=[list(c) for c in voc_palette(len(VOC_CLASSES))],
        ignore_label=255,
        evaluator_type="sem_seg",
        image_root=os.path.join(voc_dir, "JPEGImages"),
        sem_seg_root=os.path.join(voc_dir, _VOC_LABEL_DIRS[split]),
    )


def register_shapes(name, split, num_images, seed, root=None, image_size=DEFAULT_IMAGE_SIZE):
    """Register a ``segloss_shapes`` split, generated on first ``DatasetCatalog.get(name)``.

    Args:
        name (str): dataset name.
        split, num_images, seed, image_size: see ``generate_shapes_dataset``. Two datasets with the
            same root and split but other sizes or seeds would regenerate each other's files.
        root (str or None): dataset root; None = ``shapes_cache_dir()`` evaluated at load time.

    Idempotent like :func:`register_voc_sem_seg`. Metadata: ``stuff_classes``/``stuff_colors``
    from ``shapes.py``, ``ignore_label`` 255, ``evaluator_type`` "sem_seg".
    """
    loader = _ShapesLoader(split, num_images, seed, root, image_size)
    _register(
        name, loader, lambda f: isinstance(f, _ShapesLoader) and f.args == loader.args,
        stuff_classes=list(SHAPES_CLASSES),
        stuff_colors=[list(c) for c in SHAPES_COLORS],
        ignore_label=IGNORE_LABEL,
        evaluator_type="sem_seg",
    )


# ---------------------------------------------------------------- detectron2 builtins


def _first_entry(directory, keep):
    """First (sorted) name in ``directory`` accepted by ``keep``, or None."""
    return next((n for n in sorted(os.listdir(directory)) if keep(n)), None)


def _check_cityscapes(name, meta):
    image_dir, gt_dir = meta.get("image_dir"), meta.get("gt_dir")
    if image_dir is None or gt_dir is None:
        return
    for path, what in [(image_dir, "image directory"), (gt_dir, "annotation directory")]:
        if not os.path.isdir(path):
            raise _missing(name, path, what, _CITYSCAPES_LAYOUT, "detectron2")
    city = _first_entry(image_dir, lambda n: os.path.isdir(os.path.join(image_dir, n)))
    city_dir = os.path.join(image_dir, city or "<city>")
    image = city and _first_entry(city_dir, lambda n: n.endswith("_leftImg8bit.png"))
    if not image:
        raise _missing(name, os.path.join(city_dir, "*_leftImg8bit.png"), "image",
                       _CITYSCAPES_LAYOUT, "detectron2")
    prefix = os.path.join(gt_dir, city, image[: -len("leftImg8bit.png")])
    for suffix in ["gtFine_labelTrainIds.png", "gtFine_polygons.json", "gtFine_labelIds.png",
                   "gtFine_instanceIds.png"]:
        if not os.path.isfile(prefix + suffix):
            raise _missing(name, prefix + suffix, "annotation of " + image, _CITYSCAPES_LAYOUT,
                           "detectron2")


def _check_ade20k(name, meta):
    image_root, gt_root = meta.get("image_root"), meta.get("sem_seg_root")
    if image_root is None or gt_root is None:
        return
    for path, ext, what in [(image_root, ".jpg", "image"), (gt_root, ".png", "annotation")]:
        if not os.path.isdir(path):
            raise _missing(name, path, what + " directory", _ADE20K_LAYOUT, "detectron2")
        if _first_entry(path, lambda n, ext=ext: n.endswith(ext)) is None:
            raise _missing(name, os.path.join(path, "*" + ext), what + " files", _ADE20K_LAYOUT,
                           "detectron2")


_CHECKS = {"cityscapes_sem_seg": _check_cityscapes, "ade20k_sem_seg": _check_ade20k}


class _CheckedLoader:
    """Runs the missing-file check of ``kind`` on the dataset's metadata, then the loader."""

    def __init__(self, name, kind, loader):
        self.name, self.kind, self.__wrapped__ = name, kind, loader

    def __call__(self):
        _CHECKS[self.kind](self.name, MetadataCatalog.get(self.name))
        return self.__wrapped__()


def _catalog_can_wrap():
    return all(callable(getattr(DatasetCatalog, a, None))
               for a in ("list", "register", "remove", "__getitem__"))


def guard_builtin_dataset(name, kind):
    """Make ``DatasetCatalog.get(name)`` check the expected files first (clear FileNotFoundError).

    The registered loader is replaced by a wrapper that reads the paths the loader uses from the
    dataset's metadata (Cityscapes: ``image_dir``, ``gt_dir``; ADE20K: ``image_root``,
    ``sem_seg_root``), so it follows whatever root the dataset was registered with. Idempotent.

    Args:
        name (str): a registered dataset, e.g. "cityscapes_fine_sem_seg_train".
        kind (str): "cityscapes_sem_seg" or "ade20k_sem_seg".

    Returns:
        bool: True if ``name`` is (now) guarded; False if it is not registered or this
        DatasetCatalog has no public way to replace an entry (then nothing changes).
    """
    if kind not in _CHECKS:
        raise ValueError(f"kind must be one of {sorted(_CHECKS)}, got {kind!r}")
    if not _catalog_can_wrap():
        logger.debug("DatasetCatalog cannot replace entries; %s keeps its plain loader", name)
        return False
    if name not in DatasetCatalog.list():
        return False
    loader = DatasetCatalog[name]
    if isinstance(loader, _CheckedLoader):
        return True
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, _CheckedLoader(name, kind, loader))
    return True


def register_all_segloss_datasets(root=None):
    """Register segloss_d2's datasets and guard detectron2's Cityscapes/ADE20K builtins.

    Called on ``import segloss_d2.data``; cheap (no file system access) and idempotent. Calling it
    with another ``root`` re-registers the VOC datasets under that root. The builtins keep the root
    detectron2 registered them with, and ``segloss_shapes_*`` use ``shapes_cache_dir()``.

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
    for name, (split, num_images, seed) in SPLITS.items():
        try:
            register_shapes(name, split, num_images, seed)
        except ValueError as e:
            logger.warning("Not registering %s: %s", name, e)
    for name, kind in _BUILTIN_DATASETS.items():
        guard_builtin_dataset(name, kind)
