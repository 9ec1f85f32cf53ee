"""Backend-agnostic outer loop of the search: sample, evaluate, log, update, checkpoint, resume.

The backend (local K-models-per-worker, Ray, a synthetic function in tests) only supplies
``evaluate_fn``; everything that makes the search durable and reproducible lives here::

    state = SearchState.create(out_dir, config)        # or SearchState.resume(out_dir, config)
    controller = PPOController(dim, mu_init, ..., seed=seed)
    result = run_search(controller, state, evaluate_fn, iterations=12, samples_per_iter=32)
    result.best_trial["theta"], result.final_mu
"""
import logging
import math
import operator
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import torch

from .ppo import PPOController
from .selection import Selection
from .state import STATUSES, SearchState

__all__ = ["run_search", "SearchResult"]

_RESERVED = ("iteration", "index", "theta", "stage", "proxy_seed")
logger = logging.getLogger(__name__)


class SearchResult(NamedTuple):
    """What :func:`run_search` returns.

    Attributes:
        best_trial (dict or None): the best sampled trial record with status "ok"
            (:meth:`SearchState.best_trial`), or None if no trial succeeded.
        final_mu (list of float): the controller's mean after the last update.
        selected (dict or None): with a :class:`~segloss_d2.search.selection.Selection`, the
            candidate chosen by its mean reward over fresh proxy seeds
            (:meth:`Selection.choose`), else None.
    """

    best_trial: Optional[Dict[str, Any]]
    final_mu: List[float]
    selected: Optional[Dict[str, Any]] = None


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _make_record(iteration: int, index: int, theta: torch.Tensor, result,
                 extra: Mapping[str, Any]) -> Dict[str, Any]:
    """Turn a backend result into a trial record; a non-finite reward becomes 0 / "diverged"."""
    if not isinstance(result, Mapping) or "reward" not in result:
        raise ValueError(f"trial result must be a dict with a 'reward', got {result!r}")
    clash = [k for k in (*_RESERVED, *extra) if k in result]
    if clash:
        raise ValueError(f"trial result must not set {clash}; run_search fills them in")
    record = {"control_points": None, "metrics": {}, "seconds": None, "status": "ok"}
    record.update(result)
    reward = float(record["reward"])
    if not math.isfinite(reward):
        reward, record["status"] = 0.0, "diverged"
    if record["status"] not in STATUSES:
        raise ValueError(f"trial status must be one of {STATUSES}, got {record['status']!r}")
    record.update(extra)
    record.update(iteration=iteration, index=index, theta=theta.tolist(), reward=reward)
    return record


class _Progress:
    """Counts trials finished in this process; formats the per-trial log line with the elapsed
    time and an estimate of the time left."""

    def __init__(self, iterations: int, total: int, log: Callable[[str], None]):
        self.iterations, self.total, self.log = iterations, total, log
        self.start, self.done_here = time.monotonic(), 0

    def trial_done(self, state: SearchState, record: Dict[str, Any], size: int) -> None:
        self.done_here += 1
        n_done = len(state.all_trials())
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done_here * max(self.total - n_done, 0)
        best = state.best_trial()
        stage = (f"iter {record['iteration'] + 1}/{self.iterations}"
                 if record.get("stage", "search") == "search" else "selection")
        self.log(
            f"[search] {stage} trial {record['index'] + 1}/{size} "
            f"reward {record['reward']:.4f} ({record['status']}) | "
            f"best {format(best['reward'], '.4f') if best else '- (none ok yet)'} | "
            f"{n_done}/{self.total} trials | elapsed {_format_seconds(elapsed)} | "
            f"ETA {_format_seconds(eta)}"
        )


def _evaluate_stage(state, evaluate_fn, t: int, samples: torch.Tensor, seeds: List[int],
                    stage: str, progress) -> List[Dict[str, Any]]:
    """Evaluate the candidates of iteration ``t`` (or of the selection stage) that are not logged
    yet, logging each one; returns all ``len(samples)`` records, ordered by index."""
    pending = [i for i in range(samples.shape[0]) if i not in state.finished_trials(t)]

    def on_trial_done(index: int, result: Mapping[str, Any]) -> None:
        index = operator.index(index)
        if index not in pending:
            raise ValueError(f"trial index {index!r} of iteration {t} was not requested")
        if index in state.finished_trials(t):
            raise ValueError(f"trial {index} of iteration {t} was already reported")
        record = _make_record(t, index, samples[index], result,
                              {"stage": stage, "proxy_seed": seeds[index]})
        state.append_trial(record)
        progress.trial_done(state, record, samples.shape[0])

    if pending:
        returned = evaluate_fn(t, list(pending), samples[pending], on_trial_done,
                               seeds=[seeds[i] for i in pending], stage=stage)
        if returned is not None:
            if len(returned) != len(pending):
                raise ValueError(
                    f"evaluate_fn returned {len(returned)} results for {len(pending)} trials"
                )
            finished = state.finished_trials(t)
            for index, result in zip(pending, returned):
                if index not in finished:
                    on_trial_done(index, result)
    records = state.finished_trials(t)
    missing = [i for i in range(samples.shape[0]) if i not in records]
    if missing:
        raise RuntimeError(f"evaluate_fn returned without finishing trials {missing} of "
                           f"iteration {t}")
    return [records[i] for i in range(samples.shape[0])]


def _trained(records) -> Optional[List[float]]:
    """How long each proxy trained (``proxy_iters``), if the backend reports it."""
    trained = [r.get("proxy_iters") for r in records]
    return None if None in trained else trained


def run_search(
    controller: PPOController,
    state: SearchState,
    evaluate_fn: Callable[..., Optional[List[Mapping[str, Any]]]],
    iterations: int,
    samples_per_iter: int,
    log: Callable[[str], None] = logger.info,
    on_iteration_end: Optional[Callable[[int, Dict[str, Any], List[Dict[str, Any]]], None]] = None,
    proxy_seed: Optional[Callable[[int], int]] = None,
    selection: Optional[Selection] = None,
) -> SearchResult:
    """Run (or continue) the search until ``iterations`` controller updates are done, then (with
    ``selection``) re-evaluate its best candidates.

    If ``state`` holds a controller checkpoint (a resumed search), ``controller`` is first restored
    from it; otherwise ``controller`` is used as given. The number of completed iterations is the
    controller's ``iteration`` counter. For each remaining iteration ``t``:

    1. unless the checkpoint already holds the samples of ``t``, draw ``samples_per_iter`` thetas
       and checkpoint them (so a resumed run evaluates exactly the same candidates);
    2. call ``evaluate_fn(t, indices, thetas, on_trial_done, seeds=..., stage="search")`` with
       only the candidates of ``t`` that are not logged yet: ``indices`` is a list of ints,
       ``thetas`` the float32 ``(len(indices), D)`` tensor of their search variables in
       ``[0, 1]``, ``seeds`` their proxy seeds (all ``proxy_seed(t)``: every candidate of an
       iteration trains with the same seed, common random numbers);
    3. once all candidates of ``t`` are logged, ``controller.update`` with the logged rewards
       (and, if every result reports ``proxy_iters``, how long each proxy trained), checkpoint,
       call ``on_iteration_end(t, stats, records)`` (records ordered by index).

    With ``selection``, a last stage (logged as iteration ``iterations``, ``stage``
    "selection") trains :meth:`Selection.plan`'s candidates, each with every fresh seed
    (``evaluate_fn(..., stage="selection")``: full proxy trainings), and
    :meth:`Selection.choose` picks the answer; its candidates are checkpointed first, like an
    iteration's, so a resumed selection runs only what is missing.

    Reporting trials: the backend should call ``on_trial_done(index, result)`` as soon as a trial
    finishes, so that it is logged durably (and a log line with the elapsed time and ETA is
    printed) right away; call it from the thread that runs ``evaluate_fn`` (it is not
    thread-safe). It may instead, or additionally, return a list of results aligned with
    ``indices``; results not yet reported through the callback are then logged in that order. A
    result is a dict with ``reward`` (float; NaN/inf is logged as reward 0.0 with status
    "diverged") and optionally ``metrics`` (dict), ``status`` ("ok" | "diverged", default "ok"),
    ``seconds``, ``control_points``, ``proxy_iters`` and any further JSON-able keys;
    ``iteration``, ``index``, ``theta``, ``stage`` and ``proxy_seed`` are filled in here.
    Rewards fed to the controller are the values read back from the log, so an
    interrupted-and-resumed search reaches bit-identically the same controller state and trials
    as an uninterrupted one with the same seed.

    Args:
        controller (PPOController): fresh, or any controller with the same hyper-parameters when
            resuming (its state is replaced by the checkpoint's).
        state (SearchState): from ``SearchState.create`` or ``SearchState.resume``.
        evaluate_fn (callable): see above. Exceptions propagate (the search can be resumed).
        iterations (int): total number of controller updates.
        samples_per_iter (int): candidates per iteration ``M``; must match a resumed checkpoint.
        log (callable): receives one line per finished trial and per iteration (default: this
            module's logger, at level INFO).
        on_iteration_end (callable, optional): e.g. TensorBoard scalars; called once per update,
            after its checkpoint (not repeated on resume).
        proxy_seed (callable, optional): iteration -> the proxy seed of its candidates; None: the
            backend's own (``seeds`` are then None).
        selection (Selection, optional): re-evaluate the best candidates before answering.

    Returns:
        SearchResult: best sampled trial, final mu and the selected candidate.
    """
    for name, value in (("iterations", iterations), ("samples_per_iter", samples_per_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    ckpt = state.load_controller()
    samples = None
    if ckpt is not None:
        samples = ckpt["samples"]
        if (samples is not None and ckpt["iteration"] < iterations
                and samples.shape[0] != samples_per_iter):
            raise ValueError(
                f"the checkpoint holds {samples.shape[0]} samples for iteration "
                f"{ckpt['iteration']}, but samples_per_iter={samples_per_iter}"
            )
        controller.load_state_dict(ckpt["controller"])
    total = iterations * samples_per_iter + (selection.max_trainings if selection else 0)
    progress = _Progress(iterations, total, log)

    while controller.iteration < iterations:
        t = controller.iteration
        if samples is None:
            samples = controller.sample(samples_per_iter)
            state.save_controller(t, controller.state_dict(), samples)
        seed = None if proxy_seed is None else proxy_seed(t)
        ordered = _evaluate_stage(state, evaluate_fn, t, samples, [seed] * samples_per_iter,
                                  "search", progress)
        stats = controller.update(samples, [r["reward"] for r in ordered], _trained(ordered))
        samples = None
        state.save_controller(controller.iteration, controller.state_dict(), None)
        log(
            f"[search] iteration {t + 1}/{iterations} done: mean reward "
            f"{stats['reward_mean']:.4f}, baseline {stats['baseline']:.4f}, "
            f"max {stats['reward_max']:.4f}, mu {[round(m, 4) for m in stats['mu']]}, "
            f"largest mu step {stats['mu_step']:.3f}, sigma {stats['sigma']:.3f}"
        )
        if on_iteration_end is not None:
            on_iteration_end(t, stats, ordered)

    final_mu = controller.mu.tolist()
    if selection is None or state.best_trial() is None:
        return SearchResult(state.best_trial(), final_mu)
    candidates = selection.candidates(state.all_trials(), final_mu)
    thetas, seeds = selection.plan(candidates)
    if samples is None:
        samples = thetas
        state.save_controller(iterations, controller.state_dict(), samples,
                              samples_per_iter=samples_per_iter)
    elif not torch.equal(samples, thetas):
        raise ValueError("the checkpointed candidates of the selection stage differ from the "
                         "ones the trial log gives; the search directory is inconsistent")
    log(f"[search] selection: re-evaluating {len(candidates)} candidates (the best "
        f"{len(candidates) - (candidates[-1]['source'] == 'mu')} sampled and the final mean) "
        f"with {len(selection.seeds)} fresh proxy seeds {selection.seeds}")
    records = _evaluate_stage(state, evaluate_fn, iterations, samples, seeds, "selection",
                              progress)
    chosen = selection.choose(candidates, records)
    for row in chosen["table"]:
        log(f"[search] selection: {row['source']} search reward "
            f"{'-' if row['search_reward'] is None else format(row['search_reward'], '.4f')}"
            f", fresh seeds {[round(r, 4) for r in row['rewards']]} "
            f"mean {row['mean_reward']:.4f}")
    log(f"[search] selection: chose {chosen['source']} (mean reward {chosen['mean_reward']:.4f})")
    return SearchResult(state.best_trial(), final_mu, chosen)
