"""Search backends: the ``evaluate_fn`` of :func:`segloss_d2.search.loop.run_search`.

- ``local`` (:class:`LocalBackend`): groups of ``SEARCH.MODELS_PER_WORKER`` candidates are trained
  side by side in this process (:func:`~segloss_d2.search.trial.train_candidates`), one group after
  the other.
- ``ray`` (:class:`RayBackend`): each group is a Ray task with ``SEARCH.RAY.CPUS_PER_TRIAL`` CPUs
  and ``SEARCH.RAY.GPUS_PER_TRIAL`` GPUs, so the same command fills all GPUs of a machine or a Ray
  cluster; tasks whose worker died are retried ``SEARCH.RAY.MAX_RETRIES`` times. Needs the ``ray``
  extra (``pip install segloss_d2[ray]``).

Both report every trial as soon as its group finishes. A candidate's result does not depend on K
(same seed, initial weights and data order for every candidate); it depends at round-off on the
number of threads that trained it, which each result records as ``threads`` (the Ray workers use
``SEARCH.RAY.CPUS_PER_TRIAL`` threads, the local backend this process's).
"""
import logging
import os
from typing import Callable, List, Optional

import torch

from .holdout import search_datasets
from .reaper import start_reaper
from .settings import BACKENDS, SearchSettings
from .trial import train_candidates

__all__ = ["LocalBackend", "RayBackend", "build_backend", "import_ray"]
logger = logging.getLogger(__name__)


def _with_threads(results):
    """Record the torch thread count that trained each candidate (it changes the round-off)."""
    threads = torch.get_num_threads()
    return [dict(result, threads=threads) for result in results]


def _groups(indices: List[int], thetas: torch.Tensor, seeds: List[Optional[int]], size: int):
    """Consecutive runs of trials with the same proxy seed, cut into groups of ``size``:
    ``(indices, thetas, seed)``. A group trains side by side on one data stream, so it never
    mixes seeds."""
    start = 0
    while start < len(indices):
        stop = start + 1
        while stop < len(indices) and stop - start < size and seeds[stop] == seeds[start]:
            stop += 1
        yield indices[start:stop], thetas[start:stop], seeds[start]
        start = stop


class LocalBackend:
    """Trains groups of ``SEARCH.MODELS_PER_WORKER`` candidates in this process, in turn."""

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self.models_per_worker = settings.backend.models_per_worker
        self.train_dicts, self.reward_dicts = search_datasets(settings)

    def __call__(self, iteration: int, indices: List[int], thetas: torch.Tensor,
                 on_trial_done: Callable, seeds: Optional[List[Optional[int]]] = None,
                 stage: str = "search") -> None:
        """Train ``thetas`` (group by group, each with its proxy seed; successive halving only in
        the "search" stage) and report each result."""
        seeds = seeds or [None] * len(indices)
        for group, group_thetas, seed in _groups(indices, thetas, seeds, self.models_per_worker):
            results = _with_threads(train_candidates(
                self.settings, group_thetas, self.train_dicts, self.reward_dicts, seed=seed,
                halving=stage == "search"))
            for index, result in zip(group, results):
                on_trial_done(index, result)

    def close(self) -> None:
        pass


def _ray_train_group(settings: SearchSettings, thetas: List[List[float]],
                     seed: Optional[int] = None, halving: bool = True):
    """Body of a Ray task: register segloss_d2, train one group."""
    from .. import engine  # noqa: F401  (registers segloss_d2's heads, backbone, datasets)

    train_dicts, reward_dicts = search_datasets(settings)
    return _with_threads(train_candidates(settings, torch.tensor(thetas, dtype=torch.float32),
                                          train_dicts, reward_dicts, seed=seed, halving=halving))


def import_ray():
    """Import and return ``ray``; ImportError with the install command if it is missing."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "SEARCH.BACKEND 'ray' needs Ray: pip install 'ray>=2.9' (the segloss_d2[ray] extra)"
        ) from e
    return ray


class RayBackend:
    """Runs each group of ``SEARCH.MODELS_PER_WORKER`` candidates as a Ray task.

    Connects to ``SEARCH.RAY.ADDRESS`` ("" = a new local instance, "auto" = the running cluster)
    unless Ray is already initialized in this process (then that instance is used and left
    running). A local instance this backend starts is shut down by :meth:`close`, and by a
    :func:`~segloss_d2.search.reaper.start_reaper` watcher if this process is killed.
    ``DETECTRON2_DATASETS`` and ``SEGLOSS_CACHE`` are forwarded to the workers; on a
    multi-node cluster every node needs segloss_d2 installed and the datasets at that path.

    A task that still fails after its retries (an exception in the task, or a worker that died
    ``SEARCH.RAY.MAX_RETRIES + 1`` times) gives its trials no result: once every task of the call
    has finished and the successful groups are reported, a RuntimeError names the failed trials
    and their errors. Nothing is logged for those trials, so the controller never sees a made-up
    reward and ``--resume`` runs exactly them again.
    """

    def __init__(self, settings: SearchSettings):
        ray = import_ray()
        self.ray = ray
        self.settings = settings
        b = settings.backend
        self.models_per_worker = b.models_per_worker
        self._owns_ray = False
        self._reaper = None
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in ("DETECTRON2_DATASETS", "SEGLOSS_CACHE")
                   if k in os.environ}
            ray.init(address=b.ray_address or None, include_dashboard=False,
                     runtime_env={"env_vars": env} if env else None)
            self._owns_ray = True
            if not b.ray_address:  # a local instance: its processes die with us
                self._reaper = start_reaper()
        self._remote = ray.remote(
            num_cpus=b.cpus_per_trial, num_gpus=b.gpus_per_trial, max_retries=b.max_retries,
        )(_ray_train_group)

    def __call__(self, iteration: int, indices: List[int], thetas: torch.Tensor,
                 on_trial_done: Callable, seeds: Optional[List[Optional[int]]] = None,
                 stage: str = "search") -> None:
        """Train the groups as Ray tasks (as :class:`LocalBackend`) and report each result."""
        ray = self.ray
        seeds = seeds or [None] * len(indices)
        pending = {
            self._remote.remote(self.settings, group_thetas.tolist(), seed,
                                stage == "search"): group
            for group, group_thetas, seed in _groups(indices, thetas, seeds,
                                                     self.models_per_worker)
        }
        failures = []
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            group = pending.pop(ref)
            try:
                results = ray.get(ref)
            except Exception as e:  # RayTaskError, WorkerCrashedError, ... after the retries
                logger.error("Ray task of trials %s (iteration %d) failed: %s", group, iteration, e)
                failures.append((group, e))
                continue
            for index, result in zip(group, results):
                on_trial_done(index, result)
        if failures:
            failed = sorted(index for group, _ in failures for index in group)
            errors = "; ".join(f"trials {group}: {type(e).__name__}: {e}" for group, e in failures)
            raise RuntimeError(
                f"Ray tasks of iteration {iteration} failed for trials {failed} (nothing was "
                f"logged for them; --resume runs them again): {errors}"
            ) from failures[0][1]

    def close(self) -> None:
        """Shut Ray down if this backend started it."""
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns_ray = False
        if self._reaper is not None:
            self._reaper.terminate()
            self._reaper.wait()
            self._reaper = None


def build_backend(settings: SearchSettings):
    """The backend named by ``SEARCH.BACKEND`` ("local" or "ray")."""
    name = settings.backend.name
    if name == "local":
        return LocalBackend(settings)
    if name == "ray":
        return RayBackend(settings)
    raise ValueError(f"SEARCH.BACKEND must be one of {BACKENDS}, got {name!r}")
