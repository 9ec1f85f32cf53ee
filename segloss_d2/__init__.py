"""segloss_d2: Auto Seg-Loss metric surrogates, evaluators and search as a detectron2 plugin.

Public API (resolved lazily so that ``import segloss_d2`` never imports detectron2, and the
torch-only core, with its optional compiled CPU kernels ``segloss_d2._C``, stays usable from any
framework)::

    from segloss_d2 import SurrogateLoss, load_params, save_params, SegMetrics
    from segloss_d2 import METRICS, canonical_metric   # the one metric vocabulary
    from segloss_d2 import add_segloss_config, add_search_config  # these need detectron2
    from segloss_d2 import SegLossEvaluator, build_sem_seg_loss
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "SurrogateLoss": "segloss_d2.surrogate.loss",
    "SurrogateParams": "segloss_d2.surrogate.params",
    "load_params": "segloss_d2.surrogate.params",
    "save_params": "segloss_d2.surrogate.params",
    "SegMetrics": "segloss_d2.evaluation.metrics",
    "add_segloss_config": "segloss_d2.config",
    "add_search_config": "segloss_d2.config",
    "SegLossEvaluator": "segloss_d2.evaluation.evaluator",
    "build_sem_seg_loss": "segloss_d2.modeling.build",
    "METRICS": "segloss_d2.metric_names",
    "canonical_metric": "segloss_d2.metric_names",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'segloss_d2' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
