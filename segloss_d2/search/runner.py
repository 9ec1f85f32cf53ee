"""A whole search from a detectron2 config: validate, open state, run, write the results.

::

    cfg = get_segloss_cfg(); cfg.merge_from_file("configs/shapes/search_tiny_bf1.yaml")
    runner = SearchRunner(cfg, resume=False, config_file="configs/shapes/search_tiny_bf1.yaml")
    result = runner.run()       # SearchResult(best_trial, final_mu, selected)

Everything that can be wrong (SEARCH values, datasets, unreachable ``MODEL.WEIGHTS``, a directory
held by another process, a corrupt or foreign state directory on resume, an existing search
without resume or overwrite) raises in the constructor, before anything is written. The state
holds the directory's lock from the constructor until :meth:`SearchRunner.run` returns (or
:meth:`SearchRunner.close`).

Outputs in ``SEARCH.OUTPUT_DIR`` (or ``OUTPUT_DIR``): ``meta.json``, ``trials.jsonl`` and
``controller.pt`` (:class:`SearchState`), TensorBoard event files (``reward/trial``,
``reward/mean``, ``reward/max``, ``reward/best``, ``mu/<d>``), ``best_params.json`` (the answer)
and ``final_mu_params.json`` (loadable with ``LOSS_TYPE searched`` + ``SURROGATE.PARAMS <path>``),
``best_sampled_params.json`` (with ``SEARCH.SELECTION.TOP_K``: the best sampled candidate, which
the selection may have overruled), ``reward_curve.png``, ``best_curves.png`` and
``final_mu_curves.png``.
"""
import glob
import logging
import math
import os
import socket
from numbers import Real
from typing import Any, Dict, Optional

import torch
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..checkpoint import check_model_weights
from ..modeling.heads import DeepLabV3PlusSegLossHead, LossFnHead, SemSegFPNSegLossHead
from ..surrogate.params import save_params
from .backends import BACKENDS, build_backend, import_ray
from .guard import RewardGuard
from .holdout import search_datasets
from .loop import SearchResult, run_search
from .ppo import ADVANTAGES, CONTROLLERS, PPOController
from .seeds import PROXY_SEED_MODES, iteration_seed, selection_seeds
from .selection import Selection
from .space import SearchSpace
from .state import SearchState, search_stage_trials
from .trial import validate_proxy_training

__all__ = [
    "validate_search_config",
    "search_output_dir",
    "search_fingerprint_config",
    "build_controller",
    "build_selection",
    "build_guard",
    "write_search_results",
    "search_runtime",
    "SearchFailedError",
    "SearchRunner",
]

logger = logging.getLogger(__name__)

# What a search writes besides its SearchState files; ``overwrite`` deletes exactly these.
RESULT_FILES = ("best_params.json", "best_sampled_params.json", "final_mu_params.json",
                "best_curves.png", "final_mu_curves.png", "reward_curve.png",
                "events.out.tfevents.*")


class SearchFailedError(RuntimeError):
    """The search finished without a single successful trial."""

# Keys that do not change a search's results: how it is run and where it writes. Everything else
# (target, data, proxy model and schedule, controller, seed, DATALOADER.NUM_WORKERS, which changes
# the augmentation streams) is part of the fingerprint checked on resume.
_NOT_FINGERPRINTED = (
    ("OUTPUT_DIR",),
    ("SEARCH", "OUTPUT_DIR"),
    ("SEARCH", "BACKEND"),
    ("SEARCH", "MODELS_PER_WORKER"),
    ("SEARCH", "RAY"),
    ("MODEL", "DEVICE"),
)


def _int_at_least(cfg, key: str, minimum: int) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")


def _number(cfg, key: str, low: float, high: float = float("inf"), low_open=True) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    ok = isinstance(value, Real) and not isinstance(value, bool) and value <= high and (
        value > low if low_open else value >= low)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high < 1e300 else "")
        raise ValueError(f"{key} must be a number {bound}, got {value!r}")


def _check_head_takes_loss_fn(cfg) -> None:
    """Every candidate trains with its own loss (``sem_seg_head.set_loss_fn``): the head must be
    a :class:`~segloss_d2.modeling.heads.LossFnHead`."""
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    segloss_heads = [DeepLabV3PlusSegLossHead.__name__, SemSegFPNSegLossHead.__name__]
    try:
        head = SEM_SEG_HEADS_REGISTRY.get(name)
    except KeyError as e:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NAME {name!r} is not registered in SEM_SEG_HEADS_REGISTRY; "
            f"the search needs a head that trains with a loss_fn, e.g. {segloss_heads}"
        ) from e
    if not (isinstance(head, type) and issubclass(head, LossFnHead)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NAME {name!r}: the search gives every candidate its own loss "
            f"(LossFnHead.set_loss_fn), but {getattr(head, '__module__', '?')}."
            f"{getattr(head, '__qualname__', head)} is not a segloss_d2.modeling.LossFnHead, so "
            f"every candidate would train with the head's own loss. Use one of segloss_d2's "
            f"heads {segloss_heads}, make one with segloss_d2.modeling.make_segloss_head({name!r}),"
            " or subclass LossFnHead in a head whose losses() use self.loss_fn"
        )


def validate_search_config(cfg) -> None:
    """Check every SEARCH key (and the ones the search needs); raises ValueError naming the key.

    ``MODEL.SEM_SEG_HEAD.NAME`` must be a registered
    :class:`~segloss_d2.modeling.heads.LossFnHead` (like
    :class:`~segloss_d2.modeling.heads.DeepLabV3PlusSegLossHead`): the search trains every
    candidate with its own loss through ``set_loss_fn``, which a stock detectron2 head lacks.
    Datasets are checked by :func:`~segloss_d2.search.holdout.search_datasets`.
    """
    SearchSpace.from_config(cfg)  # SEARCH.TARGET_METRIC, NUM_PIECES, CONSTRAINTS
    if cfg.SEARCH.METHOD not in CONTROLLERS:
        raise ValueError(f"SEARCH.METHOD must be one of {sorted(CONTROLLERS)}, got "
                         f"{cfg.SEARCH.METHOD!r}")
    for key in ("SEARCH.ITERATIONS", "SEARCH.SAMPLES_PER_ITER", "SEARCH.PPO_STEPS",
                "SEARCH.PROXY.MAX_ITER", "SEARCH.MODELS_PER_WORKER", "SOLVER.IMS_PER_BATCH"):
        _int_at_least(cfg, key, 1)
    _int_at_least(cfg, "SEARCH.SEED", 0)
    _int_at_least(cfg, "SEARCH.RAY.MAX_RETRIES", 0)
    if not cfg.SEARCH.HOLDOUT.DATASET:
        _int_at_least(cfg, "SEARCH.HOLDOUT.SIZE", 1)
    _number(cfg, "SEARCH.SIGMA", 0.0)
    _number(cfg, "SEARCH.MU_LR", 0.0)
    _number(cfg, "SEARCH.CLIP_EPS", 0.0, 1.0)
    if cfg.SEARCH.CLIP_EPS >= 1:
        raise ValueError(f"SEARCH.CLIP_EPS must be in (0, 1), got {cfg.SEARCH.CLIP_EPS!r}")
    _number(cfg, "SEARCH.RAY.CPUS_PER_TRIAL", 0.0)
    _number(cfg, "SEARCH.RAY.GPUS_PER_TRIAL", 0.0, low_open=False)
    if cfg.SEARCH.RATIO not in ("per_dim", "joint"):
        raise ValueError(f"SEARCH.RATIO must be 'per_dim' or 'joint', got {cfg.SEARCH.RATIO!r}")
    if cfg.SEARCH.BASELINE not in ("mu", "mean"):
        raise ValueError(f"SEARCH.BASELINE must be 'mu' or 'mean', got {cfg.SEARCH.BASELINE!r}")
    if cfg.SEARCH.BACKEND not in BACKENDS:
        raise ValueError(f"SEARCH.BACKEND must be one of {BACKENDS}, got {cfg.SEARCH.BACKEND!r}")
    _check_search_options(cfg)
    if (cfg.SEARCH.METHOD == "ppo" and cfg.SEARCH.BASELINE == "mu"
            and cfg.SEARCH.SAMPLES_PER_ITER < 2):
        raise ValueError("SEARCH.SAMPLES_PER_ITER must be >= 2 with SEARCH.BASELINE 'mu' (sample 0 "
                         "is the mean itself, the baseline)")
    _check_head_takes_loss_fn(cfg)
    validate_proxy_training(cfg)  # SEARCH.TRAINER, SOLVER.AMP.ENABLED vs MODEL.DEVICE


def _check_search_options(cfg) -> None:
    """The options of docs/method.md §4.6 (advantage, mirrored sampling, sigma schedule, trust
    region, proxy seeds, successive halving, selection)."""
    s = cfg.SEARCH
    if s.ADVANTAGE not in ADVANTAGES:
        raise ValueError(f"SEARCH.ADVANTAGE must be one of {ADVANTAGES}, got {s.ADVANTAGE!r}")
    if not isinstance(s.MIRRORED, bool):
        raise ValueError(f"SEARCH.MIRRORED must be True or False, got {s.MIRRORED!r}")
    _number(cfg, "SEARCH.SIGMA_END", 0.0, low_open=False)
    _number(cfg, "SEARCH.MAX_MU_STEP", 0.0, 1.0, low_open=False)
    if s.PROXY.SEEDS not in PROXY_SEED_MODES:
        raise ValueError(f"SEARCH.PROXY.SEEDS must be one of {PROXY_SEED_MODES}, got "
                         f"{s.PROXY.SEEDS!r}")
    halving = s.PROXY.HALVING
    ok = isinstance(halving, (list, tuple)) and all(
        isinstance(f, Real) and not isinstance(f, bool) and 0 < f < 1 for f in halving) and all(
        a < b for a, b in zip(halving, halving[1:]))
    if not ok:
        raise ValueError(f"SEARCH.PROXY.HALVING must be a list of increasing fractions of "
                         f"SEARCH.PROXY.MAX_ITER in (0, 1) (e.g. [0.5]), or [] for off; got "
                         f"{halving!r}")
    if halving and s.METHOD == "ppo" and s.ADVANTAGE != "rank":
        raise ValueError(
            f"SEARCH.PROXY.HALVING {list(halving)} stops the worse half of the proxies early, and "
            "their rewards are not comparable with fully trained ones: the PPO update can only "
            f"rank them; set SEARCH.ADVANTAGE 'rank' (got {s.ADVANTAGE!r})")
    rungs = [round(f * s.PROXY.MAX_ITER) for f in halving]
    if halving and (rungs[0] < 1 or len(set(rungs)) != len(rungs) or rungs[-1] >= s.PROXY.MAX_ITER):
        raise ValueError(f"SEARCH.PROXY.HALVING {list(halving)} of SEARCH.PROXY.MAX_ITER "
                         f"{s.PROXY.MAX_ITER} gives the stops {rungs}: they must be distinct "
                         "iterations in [1, MAX_ITER)")
    _int_at_least(cfg, "SEARCH.SELECTION.TOP_K", 0)
    _int_at_least(cfg, "SEARCH.SELECTION.SEEDS", 1)
    _number(cfg, "SEARCH.GUARD_REFERENCE", 0.0, 1.0, low_open=False)
    _number(cfg, "SEARCH.GUARD_PENALTY", 0.0, low_open=False)
    build_guard(cfg)  # SEARCH.REWARD_GUARD


def check_reward_set(cfg, reward_dicts) -> None:
    """Decode every image and label of the reward set (every trial reads them all): a corrupt
    file is refused up front (:class:`~segloss_d2.data.errors.CorruptFileError`, naming the
    dataset and the file) instead of failing the first trial after the state was written."""
    from ..data.errors import CorruptFileError, decode_image_file

    name = cfg.SEARCH.HOLDOUT.DATASET or f"hold-out of {cfg.DATASETS.TRAIN[0]}"
    for d in reward_dicts:
        for key, kind in (("file_name", "image"), ("sem_seg_file_name", "label")):
            try:
                decode_image_file(d[key])
            except Exception as e:  # truncated, not an image, unreadable
                raise CorruptFileError(name, d[key], kind, e) from e


def check_proxy_builds(cfg) -> None:
    """Build a candidate's loss and, on the CPU, one proxy with ``SEARCH.TRAINER``'s
    ``build_model``, ``build_optimizer`` and ``build_lr_scheduler`` (what every trial does):
    a loss key or a trainer that cannot make a proxy is refused before anything is written."""
    from ..modeling.build import build_surrogate_loss
    from .trial import _quiet, proxy_cfg, search_trainer

    space = SearchSpace.from_config(cfg)
    try:
        build_surrogate_loss(cfg, space.to_params(space.initial_mu()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"the candidates' loss cannot be built: {e}") from None
    trainer = search_trainer(cfg)
    dry = proxy_cfg(cfg).clone()
    dry.defrost()
    dry.MODEL.DEVICE, dry.MODEL.WEIGHTS = "cpu", ""
    dry.freeze()
    step = "build_model"
    try:
        with _quiet("detectron2.engine.defaults"):  # build_model logs the whole model
            model = trainer.build_model(dry)
        step = "build_optimizer"
        optimizer = trainer.build_optimizer(dry, model)
        step = "build_lr_scheduler"
        trainer.build_lr_scheduler(dry, optimizer)
    except Exception as e:  # whatever the user's Trainer raises
        raise ValueError(
            f"SEARCH.TRAINER {cfg.SEARCH.TRAINER!r} cannot build a proxy: {step} raised "
            f"{type(e).__name__}: {e}. Use segloss_d2.engine.SegLossTrainer (it knows DeepLab's "
            "WarmupPolyLR schedule and segloss_d2's heads) or a Trainer whose build_* methods "
            "handle this config") from None


def build_guard(cfg) -> Optional[RewardGuard]:
    """The :class:`~segloss_d2.search.guard.RewardGuard` of ``SEARCH.REWARD_GUARD`` (None when
    empty), with ``SEARCH.GUARD_REFERENCE`` as its reference when that is > 0."""
    s = cfg.SEARCH
    if not s.REWARD_GUARD:
        return None
    return RewardGuard.parse(s.REWARD_GUARD, penalty=float(s.GUARD_PENALTY),
                             reference=float(s.GUARD_REFERENCE) or None)


def _guarded(evaluate_fn, guard: RewardGuard):
    """``evaluate_fn`` with the guard applied to every result it reports or returns."""
    def evaluate(iteration, indices, thetas, on_trial_done, **kwargs):
        returned = evaluate_fn(iteration, indices, thetas,
                               lambda i, result: on_trial_done(i, guard.apply_to(result)),
                               **kwargs)
        return None if returned is None else [guard.apply_to(r) for r in returned]

    return evaluate


def _guard_reference(cfg, state: SearchState, guard: RewardGuard, log) -> RewardGuard:
    """The guard with its reference: given in the config, recorded by an earlier run of this
    search, or measured now (the proxy trained with cross-entropy) and recorded."""
    if guard.reference is not None:
        return guard
    recorded = state.recorded("guard_reference")
    if recorded is None:
        from .trial import train_reference

        log(f"[search] guard {guard.expression}: training the cross-entropy reference proxy")
        result = train_reference(cfg, *search_datasets(cfg),
                                 seed=iteration_seed(cfg.SEARCH.SEED, cfg.SEARCH.PROXY.SEEDS, 0))
        value = result["metrics"].get(guard.metric, math.nan) / 100.0
        if result["status"] != "ok" or not 0 < value <= 1:
            raise RuntimeError(
                f"the cross-entropy reference proxy of the guard {guard.expression!r} "
                f"{'diverged' if result['status'] != 'ok' else f'scored {guard.metric} {value}'}"
                f" ({result['error'] or result['metrics']}); set SEARCH.GUARD_REFERENCE to a "
                "reference value in (0, 1], or check the proxy's SOLVER settings")
        recorded = {"metric": guard.metric, "value": value, "metrics": result["metrics"]}
        state.record("guard_reference", recorded)
    if recorded["metric"] != guard.metric:
        raise ValueError(f"the recorded guard reference is of {recorded['metric']}, the guard "
                         f"{guard.expression!r} of {guard.metric}")
    log(f"[search] guard {guard.expression}: reference {guard.metric} {recorded['value']:.4f} "
        f"(cross-entropy proxy), threshold {guard.fraction * recorded['value']:.4f}")
    return guard.with_reference(recorded["value"])


def build_selection(cfg) -> Optional[Selection]:
    """The :class:`~segloss_d2.search.selection.Selection` of ``SEARCH.SELECTION`` (None when
    ``TOP_K`` is 0: the best sampled candidate is the answer, as in the paper)."""
    sel = cfg.SEARCH.SELECTION
    if not sel.TOP_K:
        return None
    return Selection(int(sel.TOP_K), selection_seeds(cfg.SEARCH.SEED, int(sel.SEEDS)))


def search_output_dir(cfg) -> str:
    """``SEARCH.OUTPUT_DIR``, or ``OUTPUT_DIR`` if empty."""
    return cfg.SEARCH.OUTPUT_DIR or cfg.OUTPUT_DIR


def _to_plain(node):
    if isinstance(node, dict):
        return {k: _to_plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_to_plain(v) for v in node]
    return node


def search_fingerprint_config(cfg) -> Dict[str, Any]:
    """The config as a JSON-able dict without the keys that do not change results (backend,
    models per worker, Ray settings, output paths, device), the target metric in its canonical
    spelling; what SearchState fingerprints."""
    plain = _to_plain(cfg)
    # one search whatever the spelling: "miou" and "mIoU" are the same target
    plain["SEARCH"]["TARGET_METRIC"] = SearchSpace.from_config(cfg).target
    not_fingerprinted = _NOT_FINGERPRINTED
    if cfg.SEARCH.PROXY.HALVING:  # halving ranks the proxies of a group: K changes the results
        not_fingerprinted = [p for p in not_fingerprinted if p != ("SEARCH", "MODELS_PER_WORKER")]
    for path in not_fingerprinted:
        node = plain
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return plain


def build_controller(cfg) -> PPOController:
    """The controller of a search config (``SEARCH.METHOD``: PPO or random search), starting at
    the identity curves (docs/method.md)."""
    s, space = cfg.SEARCH, SearchSpace.from_config(cfg)
    schedule = {"sigma_end": float(s.SIGMA_END), "iterations": s.ITERATIONS} if s.SIGMA_END else {}
    return CONTROLLERS[s.METHOD](
        space.dim, space.initial_mu(), sigma=float(s.SIGMA), mu_lr=float(s.MU_LR),
        ppo_steps=s.PPO_STEPS, clip_eps=float(s.CLIP_EPS), ratio=s.RATIO, baseline=s.BASELINE,
        seed=s.SEED, advantage=s.ADVANTAGE, mirrored=s.MIRRORED,
        max_mu_step=float(s.MAX_MU_STEP), **schedule,
    )


def write_search_results(cfg, state: SearchState, result: SearchResult,
                         config_file: str = "") -> Dict[str, str]:
    """Write ``best_params.json`` (the answer: the selected candidate with
    ``SEARCH.SELECTION.TOP_K``, else the best sampled one), ``final_mu_params.json``,
    ``best_sampled_params.json`` (with a selection) and the PNGs; returns their paths.

    Raises:
        SearchFailedError: no trial succeeded (every one diverged); only ``reward_curve.png`` is
            written then, no params file (the final mean would be the starting curves).
    """
    from .plots import plot_reward_curve, plot_searched_curves

    out, space = state.output_dir, SearchSpace.from_config(cfg)
    paths = {"reward_curve": os.path.join(out, "reward_curve.png")}
    trials = search_stage_trials(state.all_trials(), ok_only=False)
    mu_is_sample_0 = cfg.SEARCH.METHOD == "ppo" and cfg.SEARCH.BASELINE == "mu"
    if result.best_trial is None:
        plot_reward_curve(trials, paths["reward_curve"], cfg.SEARCH.TARGET_METRIC,
                          title="every trial diverged", mu_is_sample_0=mu_is_sample_0)
        raise SearchFailedError(
            f"every one of the {len(trials)} trials diverged (non-finite loss, weights or "
            f"reward; see trials.jsonl in {out}), so the search learned nothing and no params "
            "file was written. Check the proxy's SOLVER.BASE_LR and MODEL.WEIGHTS and the data, "
            "then start over (--overwrite)."
        )
    base = {"source": "segloss_d2 search", "config_file": config_file,
            "target_metric": cfg.SEARCH.TARGET_METRIC, "seed": int(cfg.SEARCH.SEED),
            "iterations": int(cfg.SEARCH.ITERATIONS),
            "samples_per_iter": int(cfg.SEARCH.SAMPLES_PER_ITER)}
    best = result.best_trial
    sampled = space.to_params(
        best["theta"], reward=best["reward"],
        provenance={**base, "selection": "best sampled theta by reward (ties: later)",
                    "iteration": best["iteration"], "index": best["index"],
                    "metrics": best["metrics"]},
    )
    title = f"best sampled (reward {best['reward']:.4f})"
    params, chosen = sampled, result.selected
    if chosen is not None:
        paths["best_sampled_params"] = os.path.join(out, "best_sampled_params.json")
        save_params(sampled, paths["best_sampled_params"])
        params = space.to_params(
            chosen["theta"], reward=chosen["mean_reward"],
            provenance={**base, "selection": (
                f"best mean reward over {len(chosen['rewards'])} fresh proxy seeds among the "
                f"{cfg.SEARCH.SELECTION.TOP_K} best sampled candidates and the final mean"),
                "source": chosen["source"], "search_reward": chosen["search_reward"],
                "fresh_rewards": chosen["rewards"],
                "candidates": [{k: row[k] for k in ("source", "search_reward", "mean_reward")}
                               for row in chosen["table"]]},
        )
        title = (f"selected: {chosen['source']} (mean reward {chosen['mean_reward']:.4f} over "
                 f"{len(chosen['rewards'])} fresh proxy seeds)")
    paths["best_params"] = os.path.join(out, "best_params.json")
    save_params(params, paths["best_params"])
    paths["best_curves"] = os.path.join(out, "best_curves.png")
    plot_searched_curves(params, paths["best_curves"], title)
    mu_params = space.to_params(
        result.final_mu,
        provenance={**base, "selection": "final mean of the search distribution",
                    "iteration": int(cfg.SEARCH.ITERATIONS), "index": None},
    )
    paths["final_mu_params"] = os.path.join(out, "final_mu_params.json")
    save_params(mu_params, paths["final_mu_params"])
    paths["final_mu_curves"] = os.path.join(out, "final_mu_curves.png")
    plot_searched_curves(mu_params, paths["final_mu_curves"], "final mean")
    plot_reward_curve(trials, paths["reward_curve"],
                      f"{cfg.SEARCH.TARGET_METRIC} ({cfg.SEARCH.METHOD})",
                      mu_is_sample_0=mu_is_sample_0)
    return paths


def search_runtime(cfg) -> Dict[str, Any]:
    """What runs the search and can change its numbers at round-off (recorded in the search
    state; a resume with another runtime is warned about): backend, device, torch threads
    (local) or CPUs per Ray task (Ray workers use that many threads), host, torch version."""
    runtime = {"backend": cfg.SEARCH.BACKEND, "device": cfg.MODEL.DEVICE,
               "torch": torch.__version__}
    if cfg.SEARCH.BACKEND == "ray":
        runtime["cpus_per_trial"] = float(cfg.SEARCH.RAY.CPUS_PER_TRIAL)
        runtime["ray_address"] = cfg.SEARCH.RAY.ADDRESS
    else:
        runtime["threads"] = torch.get_num_threads()
        runtime["host"] = socket.gethostname()
    return runtime


def _remove_results(out: str) -> None:
    for pattern in RESULT_FILES:
        for path in glob.glob(os.path.join(glob.escape(out), pattern)):
            os.remove(path)


class _TensorBoard:
    """Scalars per finished iteration (``on_iteration_end`` of run_search). Running values
    (``reward/best``) come from the whole trial log, so they continue across a resume."""

    def __init__(self, log_dir: str, state: SearchState):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir)
        self.state = state

    def __call__(self, t: int, stats: Dict[str, Any], records) -> None:
        w, m = self.writer, len(records)
        for r in records:
            w.add_scalar("reward/trial", r["reward"], t * m + r["index"])
        w.add_scalar("reward/mean", stats["reward_mean"], t)
        w.add_scalar("reward/max", stats["reward_max"], t)
        w.add_scalar("reward/baseline", stats["baseline"], t)
        ok = [r["reward"] for r in self.state.all_trials()
              if r["status"] == "ok" and r["iteration"] <= t]
        if ok:
            w.add_scalar("reward/best", max(ok), t)
        for d, v in enumerate(stats["mu"]):
            w.add_scalar(f"mu/{d}", v, t + 1)
        w.flush()

    def close(self):
        self.writer.close()


class SearchRunner:
    """Runs the search of a config (see the module docstring).

    Args:
        cfg (CfgNode): a config from ``get_segloss_cfg()`` with the search settings merged.
        resume (bool): continue the search in the output directory (re-running only unfinished
            trials) instead of starting a new one.
        config_file (str): recorded in the results' provenance.
        log (callable): receives the per-trial and per-iteration lines (default: logger.info).
        overwrite (bool): start a new search even if the output directory holds one, deleting
            that search's state and results (:data:`RESULT_FILES`); other files are kept.

    Raises:
        ValueError: bad SEARCH values, unregistered/empty datasets, a hold-out larger than the
            dataset, ``resume`` together with ``overwrite``, or (resume) a corrupt directory or
            one that belongs to another config.
        SearchLockedError: another process holds the output directory.
        FileExistsError: a new search in a directory that already holds one (without
            ``overwrite``).
        FileNotFoundError: resume without state, missing dataset files, or ``MODEL.WEIGHTS``
            that cannot be read (:class:`~segloss_d2.checkpoint.WeightsUnavailableError`).
        OSError: the output directory cannot be created or written.
    """

    def __init__(self, cfg, resume: bool = False, config_file: str = "",
                 log: Optional[Any] = None, overwrite: bool = False):
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: --resume continues the "
                             "search in the directory, --overwrite deletes it and starts over")
        validate_search_config(cfg)
        if cfg.SEARCH.BACKEND == "ray":
            import_ray()  # a clear ImportError now rather than after the state is created
        self.controller = build_controller(cfg)
        # fail before writing anything: data missing, too small or unreadable, weights that
        # cannot be loaded, a loss or trainer that cannot build a proxy
        _, reward_dicts = search_datasets(cfg)
        check_model_weights(cfg.MODEL.WEIGHTS)  # (downloads it once, as every trial loads it)
        check_reward_set(cfg, reward_dicts)
        check_proxy_builds(cfg)
        self.cfg = cfg
        self.config_file = config_file
        self.log = log or logger.info
        out = search_output_dir(cfg)
        if not out:
            raise ValueError("SEARCH.OUTPUT_DIR and OUTPUT_DIR are both empty")
        fingerprint_cfg = search_fingerprint_config(cfg)
        runtime = search_runtime(cfg)
        if resume:
            self.state = SearchState.resume(out, fingerprint_cfg, runtime=runtime)
            for change in self.state.runtime_changes:
                self.log(f"[search] warning: resumed with another {change}; results will "
                         "differ from an uninterrupted run's at round-off")
        else:
            self.state = SearchState.create(out, fingerprint_cfg, overwrite=overwrite,
                                            runtime=runtime)
            if overwrite:
                _remove_results(out)

    def close(self) -> None:
        """Release the output directory (done by :meth:`run`; idempotent)."""
        self.state.close()

    def run(self) -> SearchResult:
        """Run (or finish) the search, then write the results; returns the SearchResult.

        Raises:
            SearchFailedError: no trial succeeded (every one diverged); only the reward curve is
                written then, no params file.
        """
        cfg = self.cfg
        try:
            guard = build_guard(cfg)
            if guard is not None:
                guard = _guard_reference(cfg, self.state, guard, self.log)
            backend = build_backend(cfg)
            board = _TensorBoard(self.state.output_dir, self.state)
            try:
                result = run_search(
                    self.controller, self.state,
                    backend if guard is None else _guarded(backend, guard), cfg.SEARCH.ITERATIONS,
                    cfg.SEARCH.SAMPLES_PER_ITER, log=self.log, on_iteration_end=board,
                    proxy_seed=lambda t: iteration_seed(cfg.SEARCH.SEED, cfg.SEARCH.PROXY.SEEDS,
                                                        t),
                    selection=build_selection(cfg),
                )
            finally:
                board.close()
                backend.close()
            paths = write_search_results(cfg, self.state, result, self.config_file)
        finally:
            self.close()
        best = result.best_trial
        self.log(f"[search] done: best sampled reward {best['reward']:.4f} (iteration "
                 f"{best['iteration'] + 1}, index {best['index']})")
        if result.selected is not None:
            self.log(f"[search] answer (selection): {result.selected['source']}, mean reward "
                     f"{result.selected['mean_reward']:.4f} over fresh proxy seeds")
        for name, path in paths.items():
            self.log(f"[search] {name}: {path}")
        return result
