"""segloss_d2's side of detectron2's ``DatasetCatalog``: its own registrations and the pre-flight.

- :class:`SeglossLoader` / :func:`register_loader`: how ``voc.py`` and ``shapes_catalog.py``
  register their datasets (lazy and idempotent: registering touches no file);
- :func:`check_datasets` / :func:`check_config_datasets`: the pre-flight run before training,
  evaluating or searching (by ``tools/train_net.py``, the search's
  :func:`~segloss_d2.search.holdout.search_datasets` and ``SegLossTrainer``'s loaders). It raises a
  clear error for a dataset that is not registered or whose files are missing, before anything is
  loaded, built or written. detectron2's own registrations are left untouched: the checks of its
  Cityscapes/ADE20K builtins (``builtin.py``) run here, not inside their loaders.
"""
from detectron2.data import DatasetCatalog, MetadataCatalog

from .builtin import check_builtin_dataset

__all__ = [
    "CONFIG_DATASET_KEYS",
    "SeglossLoader",
    "UnregisteredDatasetError",
    "check_config_datasets",
    "check_datasets",
    "register_loader",
]

CONFIG_DATASET_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST", "SEARCH.HOLDOUT.DATASET")
"""The config keys that name datasets."""


class SeglossLoader:
    """A ``DatasetCatalog`` entry registered by segloss_d2 (callable, returning dataset dicts).

    Subclasses implement ``__call__`` (the loader) and may override :meth:`check`.
    """

    def check(self):
        """Raise ``FileNotFoundError`` if the files the loader needs are missing; cheap (no
        decoding, no conversion, no generation). Default: nothing to check."""

    def __call__(self):
        raise NotImplementedError


def register_loader(name, loader, same, **metadata):
    """Register ``loader`` (a :class:`SeglossLoader`) under ``name``; no file is touched.

    Idempotent if ``same(existing_loader)``. A previous registration by segloss_d2 with other
    arguments is replaced (dataset and metadata); one by anybody else raises ValueError.
    """
    if name in DatasetCatalog.list():
        existing = DatasetCatalog[name]
        if same(existing):
            return
        if not isinstance(existing, SeglossLoader):
            raise ValueError(f"Dataset '{name}' is already registered by another module "
                             f"({existing!r}); choose another name")
        DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


class UnregisteredDatasetError(ValueError, KeyError):
    """A dataset name that ``DatasetCatalog`` does not hold.

    A ``ValueError`` (a bad config value) and a ``KeyError`` (what ``DatasetCatalog.get`` raises
    for it), with a plain message.
    """

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def check_datasets(dataset_names, key="dataset"):
    """Pre-flight: every named dataset is registered and its files are where it expects them.

    Runs the missing-file check of each dataset's family: segloss_d2's PASCAL VOC splits (their
    directories, id list and listed files), detectron2's Cityscapes/ADE20K builtins and the
    datasets given :func:`~segloss_d2.data.builtin.register_dataset_check` (directories and first
    files). Others (``segloss_shapes_*``, generated on first use, and datasets registered by
    anybody else) only need to be registered. Nothing is loaded, converted or written.

    Args:
        dataset_names (str or iterable[str]): dataset names; duplicates are checked once.
        key (str): where the names come from (e.g. "DATASETS.TRAIN"), for the messages.

    Raises:
        UnregisteredDatasetError: a name that is not registered (a ``ValueError`` and a
            ``KeyError``), naming ``key``, the name and the registered datasets.
        FileNotFoundError: missing files, naming the dataset, the missing path, the expected
            layout and ``DETECTRON2_DATASETS``.
    """
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    registered = DatasetCatalog.list()
    for name in dict.fromkeys(names):
        if not isinstance(name, str) or name not in registered:
            raise UnregisteredDatasetError(
                f"{key} {name!r} is not a registered dataset; registered: {sorted(registered)}")
        loader = DatasetCatalog[name]
        if isinstance(loader, SeglossLoader):
            loader.check()
        else:
            check_builtin_dataset(name)


def check_config_datasets(cfg, keys=CONFIG_DATASET_KEYS):
    """:func:`check_datasets` for the datasets a config names under ``keys``.

    Args:
        cfg (CfgNode): a detectron2 config.
        keys (iterable[str]): dotted config keys whose value is a dataset name or a list of them
            (default: ``DATASETS.TRAIN``, ``DATASETS.TEST``, ``SEARCH.HOLDOUT.DATASET``); a key
            the config does not have, or whose value is "" (unset), is skipped.

    Raises:
        see :func:`check_datasets`.
    """
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = value.get(part) if hasattr(value, "get") else None
            if value is None:
                break
        if value is not None and value != "":
            check_datasets(value, key=key)
