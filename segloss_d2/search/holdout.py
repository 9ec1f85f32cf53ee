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


def search_datasets(settings) -> Tuple[List[Dict], List[Dict]]:
    """The (proxy training dicts, reward dicts) of a search
    (:class:`~segloss_d2.search.settings.SearchSettings`: its ``data`` and ``seed``).

    Loads ``DATASETS.TRAIN[0]`` (and ``SEARCH.HOLDOUT.DATASET``) from detectron2's
    ``DatasetCatalog`` (the settings checked that they are registered and their files present);
    results are cached per process, so every trial of a worker reuses them. Callers must not
    modify the returned lists or dicts.

    Raises:
        ValueError: a dataset is empty, or ``SEARCH.HOLDOUT.SIZE`` is not smaller than the
            training dataset.
    """
    d = settings.data
    return _search_datasets(d.train_dataset, d.holdout_dataset, d.holdout_size, settings.seed)
