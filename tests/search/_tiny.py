"""A seconds-scale search config on segloss_shapes shared by the search adapter tests."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_SEARCH_CONFIG = os.path.join(REPO, "configs", "shapes", "search_tiny_miou_bf1.yaml")

# 3 SGD steps of batch 4 per proxy and a 6-image reward set: small enough for a 2 x 3 search in
# seconds. With lr 0.01 the proxies are still far from the all-background prediction, so every
# candidate's reward differs (at lr 0.05 they all collapse to the same reward and mu cannot move).
TINY_OPTS = [
    "SEARCH.ITERATIONS", 2,
    "SEARCH.SAMPLES_PER_ITER", 3,
    "SEARCH.PROXY.MAX_ITER", 3,
    "SEARCH.HOLDOUT.SIZE", 6,
    "SEARCH.PPO_STEPS", 5,
    "SOLVER.IMS_PER_BATCH", 4,
    "SOLVER.BASE_LR", 0.01,
    "SEARCH.MODELS_PER_WORKER", 3,
    # the paper's answer (no selection stage), so that trial counts stay those of the iterations;
    # tests of the selection (and of the defaults) set it themselves
    "SEARCH.SELECTION.TOP_K", 0,
]


def tiny_search_cfg(output_dir="", opts=()):
    """The tiny search config with TINY_OPTS, then ``opts``, merged; not frozen."""
    from segloss_d2.engine import get_segloss_cfg

    cfg = get_segloss_cfg()
    cfg.merge_from_file(TINY_SEARCH_CONFIG)
    cfg.merge_from_list(TINY_OPTS + ["OUTPUT_DIR", str(output_dir)] + list(opts))
    return cfg


def strip_timing(record):
    """A trial record without its wall-clock fields (which differ between runs)."""
    return {k: v for k, v in record.items() if k not in ("seconds", "group_size")}


def settings_of(cfg, check_files=True):
    """The validated :class:`~segloss_d2.search.settings.SearchSettings` of a search config."""
    from segloss_d2.search.settings import SearchSettings

    return SearchSettings.from_config(cfg, check_files=check_files)
