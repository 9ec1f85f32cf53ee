"""Search-quality study: does the search find better losses than chance, at equal budget?

One :class:`StudyPlan` describes everything; :class:`SearchStudy` runs it, resumably (every search
is a resumable :class:`~segloss_d2.search.runner.SearchRunner` directory, every retraining and
every noise measurement a JSON file that is reused when present), and returns the numbers
:func:`segloss_d2.search.study_report.write_report` turns into tables and plots::

    plan = PLANS["quick"].with_configs(search_config, train_config)
    study = SearchStudy(plan, "output/study_quick", log=print)
    results = study.run()

Phases (docs/search_study.md explains the design):

1. **reward noise**: the identity curves and a few random candidates, each trained as a proxy
   with several proxy seeds on one reward set: the seed-to-seed std of one θ's reward, against
   the spread of rewards across θ at one seed;
2. **searches**: per target metric and search seed, PPO (the paper's) and random search
   (``SEARCH.METHOD random``) with the same number of proxy trainings;
3. **constraint ablation**: PPO searches of one target with ``SEARCH.CONSTRAINTS`` =
   ``no_truth_table``, ``no_monotonic``, ``none`` (``all`` is the PPO search of phase 2);
4. **retraining**: the best sampled θ of every search, and the unsearched losses (cross-entropy,
   ``naive`` identity curves, the released VOC preset of the target), each trained from scratch with
   every training seed and evaluated on the validation split;
5. **proxy fidelity**: candidates of one search spread over its reward range, retrained fully: the
   Spearman rank correlation between proxy reward and retrained target metric.
"""
import dataclasses
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..surrogate.params import METRICS
from .ppo import PPOController
from .space import REWARD_KEYS
from .state import META

__all__ = ["StudyPlan", "PLANS", "SearchStudy", "spearman", "mean_std", "UNSEARCHED",
           "PRESET_OF_TARGET", "EVAL_KEY", "METHODS", "rewards_across_seeds", "best_so_far"]

UNSEARCHED = ("cross_entropy", "naive", "preset")
"""The losses every searched one is compared with: CE, the identity curves, the released preset."""

PRESET_OF_TARGET = {"mIoU": "voc_miou", "fwIoU": "voc_fwiou", "BIoU": "voc_biou",
                    "BF1": "voc_bf1", "mACC": "voc_macc", "pACC": "voc_gacc"}
"""The released (VOC-searched) parameters of each target: the transfer baseline."""

METHODS = {
    "ppo": (),
    "ppo_joint": ("SEARCH.RATIO", "joint"),
    "random": ("SEARCH.METHOD", "random"),
}
"""Search method of the study -> its config overrides (``ppo``: the search config as it is)."""

EVAL_KEY = REWARD_KEYS
"""Search target -> the evaluator's key of the same metric (the same name, aliases mapped)."""


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
        ablation_target (str): target of the constraint ablation ("" = none).
        ablation_seeds (tuple of int): search seeds of the ablation.
        fidelity_candidates (int): candidates of the fidelity check (0 = none).
        noise_seeds (tuple of int): proxy seeds of the reward-noise measurement.
        noise_thetas (int): candidates of the noise measurement (the identity + random ones).
        search_config, train_config (str): config files of the searches and of the retraining.
        search_opts (tuple): extra KEY, VALUE overrides of every search config.
        pretrain_iters (int): 0 = proxies and retrained models start from random weights; else
            from the train config's model pretrained with cross-entropy for that many
            iterations on segloss_shapes_pretrain (:func:`segloss_d2.pretrain.pretrained_weights`,
            the toy's ImageNet); the noise phase then also measures the from-scratch proxy.
        methods (tuple of str): the search methods compared, keys of :data:`METHODS`; the first
            is the one of the constraint ablation and the fidelity check.
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
    ablation_target: str
    ablation_seeds: Tuple[int, ...]
    fidelity_candidates: int
    noise_seeds: Tuple[int, ...]
    noise_thetas: int = 4
    search_config: str = ""
    train_config: str = ""
    search_opts: Tuple = ()
    pretrain_iters: int = 0
    methods: Tuple[str, ...] = ("ppo", "random")

    def with_configs(self, search_config: str, train_config: str) -> "StudyPlan":
        """A copy with the two config files set."""
        return dataclasses.replace(self, search_config=search_config, train_config=train_config)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        bad = [t for t in self.targets if t not in METRICS]
        if not self.targets or bad:
            raise ValueError(f"StudyPlan.targets must be metrics among {list(METRICS)}, got "
                             f"{self.targets}")
        if self.ablation_target and self.ablation_target not in self.targets:
            raise ValueError(f"StudyPlan.ablation_target {self.ablation_target!r} must be one of "
                             f"the targets {self.targets} (its 'all' run is the PPO search)")
        for name in ("search_seeds", "train_seeds", "noise_seeds"):
            if not getattr(self, name):
                raise ValueError(f"StudyPlan.{name} must not be empty")
        if (isinstance(self.pretrain_iters, bool) or not isinstance(self.pretrain_iters, int)
                or self.pretrain_iters < 0):
            raise ValueError(f"StudyPlan.pretrain_iters must be an int >= 0, got "
                             f"{self.pretrain_iters!r}")
        for name in ("iterations", "samples_per_iter", "proxy_iters", "holdout_size",
                     "retrain_iters", "noise_thetas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"StudyPlan.{name} must be an int >= 1, got {value!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if not self.methods or bad:
            raise ValueError(f"StudyPlan.methods must be among {sorted(METHODS)}, got "
                             f"{self.methods}")
        if self.samples_per_iter < 2:
            raise ValueError("StudyPlan.samples_per_iter must be >= 2 (PPO spends one on mu)")
        for name in ("search_config", "train_config"):
            if not os.path.isfile(getattr(self, name)):
                raise ValueError(f"StudyPlan.{name}: no config file {getattr(self, name)!r}")


PLANS = {
    # What a reviewer runs: every phase on small budgets (about 13 minutes on 2 CPU cores).
    "quick": StudyPlan(
        name="quick", targets=("BF1", "mIoU"), search_seeds=(1, 2), train_seeds=(1, 2),
        iterations=3, samples_per_iter=6, proxy_iters=60, holdout_size=40, retrain_iters=200,
        ablation_target="mIoU", ablation_seeds=(1,), fidelity_candidates=8,
        noise_seeds=(1, 2, 3), search_opts=("SOLVER.BASE_LR", 0.05), pretrain_iters=300,
    ),
    # The study of docs/search_study.md: 4 x 8 proxies of 100 iterations fine-tuned from the
    # pretrained weights, 3 search seeds x 3 training seeds (about 70 minutes on 2 CPU cores;
    # add the paper's joint PPO ratio with --set methods ppo,ppo_joint,random).
    "full": StudyPlan(
        name="full", targets=("BF1", "mIoU"), search_seeds=(1, 2, 3), train_seeds=(1, 2, 3),
        iterations=4, samples_per_iter=8, proxy_iters=100, holdout_size=40, retrain_iters=400,
        ablation_target="mIoU", ablation_seeds=(1,), fidelity_candidates=8,
        noise_seeds=(1, 2, 3, 4, 5), search_opts=("SOLVER.BASE_LR", 0.05), pretrain_iters=300,
    ),
}


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


def rewards_across_seeds(cfg, thetas, seeds: Sequence[int]) -> Dict[int, List[float]]:
    """Proxy rewards of candidates ``thetas`` ``(K, D)`` trained with each proxy seed of
    ``seeds`` on the search data of ``cfg`` (one hold-out split, ``SEARCH.SEED``'s): how much of
    a reward is the candidate and how much the seed. Returns {seed: [K rewards]}."""
    from .holdout import search_datasets
    from .trial import train_candidates

    train_dicts, reward_dicts = search_datasets(cfg)
    return {int(seed): [r["reward"] for r in train_candidates(cfg, thetas, train_dicts,
                                                              reward_dicts, seed=int(seed))]
            for seed in seeds}


def _comparable(plan_dict: Dict) -> Dict:
    """A plan as compared on resume: config files by name (a study may move with its checkout)."""
    return {k: os.path.basename(v) if k.endswith("_config") else v for k, v in plan_dict.items()}


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


class SearchStudy:
    """Runs a :class:`StudyPlan` in ``output_dir`` (resumable: finished work is reused).

    Args:
        plan (StudyPlan): validated here.
        output_dir (str): holds ``search/``, ``retrain/``, ``noise/`` and ``timings.json``.
        log (callable): progress lines.
    """

    def __init__(self, plan: StudyPlan, output_dir: str, log: Callable[[str], None] = print):
        plan.validate()
        self.plan, self.out, self.log = plan, output_dir, log
        os.makedirs(output_dir, exist_ok=True)
        plan_path = os.path.join(output_dir, "plan.json")
        plan_dict = json.loads(json.dumps(dataclasses.asdict(plan)))
        if os.path.exists(plan_path) and _comparable(_read_json(plan_path)) != _comparable(
                plan_dict):
            raise ValueError(f"{output_dir} holds a study with another plan ({plan_path}); "
                             "choose another --output-dir or delete it")
        _write_json(plan_path, plan_dict)
        self._timings_path = os.path.join(output_dir, "timings.json")
        self.timings = _read_json(self._timings_path) if os.path.exists(
            self._timings_path) else {}

    # ------------------------------------------------------------------ configs
    def weights(self) -> str:
        """``MODEL.WEIGHTS`` of proxies and retrained models ("" = random initialization)."""
        if not self.plan.pretrain_iters:
            return ""
        from ..pretrain import pretrained_weights

        return pretrained_weights(self.plan.train_config, self.plan.pretrain_iters)

    def search_cfg(self, target: str, seed: int, method: str = "ppo", constraints: str = "all",
                   scratch: bool = False):
        """The frozen config of one search of the study (``scratch``: the search config's own
        proxy, from random weights, whatever the plan says)."""
        from ..engine import get_segloss_cfg

        p = self.plan
        cfg = get_segloss_cfg()
        cfg.merge_from_file(p.search_config)
        out = self.search_dir(target, seed, method, constraints)
        cfg.merge_from_list([
            "SEARCH.TARGET_METRIC", target, "SEARCH.SEED", seed,
            "SEARCH.CONSTRAINTS", constraints, "SEARCH.ITERATIONS", p.iterations,
            "SEARCH.SAMPLES_PER_ITER", p.samples_per_iter, "SEARCH.PROXY.MAX_ITER", p.proxy_iters,
            "SEARCH.HOLDOUT.SIZE", p.holdout_size, *METHODS[method],
            *(() if scratch else (*p.search_opts, "MODEL.WEIGHTS", self.weights())),
            "OUTPUT_DIR", out, "SEARCH.OUTPUT_DIR", out,
        ])
        cfg.freeze()
        return cfg

    def search_dir(self, target, seed, method="ppo", constraints="all") -> str:
        return os.path.join(self.out, "search", f"{target}_{method}_{constraints}_s{seed}")

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
                    "MODEL.SEM_SEG_HEAD.SURROGATE.METRICS", [target]]
        if loss == "preset":
            return ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                    "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", PRESET_OF_TARGET[target]]
        raise ValueError(f"unknown unsearched loss {loss!r}; expected one of {UNSEARCHED}")

    # ------------------------------------------------------------------ phases
    def _search_line(self, line: str) -> None:
        if line.startswith("[search] iteration"):  # one line per iteration, not per trial
            self.log("  " + line)

    def _timed(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds
        _write_json(self._timings_path, self.timings)

    def search(self, target, seed, method="ppo", constraints="all") -> Dict:
        """Run (or finish, or reuse) one search; returns its trials and best params path."""
        from .runner import SearchRunner
        from .state import SearchState

        cfg = self.search_cfg(target, seed, method, constraints)
        out = cfg.SEARCH.OUTPUT_DIR
        best = os.path.join(out, "best_params.json")
        done = os.path.exists(best) and os.path.exists(os.path.join(out, "final_mu_params.json"))
        if not done:
            start = time.perf_counter()
            self.log(f"[study] search {target} {method} constraints={constraints} seed {seed}")
            resume = os.path.exists(os.path.join(out, META))
            SearchRunner(cfg, resume=resume, log=self._search_line).run()
            self._timed("searches", time.perf_counter() - start)
        trials = SearchState.resume(out, _fingerprint_config(cfg)).all_trials()
        return {"trials": trials, "best_params": best}

    def retrain(self, target: str, name: str, train_seed: int, loss_opts: List) -> Dict:
        """Train the tiny model from scratch with one loss and seed (or reuse the result);
        returns the evaluator's results on the validation split (percent)."""
        from ..compare import train_and_evaluate
        from ..engine import get_segloss_cfg

        out = os.path.join(self.out, "retrain", target, f"{name}_t{train_seed}")
        path = os.path.join(out, "study_results.json")
        if os.path.exists(path):
            return _read_json(path)["results"]
        start = time.perf_counter()
        cfg = get_segloss_cfg()
        cfg.merge_from_file(self.plan.train_config)
        cfg.merge_from_list(["SOLVER.MAX_ITER", self.plan.retrain_iters, "SEED", train_seed,
                             "MODEL.WEIGHTS", self.weights(), "OUTPUT_DIR", out, *loss_opts])
        cfg.freeze()
        try:
            _, results = train_and_evaluate(cfg)
        except FloatingPointError as e:  # a diverged loss scores nothing
            self.log(f"[study] retrain {target} {name} seed {train_seed} diverged: {e}")
            results = {"diverged": str(e)}
        _write_json(path, {"loss_opts": [str(v) for v in loss_opts], "results": results})
        self._timed("retraining", time.perf_counter() - start)
        key = EVAL_KEY[target]
        self.log(f"[study] retrain {target} {name} seed {train_seed}: {key} "
                 f"{results.get(key, math.nan):.2f}")
        return results

    def reward_noise(self, target: str, scratch: bool = False) -> Dict:
        """Rewards of ``noise_thetas`` candidates (row 0: the identity curves) under every proxy
        seed, on the hold-out split of the first search seed (``scratch``: with the from-scratch
        proxy of the search config)."""
        from .runner import build_controller

        p = self.plan
        path = os.path.join(self.out, "noise", f"{target}{'_scratch' if scratch else ''}.json")
        cached = _read_json(path) if os.path.exists(path) else {"rewards": {}}
        cfg = self.search_cfg(target, p.search_seeds[0], scratch=scratch)
        controller = build_controller(cfg)
        thetas = PPOController(controller.dim, controller.mu.tolist(),
                               sigma=float(cfg.SEARCH.SIGMA), seed=0).sample(p.noise_thetas)
        for seed in p.noise_seeds:
            if str(seed) in cached["rewards"]:
                continue
            start = time.perf_counter()
            rewards = rewards_across_seeds(cfg, thetas, [seed])[seed]
            cached["rewards"][str(seed)] = rewards
            cached["thetas"] = thetas.tolist()
            _write_json(path, cached)
            self._timed("noise", time.perf_counter() - start)
            self.log(f"[study] noise {target}{' (scratch proxy)' if scratch else ''} proxy seed "
                     f"{seed}: {[round(r, 4) for r in rewards]}")
        return cached

    def fidelity(self, target: str, trials: List[Dict], train_seed: int) -> List[Dict]:
        """Retrain ``fidelity_candidates`` distinct candidates spread over the reward range of
        ``trials`` (one search); returns [{reward, retrained, theta}] ordered by reward."""
        from ..surrogate.params import save_params
        from .trial import theta_to_params

        ok = sorted((t for t in trials if t["status"] == "ok"), key=lambda t: t["reward"])
        unique, seen = [], set()
        for t in ok:
            key = tuple(round(v, 6) for v in t["theta"])
            if key not in seen:
                seen.add(key)
                unique.append(t)
        k = min(self.plan.fidelity_candidates, len(unique))
        picks = [unique[i] for i in np.unique(np.linspace(0, len(unique) - 1, k).round()
                                               .astype(int))]
        cfg = self.search_cfg(target, self.plan.search_seeds[0])
        out = []
        for t in picks:
            name = f"fidelity_it{t['iteration']}_{t['index']}"
            params_path = os.path.join(self.out, "retrain", target, name + ".json")
            if not os.path.exists(params_path):
                save_params(theta_to_params(cfg, t["theta"], reward=t["reward"]), params_path)
            results = self.retrain(target, name, train_seed,
                                   self.loss_opts(target, "", params_path))
            out.append({"reward": t["reward"], "retrained": results.get(EVAL_KEY[target]),
                        "iteration": t["iteration"], "index": t["index"]})
        return out

    def run(self) -> Dict:
        """Run every phase (reusing finished work); returns the collected results."""
        p = self.plan
        results = {"plan": dataclasses.asdict(p), "noise": {}, "noise_scratch": {},
                   "searches": {}, "retrain": {}, "ablation": {}, "fidelity": {}}
        for target in p.targets:
            results["noise"][target] = self.reward_noise(target)
            if p.pretrain_iters:
                results["noise_scratch"][target] = self.reward_noise(target, scratch=True)
        for target in p.targets:
            for method in p.methods:
                for seed in p.search_seeds:
                    results["searches"][f"{target}/{method}/{seed}"] = self.search(
                        target, seed, method)["trials"]
        if p.ablation_target:
            for constraints in ("all", "no_truth_table", "no_monotonic", "none"):
                for seed in p.ablation_seeds:
                    results["ablation"][f"{constraints}/{seed}"] = self.search(
                        p.ablation_target, seed, p.methods[0], constraints)["trials"]
        for target in p.targets:
            rows = results["retrain"][target] = {}
            for loss in UNSEARCHED:
                rows[loss] = [self.retrain(target, loss, ts, self.loss_opts(target, loss))
                              for ts in p.train_seeds]
            for method in p.methods:
                rows[method] = []
                for seed in p.search_seeds:
                    best = self.search_dir(target, seed, method) + "/best_params.json"
                    rows[method] += [self.retrain(target, f"{method}_s{seed}", ts,
                                                  self.loss_opts(target, "", best))
                                     for ts in p.train_seeds]
        if p.fidelity_candidates:
            target = p.targets[0]
            trials = results["searches"][f"{target}/{p.methods[0]}/{p.search_seeds[0]}"]
            results["fidelity"][target] = self.fidelity(target, trials, p.train_seeds[0])
        results["timings"] = dict(self.timings)
        return results


def _fingerprint_config(cfg):
    from .runner import search_fingerprint_config

    return search_fingerprint_config(cfg)


def best_so_far(trials: List[Dict], iterations: Optional[int] = None) -> List[float]:
    """Best "ok" reward up to each iteration (index = iteration)."""
    n = iterations or (max(t["iteration"] for t in trials) + 1)
    best, out = -math.inf, []
    for it in range(n):
        best = max([best] + [t["reward"] for t in trials
                             if t["iteration"] == it and t["status"] == "ok"])
        out.append(best)
    return out
