#!/usr/bin/env python
"""`make demo`: the whole idea on the embedded synthetic dataset, on CPU, in minutes.

1. search a surrogate for a boundary objective with a tiny DeepLabV3+ proxy (PPO, spec §4);
2. retrain the tiny model with cross-entropy and with the searched loss (same seed, data order and
   schedule), evaluate both on segloss_shapes_val;
3. print all six metrics side by side and write plots to output/demo/.

A second run resumes the search (finished trials are not re-run); --fresh starts over.
"""
import argparse
import json
import os
import shutil
import time
import warnings

# detectron2 v0.6 uses torch.jit.script at import time, which recent torch flags as deprecated.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

from detectron2.utils.logger import setup_logger  # noqa: E402

from segloss_d2.compare import comparison_table, plot_predictions, train_and_evaluate  # noqa: E402
from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.search.runner import SearchRunner  # noqa: E402
from segloss_d2.search.state import META  # noqa: E402
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
    p.add_argument("--fresh", action="store_true", help="delete earlier demo outputs first")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE pairs overriding the search config, e.g. SEARCH.ITERATIONS 2")
    return p.parse_args()


def search(args, out):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(SEARCH_CONFIGS[args.target])
    cfg.merge_from_list(args.opts)
    cfg.OUTPUT_DIR = cfg.SEARCH.OUTPUT_DIR = os.path.join(out, f"search_{args.target}")
    cfg.freeze()
    resume = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, META))  # an earlier demo's search
    print(f"[demo] 1/3 search {cfg.SEARCH.TARGET_METRIC}: {cfg.SEARCH.ITERATIONS} iterations x "
          f"{cfg.SEARCH.SAMPLES_PER_ITER} candidates, proxy {cfg.SEARCH.PROXY.MAX_ITER} "
          f"iterations{' (resuming)' if resume else ''}", flush=True)
    try:
        runner = SearchRunner(cfg, resume=resume, config_file=SEARCH_CONFIGS[args.target],
                              log=print)
    except ValueError as e:  # e.g. an earlier demo's search with other settings
        raise SystemExit(f"demo: {e}\n(pass --fresh to start the demo over)") from e
    runner.run()
    return cfg, os.path.join(cfg.OUTPUT_DIR, "best_params.json")


def retrain(args, out, name, *opts):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(TRAIN_CONFIG)
    cfg.merge_from_list(["SOLVER.MAX_ITER", args.retrain_iters,
                         "OUTPUT_DIR", os.path.join(out, name), *opts])
    cfg.freeze()
    print(f"[demo] 2/3 retrain with {name} ({cfg.SOLVER.MAX_ITER} iterations)", flush=True)
    model, results = train_and_evaluate(cfg)
    return cfg, model, results


def main():
    args = parse_args()
    out = args.output_dir
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    for name, abbrev in (("detectron2", "d2"), ("segloss_d2", "segloss")):  # progress every 20 it
        setup_logger(os.path.join(out, "log.txt"), name=name, abbrev_name=abbrev)
    start = time.perf_counter()

    search_cfg, best = search(args, out)
    params = load_params(best)
    plot_curves(params, os.path.join(out, "searched_curves.png"), title=f"searched ({best})")
    plot_surfaces(params, os.path.join(out, "searched_surfaces.png"))
    shutil.copy(os.path.join(search_cfg.OUTPUT_DIR, "reward_curve.png"), out)

    ce_cfg, ce_model, ce = retrain(args, out, "cross_entropy",
                                   "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy")
    _, sr_model, sr = retrain(args, out, "searched", "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                              "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", best)

    print("[demo] 3/3 results on segloss_shapes_val (percent)", flush=True)
    rows = [("cross_entropy", ce), (f"searched {search_cfg.SEARCH.TARGET_METRIC}", sr)]
    table = comparison_table(rows, target=TARGET_KEY[args.target])
    print(table)
    plot_predictions([("cross_entropy", ce_model), ("searched", sr_model)],
                     ce_cfg.DATASETS.TEST[0], os.path.join(out, "predictions.png"),
                     input_format=ce_cfg.INPUT.FORMAT)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({name: r for name, r in rows}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(f"[demo] done in {time.perf_counter() - start:.0f} s; plots and results in {out}/:")
    for name in sorted(os.listdir(out)):
        if name.endswith((".png", ".md", ".json")):
            print("   ", os.path.join(out, name))


if __name__ == "__main__":
    main()
