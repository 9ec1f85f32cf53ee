"""One metric vocabulary for params files, config keys, evaluator results, search rewards and
tables (docs/method.md §1.2).

The names are detectron2's ``SemSegEvaluator`` result keys where it has one (``mIoU``, ``fwIoU``,
``mACC``, ``pACC``), and the Auto Seg-Loss paper's for the boundary metrics (``BIoU``, ``BF1``).
On input, the paper's spellings (``FWIoU``, ``mAcc``, ``gAcc``), which older params files,
presets and configs use, and any capitalization are accepted through :data:`ALIASES`; outputs
always use :data:`METRICS`. Pure Python: usable from any framework.
"""
from typing import Iterable, List

__all__ = ["METRICS", "ALIASES", "canonical_metric", "canonical_metrics"]

METRICS = ("mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1")
"""The six metrics, in the evaluator's order (detectron2's four, then the boundary metrics);
tables that follow the paper's Table 1 order them as ``compare.TABLE_METRICS``."""

ALIASES = {"FWIoU": "fwIoU", "mAcc": "mACC", "gAcc": "pACC"}
"""Other accepted spellings (the paper's) -> the name in :data:`METRICS`."""

_LOOKUP = {**{m.lower(): m for m in METRICS}, **{a.lower(): m for a, m in ALIASES.items()}}


def canonical_metric(name, where: str = "metric") -> str:
    """The :data:`METRICS` name of ``name`` (itself, an alias, any capitalization).

    Raises:
        ValueError: ``where`` and the bad value, with the accepted names.
    """
    found = _LOOKUP.get(name.strip().lower()) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"{where}: unknown metric {name!r}; expected one of {list(METRICS)} "
                         f"(also accepted: {sorted(ALIASES)}, in any capitalization)")
    return found


def canonical_metrics(names: Iterable, where: str = "metrics") -> List[str]:
    """:func:`canonical_metric` of every name, ``where[i]`` in the errors."""
    return [canonical_metric(n, f"{where}[{i}]") for i, n in enumerate(names)]
