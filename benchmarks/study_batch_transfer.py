#!/usr/bin/env python
"""Does a θ searched at one batch size keep its advantage at another, under each statistics scope?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_batch_transfer.py
    .venv/bin/python benchmarks/study_batch_transfer.py --params voc_miou --seeds 1,2,3
    .venv/bin/python benchmarks/study_batch_transfer.py --table-only     # what is done so far

The default run (one search of 32 proxies, then 5 losses x 3 batch sizes x 2 seeds of 400
iterations) took about 40 CPU-minutes, single-threaded. Single-threaded processes (several side
by side, e.g. split with ``--losses``/``--seeds``) use a shared 2-core machine far better than
two threads each.

The reference repository's open question: must θ be re-searched when the batch per GPU changes?
With ``SURROGATE.STATS local`` (the reference's per-process statistics) the function a θ is applied
to changes with the per-process batch; ``image`` makes it independent of the batch
(docs/method.md §2.5). On one process ``global`` is ``local`` on the whole batch, so it is not a
separate row here.

1. θ: the best sampled θ of a PPO mIoU search with the search study's full-plan settings (search
   seed ``--search-seed``, ``local`` statistics, the study's batch of 8 images; run here and
   cached), or a params file / preset given with ``--params``.
2. Retraining, as the study's final training (the tiny DeepLabV3+ fine-tuned from the pretrained
   weights for ``--iters`` iterations at lr 0.05, evaluated on segloss_shapes_val), at each batch
   size of ``--batches`` (same iterations and lr), with cross-entropy, ``naive`` (identity curves,
   the search's starting point) and θ, the surrogates under each scope of ``--scopes``, with each
   training seed.
3. A table of val mIoU (mean ± std over the training seeds) and the advantage of θ over ``naive``
   and over cross-entropy at the same batch size and scope (paired by training seed).

Resumable: every training is a JSON file under ``--output-dir`` that is reused when present.
"""
import argparse
import dataclasses
import logging
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.study import PLANS, SearchStudy, mean_std  # noqa: E402

SEARCH_CONFIG = os.path.join(REPO, "configs", "shapes", "search_tiny_bf1.yaml")
TRAIN_CONFIG = os.path.join(REPO, "configs", "shapes", "Base-Tiny-DeepLabV3Plus.yaml")
TARGET = "mIoU"


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", default=os.path.join("output", "batch_transfer"))
    p.add_argument("--params", default="", help="a searched mIoU params file (default: search)")
    p.add_argument("--search-seed", type=int, default=1)
    p.add_argument("--batches", type=_ints, default=(4, 8, 16), help="IMS_PER_BATCH values")
    p.add_argument("--seeds", type=_ints, default=(1, 2), help="training seeds")
    p.add_argument("--scopes", default="local,image", help="SURROGATE.STATS values")
    p.add_argument("--iters", type=int, default=400, help="SOLVER.MAX_ITER of every training")
    p.add_argument("--losses", default="cross_entropy,naive,theta",
                   help="which losses to train (a subset, e.g. to split the work over processes)")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the table of the trainings finished so far")
    return p.parse_args(argv)


def _fmt(values):
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def main(argv=None):
    args = parse_args(argv)
    scopes = [s for s in args.scopes.split(",") if s]
    os.makedirs(args.output_dir, exist_ok=True)
    for name in ("detectron2", "fvcore", "segloss_d2"):  # their INFO lines go to a file only
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        handler = logging.FileHandler(os.path.join(args.output_dir, "log.txt"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    plan = PLANS["full"].with_configs(SEARCH_CONFIG, TRAIN_CONFIG)

    plan = dataclasses.replace(plan, retrain_iters=args.iters, search_seeds=(args.search_seed,))
    study = SearchStudy(plan, os.path.join(args.output_dir, "study"), log=print)
    params = args.params or study.search(TARGET, args.search_seed, "ppo")["best_params"]
    origin = (f"θ = {args.params}" if args.params else
              f"θ = best of a PPO mIoU search with the study's full plan (seed "
              f"{args.search_seed}, batch 8, local statistics)")
    print(origin)

    theta = "theta-" + (os.path.splitext(os.path.basename(args.params))[0] if args.params
                        else f"search_s{args.search_seed}")
    wanted = [n for n in args.losses.split(",") if n]
    losses = [("cross_entropy", None, study.loss_opts(TARGET, "cross_entropy"))]
    for scope in scopes:
        losses.append(("naive", scope, study.loss_opts(TARGET, "naive")))
        losses.append(("θ", scope, study.loss_opts(TARGET, "", params)))
    results = {}
    for seed in args.seeds:  # one seed of everything first: a partial run is already a table
        for batch in args.batches:
            for name, scope, opts in losses:
                tag = f"b{batch}_{name.replace('θ', theta)}_{scope or 'ce'}"
                extra = ["SOLVER.IMS_PER_BATCH", batch]
                if scope:
                    extra += ["MODEL.SEM_SEG_HEAD.SURROGATE.STATS", scope]
                done = os.path.exists(os.path.join(study.out, "retrain", TARGET,
                                                   f"{tag}_t{seed}", "study_results.json"))
                train = not args.table_only and name.replace("θ", "theta") in wanted
                if done or train:
                    r = study.retrain(TARGET, tag, seed, opts + extra)
                    results[batch, name, scope, seed] = r.get("mIoU")

    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        n = "" if len(values) == len(args.seeds) else f" (n={len(values)})"
        return _fmt(values) + n

    head = "| loss | scope | " + " | ".join(f"batch {b}" for b in args.batches) + " |"
    lines = [f"Val mIoU (%), mean ± std over training seeds {list(args.seeds)}; {origin}; "
             f"{args.iters} iterations at lr 0.05 at every batch size.", "",
             head, "|" + "---|" * (2 + len(args.batches))]
    for name, scope, _ in losses:
        cells = [cell([results.get((b, name, scope, s)) for s in args.seeds])
                 for b in args.batches]
        lines.append(f"| {name} | {scope or '-'} | " + " | ".join(cells) + " |")
    lines += ["", "Advantage of θ at the same batch size and scope, paired by training seed:", "",
              head, "|" + "---|" * (2 + len(args.batches))]
    for scope in scopes:
        for other, other_scope in (("naive", scope), ("cross_entropy", None)):
            cells = []
            for b in args.batches:
                pairs = [(results.get((b, "θ", scope, s)), results.get((b, other, other_scope, s)))
                         for s in args.seeds]
                cells.append(cell([x - y for x, y in pairs if x is not None and y is not None]))
            lines.append(f"| θ − {other} | {scope} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(args.output_dir, "batch_transfer.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
