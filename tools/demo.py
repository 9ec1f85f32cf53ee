#!/usr/bin/env python
"""`make demo`: the whole idea on the embedded synthetic dataset, on CPU, in minutes.

0. pretrain the tiny DeepLabV3+ with cross-entropy on segloss_shapes_pretrain (other scenes; the
   toy's ImageNet, cached after the first run): proxies and retrained models start from it;
1. search a surrogate for a boundary objective with proxies fine-tuned from those weights (PPO,
   docs/method.md §4), and measure the seed-to-seed noise of one candidate's reward, to tell
   learning from luck;
2. retrain the tiny model with cross-entropy, with the unsearched surrogate (``naive``: identity
   curves, where the search starts) and with the searched loss, each with ``--train-seeds``
   training seeds (same seeds, data order and schedule for every loss), evaluate them on
   segloss_shapes_val;
3. print all six metrics side by side (mean ± std over the training seeds), say whether the
   searched loss beats ``naive`` by more than the spread, and write plots to output/demo/.

Every step prints the elapsed time and an estimate of the time left.

A second run resumes the search (finished trials are not re-run); --fresh starts over.
"""
import argparse
import json
import os
import shutil
import sys
import time
import warnings

import numpy as np

# detectron2 v0.6 uses torch.jit.script at import time, which recent torch flags as deprecated.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/

from detectron2.utils.logger import setup_logger  # noqa: E402

from experiments.compare import comparison_table, plot_predictions, train_and_evaluate  # noqa: E402
from experiments.pretrain import pretrained_weights  # noqa: E402
from experiments.study import rewards_across_seeds  # noqa: E402
from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.search.plots import plot_reward_curve  # noqa: E402
from segloss_d2.search.runner import SearchRunner  # noqa: E402
from segloss_d2.search.settings import SearchSettings  # noqa: E402
from segloss_d2.search.space import SearchSpace  # noqa: E402
from segloss_d2.search.state import META, search_stage_trials  # noqa: E402
from segloss_d2.surrogate.params import load_params  # noqa: E402
from segloss_d2.visualize import plot_curves, plot_surfaces  # noqa: E402

TRAIN_CONFIG = "configs/shapes/Base-Tiny-DeepLabV3Plus.yaml"
SEARCH_CONFIGS = {"bf1": "configs/shapes/search_tiny_bf1.yaml",
                  "miou_bf1": "configs/shapes/search_tiny_miou_bf1.yaml"}
TARGET_KEY = {"bf1": "BF1", "miou_bf1": None}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=sorted(SEARCH_CONFIGS), default="bf1")
    p.add_argument("--output-dir", default="output/demo")
    p.add_argument("--retrain-iters", type=int, default=600)
    p.add_argument("--train-seeds", type=int, default=3,
                   help="training seeds of every retrained loss (mean ± std in the table)")
    p.add_argument("--noise-seeds", type=int, default=3,
                   help="extra proxy seeds of the identity candidate (reward noise)")
    p.add_argument("--pretrain-iters", type=int, default=300,
                   help="cross-entropy iterations of the pretrained initial weights")
    p.add_argument("--scratch", action="store_true",
                   help="proxies and retrained models from random weights (proxy lr 0.5), as "
                        "before the pretrained weights; the search then learns nothing reliable "
                        "(docs/search_study.md)")
    p.add_argument("--fresh", action="store_true", help="delete earlier demo outputs first")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE pairs overriding the search config, e.g. SEARCH.ITERATIONS 2")
    return p.parse_args()


def initial_weights(args):
    """("", None) from scratch, else (the pretrained weights, the train config's lr)."""
    if args.scratch:
        return "", None
    cfg = get_segloss_cfg()
    cfg.merge_from_file(TRAIN_CONFIG)
    print(f"[demo] 0/3 pretrained weights ({args.pretrain_iters} cross-entropy iterations on "
          "segloss_shapes_pretrain, cached)", flush=True)
    return pretrained_weights(TRAIN_CONFIG, args.pretrain_iters), cfg.SOLVER.BASE_LR


def search(args, out, weights, lr):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(SEARCH_CONFIGS[args.target])
    if weights:  # fine-tuned proxies train at the retraining's lr
        cfg.merge_from_list(["MODEL.WEIGHTS", weights, "SOLVER.BASE_LR", lr])
    cfg.merge_from_list(args.opts)
    cfg.OUTPUT_DIR = cfg.SEARCH.OUTPUT_DIR = os.path.join(out, f"search_{args.target}")
    cfg.freeze()
    resume = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, META))  # an earlier demo's search
    print(f"[demo] 1/3 search {cfg.SEARCH.TARGET_METRIC}: {cfg.SEARCH.ITERATIONS} iterations x "
          f"{cfg.SEARCH.SAMPLES_PER_ITER} candidates, proxy {cfg.SEARCH.PROXY.MAX_ITER} "
          f"iterations{' (resuming)' if resume else ''}", flush=True)
    try:
        settings = SearchSettings.from_config(cfg)
        runner = SearchRunner(settings, resume=resume, config_file=SEARCH_CONFIGS[args.target],
                              log=print)
    except ValueError as e:  # e.g. an earlier demo's search with other settings
        raise SystemExit(f"demo: {e}\n(pass --fresh to start the demo over)") from e
    runner.run()
    return settings, runner.state.all_trials()


def reward_noise(args, settings, trials):
    """Seed-to-seed std of the reward of the search's first mean (the identity curves): its
    reward in the search plus ``--noise-seeds`` proxy trainings with other seeds (cached)."""
    path = os.path.join(settings.output_dir, "reward_noise.json")
    seeds = [settings.seed + 1 + i for i in range(args.noise_seeds)]
    cached = {}
    if os.path.exists(path):
        with open(path) as f:
            cached = {int(k): v for k, v in json.load(f).items()}
    missing = [s for s in seeds if s not in cached]
    if missing:
        print(f"[demo] reward noise: the identity candidate with proxy seeds {missing}",
              flush=True)
        identity = settings.space.initial_mu()
        cached.update({s: r[0] for s, r in
                       rewards_across_seeds(settings, [identity], missing).items()})
        with open(path, "w") as f:
            json.dump(cached, f)
    first_mu = [t["reward"] for t in trials if t["iteration"] == 0 and t["index"] == 0]
    rewards = first_mu + [cached[s] for s in seeds]
    return float(np.std(rewards, ddof=1)) if len(rewards) > 1 else float("nan")


def learning_summary(trials, noise_std):
    """One line: mu's reward at the first and last iteration against the reward noise."""
    mu = sorted((t["iteration"], t["reward"])
                for t in search_stage_trials(trials, ok_only=False) if t["index"] == 0)
    first, last = mu[0][1], mu[-1][1]
    verdict = ("the search learned: mu's reward rose by more than the noise" if
               last - first > noise_std else
               "mu's reward did not rise by more than the noise: no evidence of learning")
    return (f"reward of the search mean mu: {first:.4f} (iteration 1) -> {last:.4f} (iteration "
            f"{mu[-1][0] + 1}), change {last - first:+.4f}; seed-to-seed std of one candidate's "
            f"reward {noise_std:.4f}: {verdict}")


class Progress:
    """Prints each step with the elapsed time and an estimate of the time left (from the
    retrainings done so far, or the search's speed before the first one)."""

    def __init__(self, total_retrains):
        self.start, self.total, self.done, self.retrain_time = time.perf_counter(), \
            total_retrains, 0, None

    def step(self, text):
        elapsed = time.perf_counter() - self.start
        left = "?" if self.retrain_time is None else _clock(
            self.retrain_time * (self.total - self.done))
        print(f"[demo] {text} | elapsed {_clock(elapsed)} | time left ~{left}", flush=True)

    def retrained(self, seconds):
        self.done += 1
        self.retrain_time = seconds if self.retrain_time is None else (
            (self.retrain_time * (self.done - 1) + seconds) / self.done)


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def retrain(args, out, weights, name, seed, progress, *opts):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(TRAIN_CONFIG)
    cfg.merge_from_list(["SOLVER.MAX_ITER", args.retrain_iters, "MODEL.WEIGHTS", weights,
                         "SEED", seed, "OUTPUT_DIR", os.path.join(out, f"{name}_t{seed}"), *opts])
    cfg.freeze()
    progress.step(f"2/3 retrain with {name}, training seed {seed} ({cfg.SOLVER.MAX_ITER} "
                  f"iterations; {progress.done + 1} of {progress.total})")
    start = time.perf_counter()
    model, results = train_and_evaluate(cfg)
    progress.retrained(time.perf_counter() - start)
    return cfg, model, results


def verdict(searched, naive, key):
    """Whether the searched loss beats ``naive`` on ``key`` by more than the spread: the mean and
    std of the paired differences (same training seed) over the seeds."""
    diffs = [s[key] - n[key] for s, n in zip(searched, naive)]
    mean = float(np.mean(diffs))
    std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan")
    if len(diffs) < 2:
        word = "one training seed: no spread to judge by"
    elif mean > std:
        word = "the searched loss BEATS naive by more than the spread"
    elif mean < -std:
        word = "the searched loss is WORSE than naive by more than the spread"
    else:
        word = "the searched loss does NOT beat naive: the difference is within the spread"
    return (f"searched vs naive {key}: {np.mean([s[key] for s in searched]):.2f} vs "
            f"{np.mean([n[key] for n in naive]):.2f}, paired difference {mean:+.2f} ± {std:.2f} "
            f"over {len(diffs)} training seeds: {word}")


def main():
    args = parse_args()
    out = args.output_dir
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    for name, abbrev in (("detectron2", "d2"), ("segloss_d2", "segloss")):  # progress every 20 it
        setup_logger(os.path.join(out, "log.txt"), name=name, abbrev_name=abbrev)
    seeds = list(range(1, args.train_seeds + 1))
    progress = Progress(3 * len(seeds))

    weights, lr = initial_weights(args)
    settings, trials = search(args, out, weights, lr)
    target = settings.target
    best = os.path.join(settings.output_dir, "best_params.json")
    params = load_params(best)
    noise_std = reward_noise(args, settings, trials)
    summary = learning_summary(trials, noise_std)
    progress.step(summary)
    plot_curves(params, os.path.join(out, "searched_curves.png"),
                title=f"{target} surrogate found by the search "
                      f"({params.provenance.get('selection', 'best sampled')}; proxy reward "
                      f"{params.reward:.3f}); dashed: the identity curves where the search starts "
                      "(the naive surrogate)")
    plot_surfaces(params, os.path.join(out, "searched_surfaces.png"),
                  title=f"searched {target} surrogate: h_AND / h_OR")
    plot_reward_curve(search_stage_trials(trials, ok_only=False),
                      os.path.join(out, "reward_curve.png"), target, noise_std=noise_std)

    losses = [("cross_entropy", ("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy")),
              (f"naive {target} (unsearched)", ("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "naive",
                                                "MODEL.SEM_SEG_HEAD.SURROGATE.METRICS",
                                                SearchSpace.parse_target(target))),
              (f"searched {target}", ("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                                      "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", best))]
    runs, models = {}, []
    for name, opts in losses:
        for seed in seeds:
            cfg, model, results = retrain(args, out, weights, name.split()[0], seed, progress,
                                          *opts)
            runs.setdefault(name, []).append(results)
            if seed == seeds[0]:
                models.append((name, model))
                test_cfg = cfg

    progress.step("3/3 results on segloss_shapes_val (percent; mean ± std over training seeds "
                  f"{seeds})")
    rows = list(runs.items())
    table = comparison_table(rows, target=TARGET_KEY[args.target])
    keys = ([TARGET_KEY[args.target]] if TARGET_KEY[args.target]
            else SearchSpace.parse_target(target))
    verdicts = [verdict(runs[losses[2][0]], runs[losses[1][0]], key) for key in keys]
    print(table)
    print(f"[demo] search: {summary}")
    for line in verdicts:
        print(f"[demo] {line}")
    plot_predictions(models, test_cfg.DATASETS.TEST[0], os.path.join(out, "predictions.png"),
                     input_format=test_cfg.INPUT.FORMAT)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({name: r for name, r in rows}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n\n" + summary + "\n\n" + "\n".join(verdicts) + "\n")
    print(f"[demo] done in {_clock(time.perf_counter() - progress.start)}; plots and results "
          f"in {out}/:")
    for name in sorted(os.listdir(out)):
        if name.endswith((".png", ".md", ".json")):
            print("   ", os.path.join(out, name))


if __name__ == "__main__":
    main()
