#!/usr/bin/env python
"""Search an Auto Seg-Loss metric surrogate with PPO (docs/method.md §4) on detectron2 proxies.

    tools/search_net.py --config-file configs/shapes/search_tiny_bf1.yaml
    tools/search_net.py --config-file configs/shapes/search_tiny_bf1.yaml --resume
    tools/search_net.py --config-file configs/shapes/search_tiny_bf1.yaml --overwrite
    tools/search_net.py --config-file configs/voc_miou.yaml SEARCH.BACKEND ray \
        SEARCH.RAY.ADDRESS auto SEARCH.RAY.GPUS_PER_TRIAL 1 SEARCH.MODELS_PER_WORKER 4

Results in SEARCH.OUTPUT_DIR (or OUTPUT_DIR): best_params.json (the candidate the final selection
chose; use it with ``MODEL.SEM_SEG_HEAD.LOSS_TYPE searched MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS
<path>``), best_sampled_params.json (the paper's answer), final_mu_params.json, trials.jsonl,
controller.pt, TensorBoard scalars, reward_curve.png and the searched curves. ``--resume``
continues an interrupted search and re-runs only unfinished trials;
``--overwrite`` deletes the search found in the directory (its state and results) and starts
over. One process at a time may use a directory (a second one is refused). The search runs in
one process (``local`` backend) or on Ray: detectron2's launcher options ``--num-gpus`` /
``--num-machines`` must stay 1 (the search exits with an error otherwise). Exit status 1 with
one ``search_net.py: error:`` line for every refusal (checked before anything is written: config
values, data, the reward set's files, weights, a loss or trainer that cannot build a proxy), an
unwritable directory, and a search in which every trial diverged. Ctrl-C ends a search with one
line saying what is kept and to continue with ``--resume`` (exit status 130).
"""
import errno
import sys

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils.logger import setup_logger

from segloss_d2.data.errors import CorruptFileError
from segloss_d2.engine import get_segloss_cfg
from segloss_d2.search.runner import SearchFailedError, SearchRunner
from segloss_d2.search.settings import SearchSettings
from segloss_d2.search.state import SearchLockedError


def setup_cfg(args):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    # log.txt and config.yaml go next to the search
    cfg.OUTPUT_DIR = cfg.SEARCH.OUTPUT_DIR or cfg.OUTPUT_DIR
    cfg.freeze()
    return cfg


def main(args):
    if not args.config_file:
        sys.exit("search_net.py: error: --config-file is required")
    if args.num_gpus > 1 or args.num_machines > 1:
        sys.exit(
            f"search_net.py: error: --num-gpus {args.num_gpus} --num-machines {args.num_machines}: "
            "the search scales out with SEARCH.BACKEND ray / SEARCH.MODELS_PER_WORKER, not "
            "detectron2's launcher (e.g. SEARCH.BACKEND ray SEARCH.RAY.GPUS_PER_TRIAL 1 fills "
            "every GPU of the machine or Ray cluster)"
        )
    # Everything is validated and the search state opened (or created) before default_setup
    # writes config.yaml and log.txt: a bad config or state directory leaves the directory as is.
    try:
        cfg = setup_cfg(args)
    except (KeyError, ValueError, AssertionError) as e:  # yacs asserts on unknown keys
        sys.exit(f"search_net.py: error: bad config {args.config_file} {args.opts}: {e}")
    try:
        settings = SearchSettings.from_config(cfg)  # every key the search uses, checked here
        runner = SearchRunner(settings, resume=args.resume, config_file=args.config_file,
                              overwrite=args.overwrite)
    except (ValueError, OSError, ImportError, SearchLockedError) as e:
        # OSError covers FileExistsError / FileNotFoundError (state, data, MODEL.WEIGHTS) and an
        # output directory that cannot be created or written.
        sys.exit(f"search_net.py: error: {e}")
    try:
        default_setup(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, name="segloss_d2")
        return runner.run()
    except SearchFailedError as e:
        sys.exit(f"search_net.py: error: {e}")
    except KeyboardInterrupt:
        runner.close()
        print(f"search_net.py: interrupted; the {len(runner.state.all_trials())} trials logged "
              f"in {runner.state.output_dir} are kept: continue with --resume", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        runner.close()
        sys.exit(f"search_net.py: error: {e}. Every trial logged so far is kept: "
                 f"{_remedy(e)}, then continue with --resume.")


def _remedy(error: OSError) -> str:
    """What to do about an OSError in the middle of a search, by its cause."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space"
    if isinstance(error, CorruptFileError):
        return "replace or remove that file"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the output directory writable"
    return "fix the cause above"


def argument_parser():
    """detectron2's default parser plus ``--overwrite``."""
    parser = default_argument_parser()
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the search in the output directory (its state and results) "
                             "and start over")
    return parser


if __name__ == "__main__":
    main(argument_parser().parse_args())
