"""A guarded reward: search for one metric without losing another (docs/method.md §4.7).

A BF1 search rewards boundaries only, and can find losses that draw good boundaries around wrong
regions (the paper's own searched BF1 loss scores mIoU 1.93 on VOC). A guard such as
``"mIoU>=0.98"`` penalizes every candidate whose mIoU on the reward set falls below 98% of a
reference, the same proxy trained with cross-entropy (measured once per search) or a value given
in the config::

    guard = RewardGuard.parse("mIoU>=0.98", penalty=1.0)
    guard = guard.with_reference(0.41)                 # the cross-entropy proxy's mIoU, in [0, 1]
    reward, info = guard.apply(0.45, {"mIoU": 37.2, "BF1": 45.0})   # metrics in percent
    # threshold 0.98 * 0.41 = 0.4018; shortfall (0.4018 - 0.372) / 0.4018 = 0.074 -> 0.45 - 0.074

Pure Python (no torch, no detectron2).
"""
import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from ..metric_names import ALIASES, METRICS, canonical_metric

__all__ = ["RewardGuard"]

_EXPR = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)\s*>=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


class RewardGuard:
    """``metric >= fraction x reference``, else the reward is penalized.

    The penalized reward is ``reward - penalty * (threshold - value) / threshold`` (the relative
    shortfall, scaled by ``penalty``) when the guard metric's ``value`` (in [0, 1]) is below
    ``threshold = fraction * reference``; otherwise the reward is unchanged.

    Args:
        metric (str): the guarded metric (:mod:`segloss_d2.metric_names`; aliases accepted).
        fraction (float): in (0, 2].
        penalty (float): >= 0 (0 = record the guard without acting on it).
        reference (float or None): the reference value in (0, 1]; None = not known yet (see
            :meth:`with_reference`).
        expression (str): the text it was parsed from (for messages).
    """

    def __init__(self, metric: str, fraction: float, penalty: float = 1.0,
                 reference: Optional[float] = None, expression: str = ""):
        self.metric = canonical_metric(metric)
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 2):
            raise ValueError(f"the guard's fraction must be in (0, 2], got {fraction!r}")
        if not (isinstance(penalty, (int, float)) and penalty >= 0 and math.isfinite(penalty)):
            raise ValueError(f"the guard's penalty must be a finite number >= 0, got {penalty!r}")
        if reference is not None and not (isinstance(reference, (int, float))
                                          and 0 < reference <= 1):
            raise ValueError(f"the guard's reference {self.metric} must be in (0, 1] (a metric "
                             f"as a fraction, not percent), got {reference!r}")
        self.fraction, self.penalty = float(fraction), float(penalty)
        self.reference = None if reference is None else float(reference)
        self.expression = expression or f"{self.metric}>={self.fraction:g}"

    @classmethod
    def parse(cls, expression: str, penalty: float = 1.0,
              reference: Optional[float] = None) -> "RewardGuard":
        """``"mIoU>=0.98"`` -> RewardGuard("mIoU", 0.98). ValueError naming the expression and the
        expected form for anything else."""
        match = _EXPR.match(str(expression))
        expected = (f"'<metric>>=<fraction>' with a metric of {list(METRICS)} (or an alias "
                    f"{sorted(ALIASES)}) and a fraction of the reference in (0, 2], e.g. "
                    "'mIoU>=0.98'")
        if not match:
            raise ValueError(f"SEARCH.REWARD_GUARD {expression!r} is not a guard: expected "
                             f"{expected}")
        name, number = match.groups()
        try:
            metric = canonical_metric(name)
        except ValueError:
            raise ValueError(f"SEARCH.REWARD_GUARD {expression!r}: unknown metric {name!r}; "
                             f"expected {expected}") from None
        fraction = float(number)
        if not 0 < fraction <= 2:
            raise ValueError(f"SEARCH.REWARD_GUARD {expression!r}: fraction {fraction:g} is "
                             f"outside (0, 2]; expected {expected}")
        return cls(metric, fraction, penalty, reference, expression.strip())

    def with_reference(self, reference: float) -> "RewardGuard":
        """A copy with the reference value (in [0, 1]) set."""
        return RewardGuard(self.metric, self.fraction, self.penalty, reference, self.expression)

    @property
    def threshold(self) -> float:
        """``fraction * reference``."""
        if self.reference is None:
            raise RuntimeError(f"guard {self.expression!r} has no reference value yet")
        return self.fraction * self.reference

    def apply(self, reward: float, metrics: Mapping[str, float]) -> Tuple[float, Dict[str, Any]]:
        """The guarded reward of a candidate and what the guard saw.

        Args:
            reward (float): the candidate's reward (target metric in [0, 1]).
            metrics (dict): its SegMetrics results in percent (must hold the guard metric).

        Returns:
            (float, dict): the guarded reward and ``{"metric", "value", "threshold",
            "penalty"}`` (``penalty``: what was subtracted; 0 when the guard holds).
        """
        value = float(metrics[self.metric]) / 100.0
        threshold = self.threshold
        shortfall = max(0.0, threshold - value) / threshold if math.isfinite(value) else 1.0
        cut = self.penalty * shortfall
        return reward - cut, {"metric": self.metric, "value": value, "threshold": threshold,
                              "penalty": cut}

    def apply_to(self, result: Mapping[str, Any]) -> Dict[str, Any]:
        """A trial result (``reward``, ``metrics``) with the guard applied: ``reward`` guarded,
        ``unguarded_reward`` and ``guard`` added. Results without the guard metric (diverged
        proxies) are returned unchanged."""
        result = dict(result)
        reward, metrics = result.get("reward"), result.get("metrics") or {}
        if (self.metric not in metrics or not isinstance(reward, (int, float))
                or not math.isfinite(reward)):
            return result
        guarded, info = self.apply(float(reward), metrics)
        result.update(reward=guarded, unguarded_reward=float(reward), guard=info)
        return result

    def __repr__(self) -> str:
        return (f"RewardGuard({self.expression!r}, penalty={self.penalty:g}, "
                f"reference={self.reference})")
