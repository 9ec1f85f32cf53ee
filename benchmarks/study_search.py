#!/usr/bin/env python
"""Search-quality study: PPO vs random search vs no search, at equal budget (docs/search_study.md).

    .venv/bin/python benchmarks/study_search.py --quick        # what `make study` runs
    .venv/bin/python benchmarks/study_search.py                # full mode
    .venv/bin/python benchmarks/study_search.py --plan boundary --output-dir output/study_boundary
    .venv/bin/python benchmarks/study_search.py --quick --report-dir docs/search_study/quick

Runs :class:`experiments.study.SearchStudy` on the embedded segloss_shapes data (CPU) and
writes ``search_study.md`` with the tables and PNG plots into the output directory (and into
``--report-dir``). Resumable: run the same command again after a kill; finished searches,
retrainings and noise measurements are reused.
"""
import argparse
import dataclasses
import os
import shutil
import sys
import time
import warnings

# detectron2 v0.6 uses torch.jit.script at import time, which recent torch flags as deprecated.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.study import PLANS, SearchStudy, route_library_logs  # noqa: E402
from experiments.study_report import write_report  # noqa: E402

SEARCH_CONFIG = os.path.join(REPO, "configs", "shapes", "search_tiny_bf1.yaml")
TRAIN_CONFIG = os.path.join(REPO, "configs", "shapes", "Base-Tiny-DeepLabV3Plus.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the small plan (what a reviewer runs); "
                   "same as --plan quick")
    p.add_argument("--plan", default="full", choices=sorted(PLANS),
                   help="the plan of experiments.study.PLANS (default full)")
    p.add_argument("--output-dir", default="", help="default: output/study_<plan>")
    p.add_argument("--report-dir", default="", help="also copy the report and plots here")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                   help="override a StudyPlan field, e.g. --set retrain_iters 50 or --set "
                        "methods ppo,random (tests, extra methods)")
    p.add_argument("--jobs", type=int, default=2,
                   help="worker processes (default 2: on 2 cores, two 1-thread processes train "
                        "~1.5x the proxies of one 2-thread process)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    plan = PLANS["quick" if args.quick else args.plan].with_configs(SEARCH_CONFIG, TRAIN_CONFIG)
    fields = {f.name: f for f in dataclasses.fields(plan)}
    for name, value in args.set:
        if name not in fields:
            raise SystemExit(f"study_search: --set {name}: unknown field; one of {sorted(fields)}")
        current = getattr(plan, name)
        if isinstance(current, bool):
            value = value.lower() in ("1", "true", "yes")
        elif isinstance(current, tuple):
            value = tuple(int(v) if v.lstrip("-").isdigit() else v for v in value.split(",") if v)
        elif isinstance(current, int):
            value = int(value)
        plan = dataclasses.replace(plan, **{name: value})
    out = args.output_dir or os.path.join("output", f"study_{plan.name}")
    os.makedirs(out, exist_ok=True)
    route_library_logs(os.path.join(out, "log.txt"))  # their INFO lines go to a file only
    start = time.perf_counter()
    try:
        study = SearchStudy(plan, out, log=lambda line: print(line, flush=True), jobs=args.jobs)
    except ValueError as e:
        raise SystemExit(f"study_search: {e}") from None
    results = study.run()
    report = write_report(results, out)
    print(f"[study] done in {(time.perf_counter() - start) / 60:.1f} min (wall time, {args.jobs} "
          f"jobs): {report}")
    if args.report_dir:
        os.makedirs(args.report_dir, exist_ok=True)
        for name in os.listdir(out):
            if name.endswith((".md", ".png")):
                shutil.copy(os.path.join(out, name), args.report_dir)
        print(f"[study] report copied to {args.report_dir}/")


if __name__ == "__main__":
    main()
