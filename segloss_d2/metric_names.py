"""One metric vocabulary for params files, config keys, evaluator results, search rewards and
tables (docs/method.md §1.2).

The names are detectron2's ``SemSegEvaluator`` result keys where it has one (``mIoU``, ``fwIoU``,
``mACC``, ``pACC``), and the Auto Seg-Loss paper's for the boundary metrics (``BIoU``, ``BF1``).
On input, the paper's spellings (``FWIoU``, ``mAcc``, ``gAcc``), which older params files,
presets and configs use, and any capitalization are accepted through :data:`ALIASES`; outputs
always use :data:`METRICS`. Pure Python: usable from any framework.
"""
import dataclasses
from typing import Dict, Iterable, List

__all__ = ["METRICS", "METRIC_INFO", "MetricInfo", "ALIASES", "canonical_metric",
           "canonical_metrics"]


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """The facts of one metric, used by the surrogate loss, the params files, the presets, the
    evaluator's result keys and the search.

    Attributes:
        name (str): its name everywhere: evaluator result key, params files,
            ``SEARCH.TARGET_METRIC``, ``SURROGATE.METRICS``.
        paper_name (str): the Auto Seg-Loss paper's spelling (accepted on input).
        kind (str): "region" (IoU-type), "accuracy" or "boundary" (needs ``TOLERANCE``).
        curves (int): Bézier curves of its surrogate (docs/method.md §3): 2 for the IoU-type
            metrics (AND, OR), 1 for the accuracies, 4 for BF1.
        default_pieces (int): pieces per curve when ``NUM_PIECES`` is 0 (the released configs').
        preset (str): the released VOC-searched parameters (``LOSS_TYPE searched`` with
            ``SURROGATE.PARAMS <preset>``).
    """

    name: str
    paper_name: str
    kind: str
    curves: int
    default_pieces: int
    preset: str


METRIC_INFO: Dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("mIoU", "mIoU", "region", curves=2, default_pieces=2, preset="voc_miou"),
    MetricInfo("fwIoU", "FWIoU", "region", curves=2, default_pieces=2, preset="voc_fwiou"),
    MetricInfo("mACC", "mAcc", "accuracy", curves=1, default_pieces=2, preset="voc_macc"),
    MetricInfo("pACC", "gAcc", "accuracy", curves=1, default_pieces=2, preset="voc_gacc"),
    MetricInfo("BIoU", "BIoU", "boundary", curves=2, default_pieces=2, preset="voc_biou"),
    MetricInfo("BF1", "BF1", "boundary", curves=4, default_pieces=1, preset="voc_bf1"),
)}
"""One :class:`MetricInfo` per metric, in the evaluator's order."""

METRICS = tuple(METRIC_INFO)
"""The six metrics, in the evaluator's order (detectron2's four, then the boundary metrics);
tables that follow the paper's Table 1 order them as ``compare.TABLE_METRICS``."""

ALIASES = {m.paper_name: m.name for m in METRIC_INFO.values() if m.paper_name != m.name}
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
