#!/usr/bin/env python
"""Search throughput on the tiny config: trials per hour of the search backends, as ratios.

    .venv/bin/python benchmarks/bench_search.py [--candidates 4] [--max-iter 20] [--no-ray]

Measured in one run on the same candidates (tiny DeepLabV3+ proxies on segloss_shapes, CPU):
- ``local`` with K = 1 vs K = 4 models per worker (one data pipeline for K models; target:
  >= 1.5x on CPU);
- ``ray`` with 1 vs 2 workers (1 CPU per task, K = 1), if Ray is installed.
The first measurement of each kind is preceded by a warm-up trial; the configurations are measured
alternately ``--repeats`` times and the fastest run of each counts (robust to other load on the
machine). Prints trials/hour, seconds per trial and the ratios against the K = 1 / 1-worker
baselines; also checks that every configuration produced the same rewards and metrics.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.search.backends import LocalBackend, RayBackend  # noqa: E402
from segloss_d2.search.settings import SearchSettings  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "shapes", "search_tiny_bf1.yaml")


def make_settings(args, opts=()):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(["SEARCH.PROXY.MAX_ITER", args.max_iter,
                         "SEARCH.HOLDOUT.SIZE", args.holdout] + list(opts))
    return SearchSettings.from_config(cfg)


def candidates(settings, n):
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor(settings.space.initial_mu())
    return torch.stack([mu] + [(mu + 0.2 * torch.randn(mu.shape, generator=g)).clamp(0, 1)
                               for _ in range(n - 1)])


def timed(backend, thetas):
    """(seconds, per-trial (reward, all metrics)) of evaluating ``thetas`` with ``backend``.

    The metrics are compared across configurations too: a short proxy can score reward 0 for
    every candidate, which would make a reward-only comparison vacuous.
    """
    results = {}
    start = time.perf_counter()
    backend(0, list(range(len(thetas))), thetas,
            lambda i, r: results.__setitem__(i, (r["reward"], r.get("metrics"))))
    return time.perf_counter() - start, [results[i] for i in range(len(thetas))]


def report(rows, baseline):
    base = rows[baseline][0]
    for name, (seconds, n, _) in rows.items():
        print(f"  {name:<26} {seconds / n:7.2f} s/trial {3600 * n / seconds:8.0f} trials/h "
              f"  x{base / seconds:.2f} vs {baseline}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=CONFIG)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--holdout", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    print(f"config {args.config_file}, {args.candidates} candidates, proxy MAX_ITER "
          f"{args.max_iter}, hold-out {args.holdout}, torch threads {torch.get_num_threads()}")

    thetas = candidates(make_settings(args), args.candidates)
    timed(LocalBackend(make_settings(args, ["SEARCH.MODELS_PER_WORKER", 1])), thetas[:1])  # warm-up
    rows = {}
    backends = {k: LocalBackend(make_settings(args, ["SEARCH.MODELS_PER_WORKER", k]))
                for k in (1, args.candidates)}
    for _ in range(args.repeats):
        for k, backend in backends.items():
            seconds, rewards = timed(backend, thetas)
            name = f"local K={k}"
            if name not in rows or seconds < rows[name][0]:
                rows[name] = (seconds, len(thetas), rewards)
    print("local backend:")
    report(rows, "local K=1")
    all_rows = dict(rows)

    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("ray backend: skipped (ray not installed; pip install 'ray>=2.9')")
            ray = None
        if ray is not None:
            rows = {}
            for workers in (1, 2):
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                backend = RayBackend(make_settings(args, ["SEARCH.BACKEND", "ray",
                                                          "SEARCH.MODELS_PER_WORKER", 1,
                                                          "SEARCH.RAY.CPUS_PER_TRIAL", 1]))
                timed(backend, thetas[:workers])  # warm-up: start the workers, load the data
                seconds, rewards = min(timed(backend, thetas) for _ in range(args.repeats))
                rows[f"ray {workers} worker(s)"] = (seconds, len(thetas), rewards)
                ray.shutdown()
            print("ray backend (1 CPU per task):")
            report(rows, "ray 1 worker(s)")
            all_rows.update(rows)

    reference = all_rows["local K=1"][2]
    print("rewards (and all metrics) per configuration; equal to local K=1? (a 1-CPU Ray task runs "
          "torch with 1 thread; on CPU another thread count changes float reduction order, so Ray "
          "matches local bit for bit only at equal thread counts, as tests/search pins)")
    for name, (_, _, results) in all_rows.items():
        print(f"  {name:<26} {[round(r, 4) for r, _ in results]} mIoU "
              f"{[round(m['mIoU'], 2) for _, m in results]} {results == reference}")


if __name__ == "__main__":
    main()
