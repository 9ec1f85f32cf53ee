"""A search's data: the proxies' training images and the reward set (docs/method.md §4.4, §9).

By default the reward set is a hold-out split of ``DATASETS.TRAIN[0]``: ``SEARCH.HOLDOUT.SIZE``
images drawn with ``SEARCH.SEED`` (the paper's protocol); the proxies train on the rest. With
``SEARCH.HOLDOUT.DATASET`` set, the proxies train on all of ``DATASETS.TRAIN[0]`` and the reward set
is that registered dataset (what the reference code did with VOC val).
"""
import functools
from typing import Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog

from ..data import check_datasets

__all__ = ["split_holdout", "search_datasets"]


def split_holdout(
    dataset_dicts: Sequence[Dict], size: int, seed: int
) -> Tuple[List[Dict], List[Dict]]:
    """Split a dataset into (train, hold-out) with a seeded permutation.

    Args:
        dataset_dicts (sequence of dict): detectron2 dataset dicts.
        size (int): number of hold-out images, ``1 <= size < len(dataset_dicts)``.
        seed (int): seed of ``numpy.random.RandomState``; the same seed gives the same split.

    Returns:
        (list, list): the remaining dicts and the held-out dicts, each in the original order.
    """
    n = len(dataset_dicts)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < n:
        raise ValueError(
            f"SEARCH.HOLDOUT.SIZE must be an int in [1, {n - 1}] for a dataset of {n} images (the "
            f"proxies train on the rest), got {size!r}"
        )
    held = np.zeros(n, dtype=bool)
    held[np.random.RandomState(seed).permutation(n)[:size]] = True
    train = [d for d, h in zip(dataset_dicts, held) if not h]
    holdout = [d for d, h in zip(dataset_dicts, held) if h]
    return train, holdout


@functools.lru_cache(maxsize=4)
def _search_datasets(train_name: str, holdout_dataset: str, size: int, seed: int):
    train = DatasetCatalog.get(train_name)
    if not train:
        raise ValueError(f"DATASETS.TRAIN[0] {train_name!r} has no images")
    if holdout_dataset:
        reward = DatasetCatalog.get(holdout_dataset)
        if not reward:
            raise ValueError(f"SEARCH.HOLDOUT.DATASET {holdout_dataset!r} has no images")
        return list(train), list(reward)
    try:
        return split_holdout(train, size, seed)
    except ValueError as e:
        raise ValueError(f"{e} ({train_name!r})") from None


def search_datasets(cfg) -> Tuple[List[Dict], List[Dict]]:
    """The (proxy training dicts, reward dicts) of a search config.

    Loads ``DATASETS.TRAIN[0]`` (and ``SEARCH.HOLDOUT.DATASET``) from detectron2's
    ``DatasetCatalog``; results are cached per process, so every trial of a worker reuses them.
    Callers must not modify the returned lists or dicts.

    Both datasets go through the pre-flight :func:`~segloss_d2.data.check_datasets` first, so
    ``SearchRunner`` refuses a search whose data is missing before it writes anything.

    Raises:
        ValueError: ``DATASETS.TRAIN`` empty, a dataset not registered
            (:class:`~segloss_d2.data.UnregisteredDatasetError`) or empty, or
            ``SEARCH.HOLDOUT.SIZE`` not smaller than the training dataset.
        FileNotFoundError: the dataset's files are missing (from the pre-flight: naming the
            dataset, the missing path, the expected layout and ``DETECTRON2_DATASETS``).
    """
    if len(cfg.DATASETS.TRAIN) == 0:
        raise ValueError("DATASETS.TRAIN is empty; the search needs a training dataset")
    train_name = cfg.DATASETS.TRAIN[0]
    check_datasets([train_name], key="DATASETS.TRAIN[0]")
    holdout_dataset = cfg.SEARCH.HOLDOUT.DATASET
    if holdout_dataset:
        check_datasets([holdout_dataset], key="SEARCH.HOLDOUT.DATASET")
    return _search_datasets(
        train_name, holdout_dataset, int(cfg.SEARCH.HOLDOUT.SIZE), int(cfg.SEARCH.SEED)
    )
