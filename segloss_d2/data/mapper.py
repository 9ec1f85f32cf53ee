"""SemSegDatasetMapper: detectron2's ``DatasetMapper`` that names the file and dataset of bad input.

detectron2's mapper reads the image and the label file with PIL; a truncated or corrupt file ends
in a bare ``OSError`` ("image file is truncated") that names neither, and a label value that is
neither a class nor the ignore value only surfaces later, in the loss, without its file. This
mapper does exactly what ``DatasetMapper`` does and, in addition:

- a file that fails to decode raises :class:`~segloss_d2.data.errors.CorruptFileError` (an
  ``OSError``) naming the dataset, the file and whether it is the image or the label file, with
  the reader's exception chained;
- the mapped ``sem_seg`` is checked against ``[0, num_classes)`` and the ignore value; another
  value raises ``ValueError`` naming the values, the label file and the dataset.

The mapping itself is detectron2's (``super().__call__``), so it follows the installed version;
the file that failed is found by decoding the dict's files again, on the error path only.
"""
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper

from .errors import CorruptFileError, decode_image_file

__all__ = ["SemSegDatasetMapper"]

_FILES = (("file_name", "image"), ("sem_seg_file_name", "label"))


class SemSegDatasetMapper(DatasetMapper):
    """``DatasetMapper`` plus named errors for unreadable files and out-of-range labels.

    Args (besides ``DatasetMapper``'s):
        num_classes (int or None): C; ``sem_seg`` values must lie in [0, C) or equal
            ``ignore_label``. None: no label check.
        ignore_label (int): the void value.
        dataset_names (sequence[str]): the datasets the dicts come from, for the messages.

    ``from_config(cfg, is_train)`` takes ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (for training; None,
    no label check, for a test mapper) and ``IGNORE_VALUE``,
    and ``DATASETS.TRAIN`` (``DATASETS.TEST`` if not ``is_train``); like ``DatasetMapper``, any
    argument passed next to ``cfg`` (e.g. ``augmentations=...``) overrides the config's.
    """

    @configurable
    def __init__(self, is_train=True, *, num_classes=None, ignore_label=255, dataset_names=(),
                 **kwargs):
        super().__init__(is_train, **kwargs)
        if num_classes is not None and (isinstance(num_classes, bool)
                                        or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be an int >= 1 or None, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.dataset_names = tuple(dataset_names)

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ret = super().from_config(cfg, is_train)
        head = cfg.MODEL.SEM_SEG_HEAD
        # Labels are checked for training only: at test time the model does not read the mapped
        # sem_seg (evaluators read the GT files themselves), and detectron2 reads a palette
        # PNG's luminance there, not its class ids.
        ret["num_classes"] = int(head.NUM_CLASSES) if is_train else None
        ret["ignore_label"] = int(head.IGNORE_VALUE)
        ret["dataset_names"] = tuple(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
        return ret

    def _dataset(self):
        names = self.dataset_names
        if len(names) == 1:
            return names[0]
        return f"one of {list(names)}" if names else "<unnamed dataset>"

    def __call__(self, dataset_dict):
        try:
            mapped = super().__call__(dataset_dict)
        except Exception as e:
            for key, kind in _FILES:
                path = dataset_dict.get(key)
                if path is None:
                    continue
                try:
                    decode_image_file(path)
                except Exception as read_error:  # this file is the one that cannot be read
                    raise CorruptFileError(self._dataset(), path, kind, read_error) from e
            raise  # both files decode: not a file problem, detectron2's error as it is
        if self.num_classes is not None and mapped.get("sem_seg") is not None:
            self._check_labels(mapped["sem_seg"], dataset_dict.get("sem_seg_file_name"))
        return mapped

    def _check_labels(self, sem_seg, path):
        bad = (sem_seg < 0) | (sem_seg >= self.num_classes)
        if self.ignore_label is not None:
            bad &= sem_seg != self.ignore_label
        if bool(bad.any()):
            values = torch.unique(sem_seg[bad])[:10].tolist()
            count = int(bad.sum())
            raise ValueError(
                f"Dataset '{self._dataset()}': label file '{path}' holds values {values} "
                f"({count} pixels, after augmentation) outside [0, {self.num_classes}) that are "
                f"not the ignore value {self.ignore_label} (MODEL.SEM_SEG_HEAD.NUM_CLASSES / "
                f"IGNORE_VALUE); fix the file or the config")
