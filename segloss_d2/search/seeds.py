"""Proxy seeds of a search: which seed trains which proxy (docs/method.md §4.4, §4.6).

A proxy's seed fixes its initial weights (where not loaded), its data order and its augmentations.
All candidates of one iteration share a seed (common random numbers), so the reward differences the
controller sees come from the losses. Across iterations the seed is fixed (``"fixed"``, every proxy
of the search uses ``SEARCH.SEED``) or changes (``"per_iteration"``). The selection stage uses
seeds no iteration used.
"""
from typing import List

__all__ = ["PROXY_SEED_MODES", "iteration_seed", "selection_seeds"]

PROXY_SEED_MODES = ("fixed", "per_iteration")
"""``SEARCH.PROXY.SEEDS``."""

_ITERATION_STRIDE = 1000
_SELECTION_OFFSET = 1_000_000


def iteration_seed(search_seed: int, mode: str, iteration: int) -> int:
    """The proxy seed of every candidate of ``iteration``: ``search_seed`` ("fixed"), or
    ``search_seed + 1000 * iteration`` ("per_iteration"; iteration 0 keeps ``search_seed``)."""
    if mode not in PROXY_SEED_MODES:
        raise ValueError(f"SEARCH.PROXY.SEEDS must be one of {PROXY_SEED_MODES}, got {mode!r}")
    return int(search_seed) + (_ITERATION_STRIDE * int(iteration) if mode == "per_iteration"
                               else 0)


def selection_seeds(search_seed: int, count: int) -> List[int]:
    """``count`` fresh proxy seeds for the selection stage: ``search_seed + 10**6 * (j + 1)``,
    never the seed of an iteration (of searches with fewer than 1000 iterations)."""
    return [int(search_seed) + _SELECTION_OFFSET * (j + 1) for j in range(count)]
