"""The errors of segloss_d2's datasets: missing files (before loading) and unreadable files.

- :func:`missing_file_error`: the ``FileNotFoundError`` of a dataset whose files are not where it
  was registered, naming the dataset, the path, ``DETECTRON2_DATASETS`` and the expected layout
  (raised by the VOC loader and by the pre-flight :func:`~segloss_d2.data.catalog.check_datasets`);
- :class:`CorruptFileError`: a file that exists but cannot be decoded, raised where it is read (the
  VOC palette conversion in ``voc.py``, and :class:`~segloss_d2.data.mapper.SemSegDatasetMapper`
  while training or evaluating).
"""
import os

from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["CorruptFileError", "decode_image_file", "missing_file_error"]


def _env_hint():
    value = os.environ.get("DETECTRON2_DATASETS")
    if value is None:
        return (f"DETECTRON2_DATASETS is not set, so the root is 'datasets' relative to the "
                f"working directory {os.getcwd()!r}")
    return f"DETECTRON2_DATASETS={value!r}"


def missing_file_error(dataset_name, path, what, layout, registered_by="segloss_d2"):
    """A FileNotFoundError naming the dataset, the path, DETECTRON2_DATASETS and the layout.

    Args:
        dataset_name (str): the registered dataset.
        path (str): the missing file or directory (made absolute in the message).
        what (str): what it is, e.g. "image directory".
        layout (str): the expected layout, starting with "expected layout: ...".
        registered_by (str): who registered the dataset ("segloss_d2" or "detectron2").

    Returns:
        FileNotFoundError: to be raised by the caller.
    """
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
