"""A whole search from its settings: open the state, run, write the results.

::

    cfg = get_segloss_cfg(); cfg.merge_from_file("configs/shapes/search_tiny_bf1.yaml")
    settings = SearchSettings.from_config(cfg)           # every key checked, nothing written
    runner = SearchRunner(settings, resume=False, config_file="configs/shapes/search_tiny_bf1.yaml")
    result = runner.run()       # SearchResult(best_trial, final_mu, selected)

Everything that can be wrong raises before anything is written: the config's keys, datasets and
``MODEL.WEIGHTS`` in :meth:`~segloss_d2.search.settings.SearchSettings.from_config`; the reward
set's files, a trainer that cannot build a proxy, a directory held by another process, a corrupt
or foreign state directory on resume, an existing search without resume or overwrite in the
constructor. The state holds the directory's lock from the constructor until
:meth:`SearchRunner.run` returns (or :meth:`SearchRunner.close`).

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
from typing import Any, Dict, Optional

import torch

from ..surrogate.params import save_params
from .backends import build_backend, import_ray
from .guard import RewardGuard
from .holdout import search_datasets
from .loop import SearchResult, run_search
from .ppo import CONTROLLERS, PPOController
from .seeds import iteration_seed
from .settings import ProxySettings, SearchSettings
from .state import SearchState, search_stage_trials

__all__ = [
    "build_controller",
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


def check_reward_set(settings: SearchSettings, reward_dicts) -> None:
    """Decode every image and label of the reward set (every trial reads them all): a corrupt
    file is refused up front (:class:`~segloss_d2.data.errors.CorruptFileError`, naming the
    dataset and the file) instead of failing the first trial after the state was written."""
    from ..data.errors import CorruptFileError, decode_image_file

    for d in reward_dicts:
        for key, kind in (("file_name", "image"), ("sem_seg_file_name", "label")):
            try:
                decode_image_file(d[key])
            except Exception as e:  # truncated, not an image, unreadable
                raise CorruptFileError(settings.data.reward_set, d[key], kind, e) from e


def check_proxy_builds(proxy: ProxySettings) -> None:
    """Build one proxy on the CPU with ``SEARCH.TRAINER``'s ``build_model``, ``build_optimizer``
    and ``build_lr_scheduler`` (what every trial does): a trainer that cannot make a proxy is
    refused before anything is written."""
    from .trial import _quiet

    dry = proxy.cfg.clone()
    dry.defrost()
    dry.MODEL.DEVICE, dry.MODEL.WEIGHTS = "cpu", ""
    dry.freeze()
    trainer, step = proxy.trainer, "build_model"
    try:
        with _quiet("detectron2.engine.defaults"):  # build_model logs the whole model
            model = trainer.build_model(dry)
        step = "build_optimizer"
        optimizer = trainer.build_optimizer(dry, model)
        step = "build_lr_scheduler"
        trainer.build_lr_scheduler(dry, optimizer)
    except Exception as e:  # whatever the user's Trainer raises
        raise ValueError(
            f"SEARCH.TRAINER {proxy.trainer_path!r} cannot build a proxy: {step} raised "
            f"{type(e).__name__}: {e}. Use segloss_d2.engine.SegLossTrainer (it knows DeepLab's "
            "WarmupPolyLR schedule and segloss_d2's heads) or a Trainer whose build_* methods "
            "handle this config") from None


def _guarded(evaluate_fn, guard: RewardGuard):
    """``evaluate_fn`` with the guard applied to every result it reports or returns."""
    def evaluate(iteration, indices, thetas, on_trial_done, **kwargs):
        returned = evaluate_fn(iteration, indices, thetas,
                               lambda i, result: on_trial_done(i, guard.apply_to(result)),
                               **kwargs)
        return None if returned is None else [guard.apply_to(r) for r in returned]

    return evaluate


def _guard_reference(settings: SearchSettings, state: SearchState, guard: RewardGuard,
                     log) -> RewardGuard:
    """The guard with its reference: given in the config, recorded by an earlier run of this
    search, or measured now (the proxy trained with cross-entropy) and recorded."""
    if guard.reference is not None:
        return guard
    recorded = state.recorded("guard_reference")
    if recorded is None:
        from .trial import train_reference

        log(f"[search] guard {guard.expression}: training the cross-entropy reference proxy")
        result = train_reference(settings, *search_datasets(settings),
                                 seed=iteration_seed(settings.seed, settings.proxy.seeds, 0))
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


def build_controller(settings: SearchSettings) -> PPOController:
    """The controller of a search (``SEARCH.METHOD``: PPO or random search), starting at the
    identity curves (docs/method.md)."""
    c, space = settings.controller, settings.space
    schedule = ({"sigma_end": c.sigma_end, "iterations": settings.iterations} if c.sigma_end
                else {})
    return CONTROLLERS[c.method](
        space.dim, space.initial_mu(), sigma=c.sigma, mu_lr=c.mu_lr, ppo_steps=c.ppo_steps,
        clip_eps=c.clip_eps, ratio=c.ratio, baseline=c.baseline, seed=settings.seed,
        advantage=c.advantage, mirrored=c.mirrored, max_mu_step=c.max_mu_step, **schedule,
    )


def write_search_results(settings: SearchSettings, state: SearchState, result: SearchResult,
                         config_file: str = "") -> Dict[str, str]:
    """Write ``best_params.json`` (the answer: the selected candidate with
    ``SEARCH.SELECTION.TOP_K``, else the best sampled one), ``final_mu_params.json``,
    ``best_sampled_params.json`` (with a selection) and the PNGs; returns their paths.

    Raises:
        SearchFailedError: no trial succeeded (every one diverged); only ``reward_curve.png`` is
            written then, no params file (the final mean would be the starting curves).
    """
    from .plots import plot_reward_curve, plot_searched_curves

    out, space = state.output_dir, settings.space
    paths = {"reward_curve": os.path.join(out, "reward_curve.png")}
    trials = search_stage_trials(state.all_trials(), ok_only=False)
    mu_is_sample_0 = settings.controller.mu_is_sample_0
    if result.best_trial is None:
        plot_reward_curve(trials, paths["reward_curve"], settings.target,
                          title="every trial diverged", mu_is_sample_0=mu_is_sample_0)
        raise SearchFailedError(
            f"every one of the {len(trials)} trials diverged (non-finite loss, weights or "
            f"reward; see trials.jsonl in {out}), so the search learned nothing and no params "
            "file was written. Check the proxy's SOLVER.BASE_LR and MODEL.WEIGHTS and the data, "
            "then start over (--overwrite)."
        )
    base = {"source": "segloss_d2 search", "config_file": config_file,
            "target_metric": settings.target, "seed": settings.seed,
            "iterations": settings.iterations, "samples_per_iter": settings.samples_per_iter}
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
                f"{settings.selection.top_k} best sampled candidates and the final mean"),
                "candidate": chosen["source"], "search_reward": chosen["search_reward"],
                "fresh_rewards": chosen["rewards"],
                "candidates": [{"candidate": row["source"], "search_reward": row["search_reward"],
                                "mean_reward": row["mean_reward"]} for row in chosen["table"]]},
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
                    "iteration": settings.iterations, "index": None},
    )
    paths["final_mu_params"] = os.path.join(out, "final_mu_params.json")
    save_params(mu_params, paths["final_mu_params"])
    paths["final_mu_curves"] = os.path.join(out, "final_mu_curves.png")
    plot_searched_curves(mu_params, paths["final_mu_curves"], "final mean")
    plot_reward_curve(trials, paths["reward_curve"],
                      f"{settings.target} ({settings.controller.method})",
                      mu_is_sample_0=mu_is_sample_0)
    return paths


def search_runtime(settings: SearchSettings) -> Dict[str, Any]:
    """What runs the search and can change its numbers at round-off (recorded in the search
    state; a resume with another runtime is warned about): backend, device, torch threads
    (local) or CPUs per Ray task (Ray workers use that many threads), host, torch version."""
    b = settings.backend
    runtime = {"backend": b.name, "device": settings.device, "torch": torch.__version__}
    if b.name == "ray":
        runtime["cpus_per_trial"] = b.cpus_per_trial
        runtime["ray_address"] = b.ray_address
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
    """Runs a search (see the module docstring).

    Args:
        settings (SearchSettings): from :meth:`SearchSettings.from_config` (validated).
        resume (bool): continue the search in the output directory (re-running only unfinished
            trials) instead of starting a new one.
        config_file (str): recorded in the results' provenance.
        log (callable): receives the per-trial and per-iteration lines (default: logger.info).
        overwrite (bool): start a new search even if the output directory holds one, deleting
            that search's state and results (:data:`RESULT_FILES`); other files are kept.

    Raises:
        ValueError: a hold-out larger than the dataset, a trainer that cannot build a proxy,
            ``resume`` together with ``overwrite``, or (resume) a corrupt directory or one that
            belongs to another config.
        CorruptFileError: an image or label of the reward set cannot be decoded.
        SearchLockedError: another process holds the output directory.
        FileExistsError: a new search in a directory that already holds one (without
            ``overwrite``).
        FileNotFoundError: resume without state.
        ImportError: ``SEARCH.BACKEND ray`` without Ray installed.
        OSError: the output directory cannot be created or written.
    """

    def __init__(self, settings: SearchSettings, resume: bool = False, config_file: str = "",
                 log: Optional[Any] = None, overwrite: bool = False):
        if not isinstance(settings, SearchSettings):
            raise TypeError(f"SearchRunner takes SearchSettings.from_config(cfg), got "
                            f"{type(settings).__name__}")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: --resume continues the "
                             "search in the directory, --overwrite deletes it and starts over")
        if not settings.output_dir:
            raise ValueError("SEARCH.OUTPUT_DIR and OUTPUT_DIR are both empty")
        if settings.backend.name == "ray":
            import_ray()  # a clear ImportError now rather than after the state is created
        self.controller = build_controller(settings)
        # dry runs before writing anything: the hold-out split, the reward set's files, a proxy
        _, reward_dicts = search_datasets(settings)
        check_reward_set(settings, reward_dicts)
        check_proxy_builds(settings.proxy)
        self.settings = settings
        self.config_file = config_file
        self.log = log or logger.info
        out, runtime = settings.output_dir, search_runtime(settings)
        if resume:
            self.state = SearchState.resume(out, settings.fingerprint, runtime=runtime)
            for change in self.state.runtime_changes:
                self.log(f"[search] warning: resumed with another {change}; results will "
                         "differ from an uninterrupted run's at round-off")
        else:
            self.state = SearchState.create(out, settings.fingerprint, overwrite=overwrite,
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
        settings = self.settings
        try:
            guard = settings.guard
            if guard is not None:
                guard = _guard_reference(settings, self.state, guard, self.log)
            backend = build_backend(settings)
            board = _TensorBoard(self.state.output_dir, self.state)
            try:
                result = run_search(
                    self.controller, self.state,
                    backend if guard is None else _guarded(backend, guard), settings.iterations,
                    settings.samples_per_iter, log=self.log, on_iteration_end=board,
                    proxy_seed=lambda t: iteration_seed(settings.seed, settings.proxy.seeds, t),
                    selection=settings.selection,
                )
            finally:
                board.close()
                backend.close()
            paths = write_search_results(settings, self.state, result, self.config_file)
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
