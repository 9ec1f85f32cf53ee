"""Search-quality study: which search settings find losses that beat chance, at equal budget?

One :class:`StudyPlan` describes everything; :class:`SearchStudy` runs it, resumably (every search
is a resumable :class:`~segloss_d2.search.runner.SearchRunner` directory, every retraining,
screening and noise measurement a JSON file that is reused when present), in ``jobs`` worker
processes, and returns the numbers :func:`experiments.study_report.write_report` turns into
tables and plots::

    plan = PLANS["quick"].with_configs(search_config, train_config)
    study = SearchStudy(plan, "output/study_quick", log=print, jobs=2)
    results = study.run()

Phases (docs/search_study.md explains the design):

1. **reward noise**: the identity curves and a few random candidates, each trained as a proxy
   with several proxy seeds on one reward set: the seed-to-seed std of one θ's reward, against
   the spread of rewards across θ at one seed;
2. **searches**: per target metric, search method (:data:`METHODS`: the paper's PPO, random
   search, and one variant per option of docs/method.md §4.6) and search seed, all at the same
   budget in proxy training iterations;
3. **screening**: the answer of every search (and the identity, the unsearched start), trained
   as proxies with fresh seeds side by side on its hold-out set: the answer's reward gain over the
   identity, measured without the search's selection bias;
4. **constraint ablation** (optional): PPO with ``SEARCH.CONSTRAINTS`` relaxed;
5. **budget curve**: the best screened method and random search at several budgets;
6. **retraining**: the answers of the retrained methods, and the unsearched losses
   (cross-entropy, ``naive`` identity curves, the released VOC preset of the target), each
   trained with every training seed and evaluated on the validation split;
7. **proxy fidelity**: candidates of one search spread over its reward range, retrained: the
   Spearman rank correlation between proxy reward and retrained target metric.
"""
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from segloss_d2.metric_names import METRIC_INFO, METRICS
from segloss_d2.search.ppo import PPOController
from segloss_d2.search.state import META

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["StudyPlan", "PLANS", "SearchStudy", "Method", "METHODS", "spearman", "mean_std",
           "UNSEARCHED", "rewards_across_seeds", "best_so_far",
           "method_opts", "search_budget", "answer_names", "route_library_logs",
           "target_value"]

UNSEARCHED = ("cross_entropy", "naive", "preset")
"""The losses every searched one is compared with: CE, the identity curves, the released preset."""

# The paper's settings of every option of docs/method.md §4.6: the reference method sets them
# explicitly, so it stays the paper's whatever the config's defaults are.
PAPER_OPTS = ("SEARCH.METHOD", "ppo", "SEARCH.RATIO", "per_dim", "SEARCH.BASELINE", "mu",
              "SEARCH.ADVANTAGE", "raw", "SEARCH.MIRRORED", False, "SEARCH.SIGMA_END", 0.0,
              "SEARCH.MAX_MU_STEP", 0.0, "SEARCH.MU_LR", 0.2, "SEARCH.SIGMA", 0.2,
              "SEARCH.PROXY.SEEDS", "fixed", "SEARCH.PROXY.HALVING", [],
              "SEARCH.SELECTION.TOP_K", 0, "SEARCH.NUM_PIECES", 0, "SEARCH.CONSTRAINTS", "all",
              "SEARCH.REWARD_GUARD", "")


@dataclasses.dataclass(frozen=True)
class Method:
    """A search method of the study: the paper's settings plus ``opts``.

    Attributes:
        label (str): for tables.
        opts (tuple): KEY, VALUE overrides on top of :data:`PAPER_OPTS`.
        selection (bool): re-evaluate the best candidates before answering
            (``SEARCH.SELECTION``); to keep the budget, it costs one iteration: ``TOP_K = M / 2 -
            1`` candidates and the mean, 2 fresh seeds each, and one iteration fewer.
        halving (bool): successive halving at half the proxy length, with as many more candidates
            per iteration as the same budget allows (all of an iteration in one group).
        targets (tuple of str): the targets it applies to (() = all; e.g. 2-piece curves change
            only BF1, whose paper curves have 1 piece).
    """

    label: str
    opts: Tuple = ()
    selection: bool = False
    halving: bool = False
    targets: Tuple[str, ...] = ()


METHODS: Dict[str, Method] = {
    "ppo": Method("PPO, paper settings (per-dim ratio, raw advantage, fixed σ, best sampled)"),
    "random": Method("random search", ("SEARCH.METHOD", "random")),
    "ppo_joint": Method("PPO, joint ratio (paper formula)", ("SEARCH.RATIO", "joint")),
    "ppo_norm": Method("PPO, normalized advantages", ("SEARCH.ADVANTAGE", "normalized")),
    "ppo_rank": Method("PPO, rank advantages", ("SEARCH.ADVANTAGE", "rank")),
    "ppo_mirrored": Method("PPO, mirrored sampling", ("SEARCH.MIRRORED", True)),
    "ppo_sigma": Method("PPO, σ 0.2 → 0.05", ("SEARCH.SIGMA_END", 0.05)),
    "ppo_trust": Method("PPO, trust region 0.1", ("SEARCH.MAX_MU_STEP", 0.1)),
    "ppo_lr": Method("PPO, MU_LR 0.05", ("SEARCH.MU_LR", 0.05)),
    "ppo_seeds": Method("PPO, per-iteration proxy seeds", ("SEARCH.PROXY.SEEDS",
                                                           "per_iteration")),
    "ppo_select": Method("PPO + selection by re-evaluation (the default)", selection=True),
    "random_select": Method("random search + selection", ("SEARCH.METHOD", "random"),
                            selection=True),
    "ppo_halving": Method("PPO + successive halving (rank advantages)",
                          ("SEARCH.ADVANTAGE", "rank"), halving=True),
    "ppo_2piece": Method("PPO, 2-piece curves", ("SEARCH.NUM_PIECES", 2), targets=("BF1",)),
    "ppo_guard": Method("PPO, BF1 reward guarded by mIoU >= 0.98 x cross-entropy's",
                        ("SEARCH.REWARD_GUARD", "mIoU>=0.98"), targets=("BF1",)),
    "ppo_no_truth_table": Method("PPO without the truth-table constraint",
                                 ("SEARCH.CONSTRAINTS", "no_truth_table")),
    "ppo_no_monotonic": Method("PPO without monotonicity", ("SEARCH.CONSTRAINTS", "no_monotonic")),
    "ppo_none": Method("PPO without both constraints", ("SEARCH.CONSTRAINTS", "none")),
}
"""Search methods of the study by name. A name joining several with '+' (e.g.
``ppo_select+ppo_trust``) combines their options (the first's label)."""

ABLATION = ("ppo", "ppo_no_truth_table", "ppo_no_monotonic", "ppo_none")


def _method(name: str) -> Method:
    parts = name.split("+")
    bad = [p for p in parts if p not in METHODS]
    if bad:
        raise ValueError(f"unknown study method {name!r}: {bad} not among {sorted(METHODS)} "
                         "(several joined by '+')")
    ms = [METHODS[p] for p in parts]
    targets = [set(m.targets) for m in ms if m.targets]
    return Method(" + ".join(m.label for m in ms), sum((m.opts for m in ms), ()),
                  any(m.selection for m in ms), any(m.halving for m in ms),
                  tuple(sorted(set.intersection(*targets))) if targets else ())


def _halving_group(m: int) -> int:
    """Candidates per iteration with one halving at half length that cost what ``m`` full
    proxies cost: the largest ``n`` with ``n + n // 2 <= 2 m``."""
    n = m
    while (n + 1) + (n + 1) // 2 <= 2 * m:
        n += 1
    return n


def method_opts(name: str, iterations: int, samples_per_iter: int) -> List:
    """Config overrides of study method ``name`` at a budget of ``iterations`` x
    ``samples_per_iter`` full proxy trainings."""
    m = _method(name)
    opts = list(PAPER_OPTS) + list(m.opts)
    its, samples = iterations, samples_per_iter
    if m.selection:
        if iterations < 2 or samples_per_iter < 4 or samples_per_iter % 2:
            raise ValueError(f"method {name!r} spends one iteration on the selection: it needs "
                             f">= 2 iterations and an even samples_per_iter >= 4, got "
                             f"{iterations} x {samples_per_iter}")
        its -= 1
        opts += ["SEARCH.SELECTION.TOP_K", samples_per_iter // 2 - 1,
                 "SEARCH.SELECTION.SEEDS", 2]
    if m.halving:
        samples = _halving_group(samples_per_iter)
        opts += ["SEARCH.PROXY.HALVING", [0.5], "SEARCH.MODELS_PER_WORKER", samples]
    return opts + ["SEARCH.ITERATIONS", its, "SEARCH.SAMPLES_PER_ITER", samples]


def search_budget(settings) -> int:
    """Proxy training iterations a search (:class:`~segloss_d2.search.settings.SearchSettings`)
    spends: every iteration's proxies (with successive halving, each up to where it stops) plus
    the selection's re-evaluations and the guard's cross-entropy reference."""
    t, m = settings.proxy.max_iter, settings.samples_per_iter
    k = settings.backend.models_per_worker
    per_group = []
    for size in [k] * (m // k) + ([m % k] if m % k else []):
        cost, live, last = 0, size, 0
        for stop in settings.proxy.halving_stops:
            cost += live * (stop - last)
            live, last = max(1, live // 2), stop
        per_group.append(cost + live * (t - last))
    sel, guard = settings.selection, settings.guard
    selection = (sel.top_k + 1) * len(sel.seeds) * t if sel is not None else 0
    reference = t if guard is not None and guard.reference is None else 0
    return settings.iterations * sum(per_group) + selection + reference


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """What a study runs. Budgets are per search; every method of a target gets the same one.

    Attributes:
        name (str): "quick", "full", or anything (used in the report).
        targets (tuple of str): target metrics, e.g. ("BF1", "mIoU").
        search_seeds (tuple of int): ``SEARCH.SEED`` of each search (controller, hold-out split and
            proxy seed).
        train_seeds (tuple of int): ``SEED`` of each retraining.
        iterations, samples_per_iter, proxy_iters, holdout_size (int): the search budget
            (``SEARCH.ITERATIONS``, ``SAMPLES_PER_ITER``, ``PROXY.MAX_ITER``, ``HOLDOUT.SIZE``).
        retrain_iters (int): ``SOLVER.MAX_ITER`` of every retraining.
        methods (tuple of str): the search methods (:data:`METHODS`) searched and screened.
        retrain (tuple of str): answers retrained with every training seed: a method's answer
            (``best_params.json``), ``"<method>:mu"`` (its final mean), ``"<method>:sampled"``
            (its best sampled candidate, which a selection may have overruled), or ``"best"``
            (the best screened method of the target).
        retrain_top (int): also retrain the answers of the ``retrain_top`` best screened methods.
        screen_seeds (tuple of int): fresh proxy seeds of the screening (() = no screening).
        budget_iterations (tuple of int): budgets of the budget curve, in iterations of
            ``samples_per_iter`` full proxies (() = no curve).
        budget_methods (tuple of str): methods of the budget curve ("best" allowed).
        budget_seeds (tuple of int): search seeds of the budget curve (() = ``search_seeds``).
        budget_targets (tuple of str): targets of the budget curve (() = ``targets``).
        scratch_targets (tuple of str): targets whose losses are also retrained from random
            weights (the unsearched ones and ``scratch_answers``): does the surrogate still learn
            the regions without the pretrained start?
        scratch_answers (tuple of str): answers retrained from random weights (as ``retrain``).
        transfer_configs (tuple of str): other train config files (another network, another
            dataset): cross-entropy, ``naive`` and ``transfer_answers`` retrained with each.
        transfer_answers (tuple of str): answers retrained with the transfer configs.
        ablation_target (str): target of the constraint ablation ("" = none).
        ablation_seeds (tuple of int): search seeds of the ablation.
        fidelity_candidates (int): candidates of the fidelity check (0 = none).
        noise_seeds (tuple of int): proxy seeds of the reward-noise measurement.
        noise_thetas (int): candidates of the noise measurement (the identity + random ones).
        scratch_noise (bool): also measure the noise of the search config's own proxy (from
            random weights).
        search_config, train_config (str): config files of the searches and of the retraining.
        search_opts (tuple): extra KEY, VALUE overrides of every search config.
        pretrain_iters (int): 0 = proxies and retrained models start from random weights; else
            from the train config's model pretrained with cross-entropy for that many
            iterations on segloss_shapes_pretrain (:func:`experiments.pretrain.pretrained_weights`,
            the toy's ImageNet).
    """

    name: str
    targets: Tuple[str, ...]
    search_seeds: Tuple[int, ...]
    train_seeds: Tuple[int, ...]
    iterations: int
    samples_per_iter: int
    proxy_iters: int
    holdout_size: int
    retrain_iters: int
    methods: Tuple[str, ...] = ("ppo", "random")
    retrain: Tuple[str, ...] = ("ppo", "random")
    retrain_top: int = 0
    screen_seeds: Tuple[int, ...] = ()
    budget_iterations: Tuple[int, ...] = ()
    budget_methods: Tuple[str, ...] = ("best", "random")
    budget_seeds: Tuple[int, ...] = ()
    budget_targets: Tuple[str, ...] = ()
    scratch_targets: Tuple[str, ...] = ()
    scratch_answers: Tuple[str, ...] = ("best",)
    transfer_configs: Tuple[str, ...] = ()
    transfer_answers: Tuple[str, ...] = ("best",)
    ablation_target: str = ""
    ablation_seeds: Tuple[int, ...] = ()
    fidelity_candidates: int = 0
    noise_seeds: Tuple[int, ...] = (1, 2, 3)
    noise_thetas: int = 4
    scratch_noise: bool = False
    search_config: str = ""
    train_config: str = ""
    search_opts: Tuple = ()
    pretrain_iters: int = 0

    def with_configs(self, search_config: str, train_config: str) -> "StudyPlan":
        """A copy with the two config files set."""
        return dataclasses.replace(self, search_config=search_config, train_config=train_config)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        bad = [t for t in self.targets if not _is_target(t)]
        if not self.targets or bad:
            raise ValueError(f"StudyPlan.targets must be metrics among {list(METRICS)} or "
                             f"several joined by '+' (e.g. 'mIoU+BF1'), got {self.targets}")
        if self.ablation_target and self.ablation_target not in self.targets:
            raise ValueError(f"StudyPlan.ablation_target {self.ablation_target!r} must be one of "
                             f"the targets {self.targets} (its 'all' run is the PPO search)")
        for name in ("search_seeds", "train_seeds", "noise_seeds"):
            if not getattr(self, name):
                raise ValueError(f"StudyPlan.{name} must not be empty")
        for name in ("pretrain_iters", "retrain_top", "fidelity_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"StudyPlan.{name} must be an int >= 0, got {value!r}")
        for name in ("iterations", "samples_per_iter", "proxy_iters", "holdout_size",
                     "retrain_iters", "noise_thetas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"StudyPlan.{name} must be an int >= 1, got {value!r}")
        if self.samples_per_iter < 2:
            raise ValueError("StudyPlan.samples_per_iter must be >= 2 (PPO spends one on mu)")
        if not self.methods:
            raise ValueError("StudyPlan.methods must not be empty")
        for name in self.methods + tuple(m for m in self.budget_methods if m != "best"):
            method_opts(name, max(self.budget_iterations + (self.iterations,)),
                        self.samples_per_iter)  # unknown names, impossible budgets
        for name in ("scratch_targets", "budget_targets"):
            bad = [t for t in getattr(self, name) if t not in self.targets]
            if bad:
                raise ValueError(f"StudyPlan.{name} {bad} are not among the targets "
                                 f"{self.targets}")
        for config in self.transfer_configs:
            if not os.path.isfile(config):
                raise ValueError(f"StudyPlan.transfer_configs: no config file {config!r}")
        for answer in self.retrain + self.scratch_answers + self.transfer_answers:
            method = answer.split(":")[0]
            if answer != "best" and method not in self.methods:
                raise ValueError(f"StudyPlan answer {answer!r} (retrain, scratch_answers, "
                                 f"transfer_answers): {method!r} is not among the searched "
                                 f"methods {self.methods}")
            if answer.count(":") > 1 or answer.split(":")[1:] not in ([], ["mu"], ["sampled"]):
                raise ValueError(f"StudyPlan answer {answer!r}: expected '<method>', "
                                 "'<method>:mu', '<method>:sampled' or 'best'")
        uses_best = "best" in (self.retrain + self.budget_methods + (
            self.scratch_answers if self.scratch_targets else ()) + (
            self.transfer_answers if self.transfer_configs else ()))
        if (uses_best or self.retrain_top) and not self.screen_seeds:
            raise ValueError("StudyPlan: 'best' and retrain_top need screen_seeds (the best "
                             "method is the best screened one)")
        if any(b < 2 for b in self.budget_iterations):
            raise ValueError(f"StudyPlan.budget_iterations must be >= 2 each, got "
                             f"{self.budget_iterations}")
        for name in ("search_config", "train_config"):
            if not os.path.isfile(getattr(self, name)):
                raise ValueError(f"StudyPlan.{name}: no config file {getattr(self, name)!r}")


# Budget and proxy: 100-iteration proxies fine-tuned at the retraining's lr from the pretrained
# weights, 40-image hold-out (docs/search_study.md explains why).
_SHAPES = dict(holdout_size=40, search_opts=("SOLVER.BASE_LR", 0.05), pretrain_iters=300)

PLANS = {
    # What a reviewer runs in <= 15 minutes on 2 CPU cores (2 jobs): the paper's PPO, the default
    # (PPO + selection) and random search, 2 search x 2 training seeds, screened and retrained;
    # no budget curve.
    "quick": StudyPlan(
        name="quick", targets=("BF1", "mIoU"), search_seeds=(1, 2), train_seeds=(1, 2),
        iterations=3, samples_per_iter=6, proxy_iters=60, retrain_iters=200,
        methods=("ppo", "ppo_select", "random"), retrain=("ppo", "ppo_select", "random"),
        screen_seeds=(901, 902), noise_seeds=(1, 2, 3), **_SHAPES,
    ),
    # The study of docs/search_study.md: 4 x 8 proxies of 100 iterations, 3 search seeds x 3
    # training seeds, every option screened, finalists retrained, a budget curve on mIoU.
    # docs/search_study.md runs it in two passes to fit 2 cores: every method on search seeds 1
    # and 2 (screening only), then the finalists on all three seeds (retrained).
    "full": StudyPlan(
        name="full", targets=("BF1", "mIoU"), search_seeds=(1, 2, 3), train_seeds=(1, 2, 3),
        iterations=4, samples_per_iter=8, proxy_iters=100, retrain_iters=400,
        methods=("ppo", "random", "ppo_joint", "ppo_rank", "ppo_mirrored", "ppo_sigma",
                 "ppo_trust", "ppo_select", "ppo_halving", "ppo_2piece", "random+ppo_2piece",
                 "ppo_guard"),
        retrain=("ppo", "random", "ppo_select", "best", "ppo_guard", "random+ppo_2piece"),
        retrain_top=0, screen_seeds=(901, 902, 903), budget_iterations=(2, 4, 6),
        budget_methods=("best", "random"), budget_seeds=(1, 2), budget_targets=("mIoU",),
        scratch_targets=("BF1",), fidelity_candidates=0, noise_seeds=(1, 2, 3, 4, 5), **_SHAPES,
    ),
    # Boundary losses people can adopt (docs/search_study.md, "Boundaries without losing the
    # regions"): the full mode's budget and seeds, run into a copy of a full study's directory so
    # that its searches and retrainings are reused. Adds the combined mIoU+BF1 target (the default
    # search, retrained from the pretrained and from random weights) and retrains the default
    # search's answer of every target with two other networks and on segloss_shapes_hires, a
    # dataset no search has seen (the transfer).
    "boundary": StudyPlan(
        name="boundary", targets=("BF1", "mIoU", "mIoU+BF1"), search_seeds=(1, 2, 3),
        train_seeds=(1, 2, 3), iterations=4, samples_per_iter=8, proxy_iters=100,
        retrain_iters=400, methods=("ppo_select", "ppo_guard"),
        retrain=("ppo_select", "ppo_guard"), screen_seeds=(901, 902, 903),
        scratch_targets=("BF1", "mIoU+BF1"), scratch_answers=("ppo_select",),
        transfer_configs=tuple(os.path.join(_REPO, "configs", "shapes", f"Base-Tiny-{name}.yaml")
                               for name in ("SemanticFPN", "PointRend", "DeepLabV3Plus-Hires")),
        transfer_answers=("ppo_select",), noise_seeds=(1, 2, 3, 4, 5), **_SHAPES,
    ),
}


def _is_target(target: str) -> bool:
    parts = str(target).split("+")
    return all(p in METRICS for p in parts) and len(set(parts)) == len(parts)


def target_value(results: Dict, target: str) -> float:
    """An evaluator result (percent) of a target: its metric, or the mean of a combined target's
    metrics ("mIoU+BF1"), as the search's reward averages them; nan if missing or diverged."""
    values = [results.get(m) for m in target.split("+")]
    if any(v is None or not math.isfinite(v) for v in values):
        return math.nan
    return float(np.mean(values))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, sample std) of finite values; std 0 for one value, (nan, nan) for none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (nan if either is constant)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two sequences of equal length >= 2, got {len(x)} and "
                         f"{len(y)}")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def rewards_across_seeds(settings, thetas, seeds: Sequence[int]) -> Dict[int, List[float]]:
    """Proxy rewards of candidates ``thetas`` ``(K, D)`` trained side by side with each proxy
    seed of ``seeds`` on the search data of ``settings`` (one hold-out split, its seed's),
    fully (no halving): how much of a reward is the candidate and how much the seed. Returns
    {seed: [K rewards]}."""
    from segloss_d2.search.holdout import search_datasets
    from segloss_d2.search.trial import train_candidates

    train_dicts, reward_dicts = search_datasets(settings)
    return {int(seed): [r["reward"] for r in train_candidates(
        settings, thetas, train_dicts, reward_dicts, seed=int(seed), halving=False)]
        for seed in seeds}


def answer_names(answer: str) -> Tuple[str, str]:
    """``"ppo_select:sampled"`` -> ("ppo_select", "best_sampled_params.json") etc."""
    method, _, kind = answer.partition(":")
    return method, {"": "best_params.json", "mu": "final_mu_params.json",
                    "sampled": "best_sampled_params.json"}[kind]


# One retraining iteration (one model) costs about what one proxy iteration of one candidate does
# (candidates of a group share the data pipeline).
_RETRAIN_COST = 1.1

_COMPARED = ("targets", "iterations", "samples_per_iter", "proxy_iters", "holdout_size",
             "retrain_iters", "noise_thetas", "search_opts", "pretrain_iters", "search_config",
             "train_config")
"""Plan fields that change results already on disk (the others only add or select work)."""


def _comparable(plan_dict: Dict) -> Dict:
    """The fields of a plan compared on resume; config files by name (a study may move with its
    checkout)."""
    return {k: os.path.basename(v) if k.endswith("_config") else v
            for k, v in plan_dict.items() if k in _COMPARED and k != "targets"}


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds)) if math.isfinite(seconds) else 0
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------- job running
_WORKER = {}


def route_library_logs(path: str) -> None:
    """Send the INFO lines of detectron2, fvcore and segloss_d2 (training progress, model dumps)
    to the file ``path`` only, so that the study's own progress lines stay readable."""
    import logging

    for name in ("detectron2", "fvcore", "segloss_d2"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not any(getattr(h, "baseFilename", None) == os.path.abspath(path)
                   for h in logger.handlers):
            logger.addHandler(logging.FileHandler(path))


def _init_worker(plan_dict, out, threads):
    import torch

    torch.set_num_threads(threads)
    route_library_logs(os.path.join(out, "log.txt"))
    plan = StudyPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan_dict.items()})
    _WORKER["study"] = SearchStudy(plan, out, log=lambda line: print(line, flush=True),
                                   _worker=True)


def _run_in_worker(job):
    kind, args = job
    start = time.perf_counter()
    result = getattr(_WORKER["study"], kind)(*args)
    return result, time.perf_counter() - start


class SearchStudy:
    """Runs a :class:`StudyPlan` in ``output_dir`` (resumable: finished work is reused).

    Args:
        plan (StudyPlan): validated here.
        output_dir (str): holds ``search/``, ``screen/``, ``retrain/``, ``noise/``,
            ``plan.json`` and ``timings.json``.
        log (callable): progress lines.
        jobs (int): worker processes (spawned, each with ``cpu_count // jobs`` torch threads);
            1 = everything in this process.
    """

    def __init__(self, plan: StudyPlan, output_dir: str, log: Callable[[str], None] = print,
                 jobs: int = 1, _worker: bool = False):
        self.plan, self.out, self.log, self.jobs = plan, output_dir, log, jobs
        self._pool = None
        self._timings_path = os.path.join(output_dir, "timings.json")
        if _worker:
            return
        plan.validate()
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
        os.makedirs(output_dir, exist_ok=True)
        plan_path = os.path.join(output_dir, "plan.json")
        plan_dict = json.loads(json.dumps(dataclasses.asdict(plan)))
        if os.path.exists(plan_path) and _comparable(_read_json(plan_path)) != _comparable(
                plan_dict):
            raise ValueError(f"{output_dir} holds a study with another budget or proxy "
                             f"({plan_path}); choose another --output-dir or delete it")
        _write_json(plan_path, plan_dict)
        self.timings = _read_json(self._timings_path) if os.path.exists(
            self._timings_path) else {}

    # ------------------------------------------------------------------ configs
    def weights(self) -> str:
        """``MODEL.WEIGHTS`` of proxies and retrained models ("" = random initialization)."""
        if not self.plan.pretrain_iters:
            return ""
        from .pretrain import pretrained_weights

        return pretrained_weights(self.plan.train_config, self.plan.pretrain_iters)

    def search_cfg(self, target: str, seed: int, method: str = "ppo",
                   iterations: Optional[int] = None, scratch: bool = False):
        """The frozen config of one search of the study (``iterations``: a budget of the budget
        curve, default the plan's; ``scratch``: the search config's own proxy, from random
        weights, whatever the plan says)."""
        from segloss_d2.engine import get_segloss_cfg

        p = self.plan
        cfg = get_segloss_cfg()
        cfg.merge_from_file(p.search_config)
        out = self.search_dir(target, seed, method, iterations)
        cfg.merge_from_list([
            "SEARCH.TARGET_METRIC", target, "SEARCH.SEED", seed,
            "SEARCH.PROXY.MAX_ITER", p.proxy_iters, "SEARCH.HOLDOUT.SIZE", p.holdout_size,
            *method_opts(method, iterations or p.iterations, p.samples_per_iter),
            *(() if scratch else (*p.search_opts, "MODEL.WEIGHTS", self.weights())),
            "OUTPUT_DIR", out, "SEARCH.OUTPUT_DIR", out,
        ])
        cfg.freeze()
        return cfg

    def search_settings(self, target: str, seed: int, method: str = "ppo",
                        iterations: Optional[int] = None, scratch: bool = False):
        """The :class:`~segloss_d2.search.settings.SearchSettings` of :meth:`search_cfg`."""
        from segloss_d2.search.settings import SearchSettings

        return SearchSettings.from_config(self.search_cfg(target, seed, method, iterations,
                                                          scratch))

    def search_dir(self, target, seed, method="ppo", iterations=None) -> str:
        budget = "" if iterations in (None, self.plan.iterations) else f"_b{iterations}"
        return os.path.join(self.out, "search", f"{target}_{method}{budget}_s{seed}")

    def loss_opts(self, target: str, loss: str, params_path: str = "") -> List:
        """Config overrides of one retraining loss: a searched params file, or an unsearched
        loss of :data:`UNSEARCHED`."""
        if params_path:
            return ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                    "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", params_path]
        if loss == "cross_entropy":
            return ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy"]
        if loss == "naive":
            return ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "naive",
                    "MODEL.SEM_SEG_HEAD.SURROGATE.METRICS", target.split("+")]
        if loss == "preset":
            return ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                    "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS",
                    ",".join(METRIC_INFO[m].preset for m in target.split("+"))]
        raise ValueError(f"unknown unsearched loss {loss!r}; expected one of {UNSEARCHED}")

    # ------------------------------------------------------------------ jobs (one file each)
    def _search_line(self, line: str) -> None:
        if line.startswith(("[search] iteration", "[search] selection: chose")):
            self.log("  " + line)

    def search(self, target, seed, method="ppo", iterations=None) -> Dict:
        """Run (or finish, or reuse) one search; returns its trials, answer files and budget."""
        from segloss_d2.search.runner import SearchRunner
        from segloss_d2.search.state import SearchState

        settings = self.search_settings(target, seed, method, iterations)
        out = settings.output_dir
        best = os.path.join(out, "best_params.json")
        done = os.path.exists(best) and os.path.exists(os.path.join(out, "final_mu_params.json"))
        if not done:
            self.log(f"[study] search {target} {method} seed {seed}"
                     f"{'' if iterations is None else f' ({iterations} iterations)'}")
            resume = os.path.exists(os.path.join(out, META))
            SearchRunner(settings, resume=resume, log=self._search_line).run()
        return {"trials": SearchState.read_trials(out), "dir": out,
                "budget": search_budget(settings)}

    def retrain(self, target: str, name: str, train_seed: int, loss_opts: List,
                recipe: str = "") -> Dict:
        """Train a model with one loss and seed (or reuse the result); returns the evaluator's
        results on the config's test split (percent). ``recipe``: "" = the plan's train config
        from the pretrained weights; "scratch" = the same from random weights; a config file =
        that model/dataset (for the transfer rows) from the pretrained weights."""
        from .compare import train_and_evaluate

        out = os.path.join(self.out, "retrain", target, f"{name}_t{train_seed}")
        path = os.path.join(out, "study_results.json")
        if os.path.exists(path):
            return _read_json(path)["results"]
        cfg = _train_cfg(recipe if recipe not in ("", "scratch") else self.plan.train_config)
        weights = "" if recipe == "scratch" else self.weights()
        cfg.merge_from_list(["SOLVER.MAX_ITER", self.plan.retrain_iters, "SEED", train_seed,
                             "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out, *loss_opts])
        cfg.freeze()
        try:
            _, results = train_and_evaluate(cfg)
        except FloatingPointError as e:  # a diverged loss scores nothing
            self.log(f"[study] retrain {target} {name} seed {train_seed} diverged: {e}")
            results = {"diverged": str(e)}
        _write_json(path, {"loss_opts": [str(v) for v in loss_opts], "results": results})
        self.log(f"[study] retrain {target} {name} seed {train_seed}: {target} "
                 f"{target_value(results, target):.2f}")
        return results

    def _noise_thetas(self, settings):
        """The identity curves and ``noise_thetas - 1`` candidates drawn around them."""
        space = settings.space
        return PPOController(space.dim, space.initial_mu(), sigma=settings.controller.sigma,
                             seed=0).sample(self.plan.noise_thetas)

    def noise(self, target: str, proxy_seed: int, scratch: bool = False) -> List[float]:
        """Rewards of ``noise_thetas`` candidates (row 0: the identity curves) trained with one
        proxy seed on the hold-out split of the first search seed (``scratch``: the search
        config's own proxy, from random weights)."""
        path = os.path.join(self.out, "noise", f"{target}{'_scratch' if scratch else ''}",
                            f"p{proxy_seed}.json")
        if os.path.exists(path):
            return _read_json(path)["rewards"]
        settings = self.search_settings(target, self.plan.search_seeds[0], scratch=scratch)
        thetas = self._noise_thetas(settings)
        rewards = rewards_across_seeds(settings, thetas, [proxy_seed])[proxy_seed]
        _write_json(path, {"thetas": thetas.tolist(), "rewards": rewards})
        self.log(f"[study] noise {target}{' (scratch proxy)' if scratch else ''} proxy seed "
                 f"{proxy_seed}: {[round(r, 4) for r in rewards]}")
        return rewards

    def budget_targets(self) -> Tuple[str, ...]:
        """The targets of the budget curve."""
        return self.plan.budget_targets or self.plan.targets

    def methods_of(self, target: str) -> List[str]:
        """The plan's methods that apply to ``target``."""
        return [m for m in self.plan.methods
                if not _method(m).targets or target in _method(m).targets]

    def screen_answers(self, target: str) -> List[str]:
        """What the screening trains besides the identity: every method's answer, PPO's final
        mean and, for methods with a selection, the best sampled candidate it overruled."""
        names = []
        for method in self.methods_of(target):
            names.append(method)
            if _method(method).selection:
                names.append(f"{method}:sampled")
            if method == "ppo":
                names.append("ppo:mu")
        return names

    def screen(self, target: str, seed: int, screen_seed: int) -> Dict[str, float]:
        """The identity and the answers of every search of (``target``, ``seed``), trained side
        by side as proxies with the fresh seed ``screen_seed`` on that search's hold-out set;
        returns {answer: reward} ("identity" included)."""
        from segloss_d2.surrogate.params import load_params

        path = os.path.join(self.out, "screen", target, f"s{seed}_p{screen_seed}.json")
        result = _read_json(path) if os.path.exists(path) else {}
        missing = [n for n in ["identity"] + self.screen_answers(target) if n not in result]
        if not missing:
            return result
        import torch

        # One group per search space (e.g. 1- and 2-piece curves). Every group trains with the
        # same seed, hence on the same batches from the same weights (common random numbers):
        # answers added to a plan later are screened alone and still compare with the others.
        groups = {}
        for name in missing:
            if name == "identity":
                settings = self.search_settings(target, seed)
                theta = settings.space.initial_mu()
            else:
                method, file = answer_names(name)
                settings = self.search_settings(target, seed, method)
                params = load_params(os.path.join(self.search_dir(target, seed, method), file))
                theta = [v for term in params.thetas for curve in term for v in curve]
            group = groups.setdefault(repr(settings.space), (settings, [], []))
            group[1].append(name)
            group[2].append(theta)
        for group_settings, group_names, thetas in groups.values():
            rewards = rewards_across_seeds(
                group_settings, torch.tensor(thetas, dtype=torch.float32), [screen_seed])
            rewards = rewards[screen_seed]
            result.update(zip(group_names, rewards))
        _write_json(path, result)
        names = [n for n in result if n != "identity"]
        self.log(f"[study] screen {target} seed {seed} proxy seed {screen_seed}: identity "
                 f"{result['identity']:.4f}, best answer {max(names, key=result.get)} "
                 f"{max(result[n] for n in names):.4f}")
        return result

    # ------------------------------------------------------------------ phases
    def _timed(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds
        _write_json(self._timings_path, self.timings)

    def _map(self, phase: str, jobs: List[Tuple[str, tuple]], costs: List[float]) -> List:
        """Run ``jobs`` ((method name, args), each writing its own file) in the worker pool,
        logging progress with the elapsed time and the estimated time left; returns their
        results in order."""
        results = [None] * len(jobs)

        def finished(i, result, seconds):
            results[i] = result
            self._cost_left -= costs[i]
            if seconds <= 1:  # a cached result costs nothing and says nothing about speed
                return
            self._timed(phase, seconds)
            self._cost_done += costs[i]
            self._busy = time.perf_counter() - self._start
            left = (self._busy / self._cost_done * self._cost_left if self._cost_done
                    else math.nan)
            self.log(f"[study] {phase}: {sum(r is not None for r in results)}/{len(jobs)} "
                     f"done | elapsed {_format_seconds(time.perf_counter() - self._start)} | "
                     f"estimated time left {_format_seconds(left) if left == left else '?'}")

        if self._pool is None or len(jobs) <= 1:
            for i, (kind, args) in enumerate(jobs):
                t = time.perf_counter()
                finished(i, getattr(self, kind)(*args), time.perf_counter() - t)
            return results
        futures = {self._pool.submit(_run_in_worker, job): i for i, job in enumerate(jobs)}
        for future in concurrent.futures.as_completed(futures):
            result, seconds = future.result()
            finished(futures[future], result, seconds)
        return results

    def _start_pool(self):
        """The worker processes of :meth:`run` (None with ``jobs`` 1): spawned once, each with
        ``cpu_count // jobs`` torch threads and this study loaded."""
        if self.jobs == 1:
            return None
        plan_dict = json.loads(json.dumps(dataclasses.asdict(self.plan)))
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(plan_dict, self.out, threads))

    def _prepare(self) -> None:
        """What every job needs, made once here (not raced by the workers): the pretrained
        weights and the generated datasets."""
        from detectron2.data import DatasetCatalog

        from segloss_d2 import engine  # noqa: F401  (registers the datasets)

        self.weights()
        names = ["segloss_shapes_train", "segloss_shapes_val", "segloss_shapes_pretrain"]
        for config in self.plan.transfer_configs:  # e.g. segloss_shapes_hires, made on first use
            cfg = _train_cfg(config)
            names += list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
        for name in dict.fromkeys(names):
            DatasetCatalog.get(name)

    def best_method(self, target: str, screen: Dict) -> str:
        """The method whose answers gained most over the identity in the screening."""
        methods = self.methods_of(target)
        gains = {m: _screen_gain(screen, m)[0] for m in methods}
        return max(methods, key=lambda m: (gains[m], -methods.index(m)))

    def run(self) -> Dict:
        """Run every phase (reusing finished work); returns the collected results."""
        self._start = time.perf_counter()
        self._cost_left, self._cost_done, self._busy = self._estimated_cost(), 0.0, 0.0
        self._prepare()
        self._pool = self._start_pool()
        try:
            results = self._run_phases()
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
            self._pool = None
        results["wall_seconds"] = time.perf_counter() - self._start
        return results

    def _run_phases(self) -> Dict:
        p = self.plan
        proxy = p.samples_per_iter * p.proxy_iters
        results = {"plan": dataclasses.asdict(p), "noise": {}, "noise_scratch": {},
                   "searches": {}, "budgets": {}, "screen": {}, "best": {}, "retrain": {},
                   "ablation": {}, "budget_curve": {}, "fidelity": {}}

        jobs = [("noise", (t, s, scratch)) for t in p.targets for s in p.noise_seeds
                for scratch in ((False, True) if p.scratch_noise else (False,))]
        for (_, (t, s, scratch)), rewards in zip(jobs, self._map("noise", jobs, [
                p.noise_thetas * p.proxy_iters] * len(jobs))):
            results["noise_scratch" if scratch else "noise"].setdefault(t, {})[str(s)] = rewards

        ablation = [(p.ablation_target, m, s) for m in ABLATION[1:] for s in p.ablation_seeds
                    if p.ablation_target]
        explicit_budget = [m for m in p.budget_methods if m != "best"]
        curve = [(t, m, s, b) for t in self.budget_targets() for m in explicit_budget
                 for s in (p.budget_seeds or p.search_seeds) for b in p.budget_iterations]
        jobs = ([("search", (t, s, m)) for s in p.search_seeds for t in p.targets
                 for m in self.methods_of(t)] + [("search", (t, s, m)) for t, m, s in ablation])
        self._collect_searches(results, jobs, self._map(
            "searches", jobs, [proxy * p.iterations] * len(jobs)))

        jobs = [("screen", (t, s, q)) for t in p.targets for s in p.search_seeds
                for q in p.screen_seeds]
        for (_, (t, s, q)), rewards in zip(jobs, self._map("screening", jobs, [
                (len(self.screen_answers(a[0])) + 1) * p.proxy_iters for _, a in jobs])):
            results["screen"].setdefault(t, {}).setdefault(str(s), {})[str(q)] = rewards
        if p.screen_seeds:
            results["best"] = {t: self.best_method(t, results["screen"][t]) for t in p.targets}

        best_curve = [(t, results["best"][t], s, b) for t in self.budget_targets() if "best" in
                      p.budget_methods for s in (p.budget_seeds or p.search_seeds)
                      for b in p.budget_iterations]
        best_curve = [c for c in best_curve if c[:2] not in {x[:2] for x in curve}]
        jobs = [("search", (t, s, m, b)) for t, m, s, b in curve + best_curve
                if b != p.iterations or m not in p.methods]
        self._collect_searches(results, jobs, self._map(
            "budget-curve searches", jobs, [proxy * a[3] for _, a in jobs]))

        jobs, keys = [], []

        def add(t, row, name, loss_opts, recipe="", budget=None):
            for ts in p.train_seeds:
                jobs.append(("retrain", (t, name, ts, loss_opts, recipe)))
                keys.append((t, row, budget))

        def add_answers(t, answers, recipe="", suffix=""):
            for answer in answers:
                method, file = answer_names(answer)
                for s in p.search_seeds:
                    params = os.path.join(self.search_dir(t, s, method), file)
                    add(t, answer + suffix, f"{answer.replace(':', '_')}_s{s}"
                        + _recipe_tag(recipe), self.loss_opts(t, "", params), recipe)

        for t in p.targets:
            for loss in UNSEARCHED:
                add(t, loss, loss, self.loss_opts(t, loss))
            add_answers(t, self._retrained_answers(t, results))
            for t_, m, s, b in curve + best_curve:
                if t_ == t:
                    params = os.path.join(self.search_dir(t, s, m, b), "best_params.json")
                    # the main budget's search is the study's own: one retraining for both
                    name = f"{m}_s{s}" if b == p.iterations else f"{m}_b{b}_s{s}"
                    add(t, m, name, self.loss_opts(t, "", params), budget=b)
            recipes = (["scratch"] if t in p.scratch_targets else []) + list(p.transfer_configs)
            for recipe in recipes:
                unsearched = UNSEARCHED if recipe == "scratch" else ("cross_entropy", "naive")
                for loss in unsearched:
                    add(t, loss + _recipe_label(recipe), loss + _recipe_tag(recipe),
                        self.loss_opts(t, loss), recipe)
                add_answers(t, [results["best"][t] if a == "best" else a
                                for a in (p.scratch_answers if recipe == "scratch"
                                          else p.transfer_answers)],
                            recipe, _recipe_label(recipe))
        # the same training may be asked for twice (e.g. "best" is also a listed answer): run
        # it once, so that two workers never train into one directory at the same time
        unique = list(dict.fromkeys((kind, args[:3] + (args[4],)) for kind, args in jobs))
        by_key = dict(zip(unique, self._map("retraining", [
            next(j for j in jobs if (j[0], j[1][:3] + (j[1][4],)) == key) for key in unique],
            [_RETRAIN_COST * p.retrain_iters] * len(unique))))
        outputs = [by_key[(kind, args[:3] + (args[4],))] for kind, args in jobs]
        for (t, row, b), r in zip(keys, outputs):
            if b is None:
                results["retrain"].setdefault(t, {}).setdefault(row, []).append(r)
            else:
                results["budget_curve"].setdefault(t, {}).setdefault(row, {}).setdefault(
                    str(b), {"runs": [], "proxy_iters": []})["runs"].append(r)
        for t, m, s, b in curve + best_curve:
            point = results["budget_curve"][t][m][str(b)]
            point["proxy_iters"].append(results["budgets"][self.search_dir(t, s, m, b)])

        if p.fidelity_candidates:
            target = p.targets[0]
            trials = results["searches"][f"{target}/{p.methods[0]}/{p.search_seeds[0]}"]
            results["fidelity"][target] = self.fidelity(target, trials, p.train_seeds[0])
        results["timings"] = dict(self.timings)
        return results

    def _estimated_cost(self) -> float:
        """The whole study's cost in proxy-training iterations (for the time-left estimate)."""
        p = self.plan
        search = p.iterations * p.samples_per_iter * p.proxy_iters
        curve_points = len(self.budget_targets()) * len(p.budget_methods) * len(
            p.budget_seeds or p.search_seeds)
        answers = len(p.retrain) + p.retrain_top
        return (len(p.targets) * len(p.noise_seeds) * (1 + p.scratch_noise) * p.noise_thetas
                * p.proxy_iters
                + search * (sum(len(self.methods_of(t)) for t in p.targets)
                            * len(p.search_seeds) + 3 * len(p.ablation_seeds))
                + sum(p.budget_iterations) * p.samples_per_iter * p.proxy_iters * curve_points
                + sum(len(self.screen_answers(t)) + 1 for t in p.targets)
                * len(p.search_seeds) * len(p.screen_seeds) * p.proxy_iters
                + _RETRAIN_COST * p.retrain_iters * len(p.train_seeds) * (
                    len(p.targets) * (len(UNSEARCHED) + answers * len(p.search_seeds))
                    + curve_points * len(p.budget_iterations))
                + _RETRAIN_COST * p.retrain_iters * p.fidelity_candidates
                + _RETRAIN_COST * p.retrain_iters * len(p.train_seeds) * (
                    len(p.scratch_targets) * (len(UNSEARCHED) + len(p.scratch_answers)
                                              * len(p.search_seeds))
                    + len(p.targets) * len(p.transfer_configs) * (
                        2 + len(p.transfer_answers) * len(p.search_seeds))))

    def _collect_searches(self, results, jobs, outputs) -> None:
        for (_, args), out in zip(jobs, outputs):
            t, s, m = args[:3]
            b = args[3] if len(args) > 3 else self.plan.iterations
            results["budgets"][out["dir"]] = out["budget"]
            key = f"{t}/{m}/{s}" if b == self.plan.iterations else f"{t}/{m}@{b}/{s}"
            results["searches"][key] = out["trials"]
            if t == self.plan.ablation_target and m in ABLATION and s in self.plan.ablation_seeds:
                results["ablation"][f"{m}/{s}"] = out["trials"]

    def _retrained_answers(self, target: str, results: Dict) -> List[str]:
        answers = [results["best"][target] if a == "best" else a for a in self.plan.retrain
                   if a == "best" or a.partition(":")[0] in self.methods_of(target)]
        if self.plan.retrain_top:
            screen = results["screen"][target]
            ranked = sorted(self.methods_of(target), key=lambda m: -_screen_gain(screen, m)[0])
            answers += ranked[:self.plan.retrain_top]
        return list(dict.fromkeys(answers))

    def fidelity(self, target: str, trials: List[Dict], train_seed: int) -> List[Dict]:
        """Retrain ``fidelity_candidates`` distinct candidates spread over the reward range of
        ``trials`` (one search); returns [{reward, retrained, theta}] ordered by reward."""
        from segloss_d2.surrogate.params import save_params

        ok = sorted((t for t in trials if t["status"] == "ok" and t.get("stage", "search")
                     == "search"), key=lambda t: t["reward"])
        unique, seen = [], set()
        for t in ok:
            key = tuple(round(v, 6) for v in t["theta"])
            if key not in seen:
                seen.add(key)
                unique.append(t)
        k = min(self.plan.fidelity_candidates, len(unique))
        picks = [unique[i] for i in np.unique(np.linspace(0, len(unique) - 1, k).round()
                                               .astype(int))]
        space = self.search_settings(target, self.plan.search_seeds[0]).space
        jobs = []
        for t in picks:
            name = f"fidelity_it{t['iteration']}_{t['index']}"
            params_path = os.path.join(self.out, "retrain", target, name + ".json")
            if not os.path.exists(params_path):
                save_params(space.to_params(t["theta"], reward=t["reward"]), params_path)
            jobs.append(("retrain", (target, name, train_seed,
                                     self.loss_opts(target, "", params_path))))
        retrained = self._map("fidelity", jobs, [_RETRAIN_COST * self.plan.retrain_iters]
                              * len(jobs))
        return [{"reward": t["reward"], "retrained": target_value(r, target),
                 "iteration": t["iteration"],
                 "index": t["index"]} for t, r in zip(picks, retrained)]


def _train_cfg(config_file: str):
    """An unfrozen segloss_d2 config merged from a train config file (PointRend's keys added when
    the file uses them)."""
    from segloss_d2.engine import get_segloss_cfg

    cfg = get_segloss_cfg()
    with open(config_file, encoding="utf-8") as f:
        if "POINT_HEAD" in f.read():  # detectron2's PointRend project needs its keys
            from detectron2.projects.point_rend import add_pointrend_config

            add_pointrend_config(cfg)
    cfg.merge_from_file(config_file)
    return cfg


def _recipe_tag(recipe: str) -> str:
    """Directory suffix of a retraining recipe ("" = the plan's)."""
    if not recipe:
        return ""
    return "_scratch" if recipe == "scratch" else "_" + os.path.splitext(
        os.path.basename(recipe))[0]


def _recipe_label(recipe: str) -> str:
    """Table suffix of a retraining recipe: " @scratch", " @Base-Tiny-SemanticFPN"."""
    return f" @{_recipe_tag(recipe)[1:]}" if recipe else ""


def screened_seeds(screen: Dict, answer: str) -> List[List[Dict[str, float]]]:
    """Per search seed (in seed order) whose screening holds ``answer``, its proxy-seed results
    ({answer: reward}); seeds screened without it (a study resumed with another method list) are
    left out."""
    rows = [list(by_proxy.values())
            for _, by_proxy in sorted(screen.items(), key=lambda kv: int(kv[0]))]
    rows = [r for r in rows if all(answer in one for one in r)]
    if not rows:
        raise KeyError(f"no screening holds the answer {answer!r}")
    return rows


def _screen_gain(screen: Dict, answer: str) -> Tuple[float, float, List[float]]:
    """Screening gain of ``answer`` over the identity: per search seed (of
    :func:`screened_seeds`) the mean over the fresh proxy seeds of (answer's reward − identity's
    reward); returns (mean, std over search seeds, per-seed gains)."""
    per_seed = [float(np.mean([r[answer] - r["identity"] for r in rows]))
                for rows in screened_seeds(screen, answer)]
    return (*mean_std(per_seed), per_seed)


def screened_answers(screen: Dict) -> List[str]:
    """Every answer screened for any search seed (first-seen order), the identity left out."""
    seen: Dict[str, None] = {}
    for by_proxy in screen.values():
        for r in by_proxy.values():
            seen.update((a, None) for a in r if a != "identity")
    return list(seen)


def best_so_far(trials: List[Dict], iterations: Optional[int] = None) -> List[float]:
    """Best "ok" sampled reward up to each iteration (index = iteration)."""
    trials = [t for t in trials if t.get("stage", "search") == "search"]
    n = iterations or (max(t["iteration"] for t in trials) + 1)
    best, out = -math.inf, []
    for it in range(n):
        best = max([best] + [t["reward"] for t in trials
                             if t["iteration"] == it and t["status"] == "ok"])
        out.append(best)
    return out
