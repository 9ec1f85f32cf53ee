"""What the search searches: the target metrics, their curves, and θ ↔ loss parameters.

Pure (torch/numpy, no detectron2), built once from the config and validated there::

    space = SearchSpace.from_config(cfg)     # SEARCH.TARGET_METRIC / NUM_PIECES / CONSTRAINTS
    space.dim                                # D, the number of search variables
    space.initial_mu()                       # the identity curves, length D
    params = space.to_params(theta)          # SurrogateParams of a candidate (LOSS_TYPE searched)
    space.reward(seg_metrics_results)        # the candidate's reward in [0, 1]

A candidate θ is a flat vector in [0, 1]^D: the curves of every target metric, concatenated in
the order of ``SEARCH.TARGET_METRIC`` (docs/method.md §3.3). The curve parameterization and its
constraints are docs/method.md §3.2; the starting point §3.4.
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..metric_names import ALIASES, METRICS, canonical_metric
from ..surrogate.bezier import CLAMP_MAX, CLAMP_MIN, check_constraints, identity_theta
from ..surrogate.params import SurrogateParams, default_num_pieces, theta_dim

__all__ = ["SearchSpace"]


class SearchSpace:
    """The search variables of one search.

    Args:
        metrics (list[str]): target metrics (e.g. ``["mIoU", "BF1"]``; aliases accepted,
            :mod:`segloss_d2.metric_names`), distinct.
        num_pieces (int or list[int]): Bézier pieces per curve, one for all or one per metric;
            0 = the paper's choice for that metric.
        constraints (str): curve constraints, one of
            :data:`~segloss_d2.surrogate.bezier.CONSTRAINTS`.

    Raises:
        ValueError: naming the bad value and what was expected.
    """

    def __init__(self, metrics: Sequence[str], num_pieces=0, constraints: str = "all"):
        given = list(metrics)
        try:
            metrics = [canonical_metric(m) for m in given]
        except ValueError:
            metrics = None
        if not metrics or len(set(metrics)) != len(metrics):
            raise ValueError(f"target metrics {given!r} are invalid: expected distinct "
                             f"names from {list(METRICS)} (or their aliases {sorted(ALIASES)})")
        pieces = list(num_pieces) if isinstance(num_pieces, (list, tuple)) else (
            [num_pieces] * len(metrics))
        if len(pieces) != len(metrics) or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in pieces):
            raise ValueError(f"num_pieces must be an int >= 0 (0 = paper default) or one per "
                             f"metric, got {num_pieces!r}")
        self.metrics: List[str] = metrics
        self.num_pieces: List[int] = [n or default_num_pieces(m) for m, n in zip(metrics, pieces)]
        self.constraints: str = check_constraints(constraints)
        self.dims: List[int] = [theta_dim(m, n, self.constraints)
                                for m, n in zip(self.metrics, self.num_pieces)]

    @classmethod
    def from_config(cls, cfg) -> "SearchSpace":
        """From ``SEARCH.TARGET_METRIC`` (names joined by '+', e.g. ``"mIoU+BF1"``),
        ``SEARCH.NUM_PIECES`` and ``SEARCH.CONSTRAINTS``; errors name the key."""
        s = cfg.SEARCH
        names = cls.parse_target(s.TARGET_METRIC)
        n = s.NUM_PIECES
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"SEARCH.NUM_PIECES must be an int >= 0 (0 = paper default), got {n!r}")
        try:
            check_constraints(s.CONSTRAINTS)
        except ValueError as e:
            raise ValueError(f"SEARCH.CONSTRAINTS: {e}") from None
        return cls(names, n, s.CONSTRAINTS)

    @staticmethod
    def parse_target(target: str) -> List[str]:
        """``"mIoU+BF1"`` -> ``["mIoU", "BF1"]``; ValueError naming ``SEARCH.TARGET_METRIC`` for
        unknown or repeated names."""
        try:
            names = [canonical_metric(n) for n in str(target).split("+")]
        except ValueError:
            names = []
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"SEARCH.TARGET_METRIC {target!r} is invalid: expected one of {list(METRICS)} "
                f"(or their aliases {sorted(ALIASES)}) or several distinct ones joined by '+' "
                "(e.g. 'mIoU+BF1')"
            )
        return names

    def __repr__(self) -> str:
        return (f"SearchSpace(metrics={self.metrics}, num_pieces={self.num_pieces}, "
                f"constraints={self.constraints!r}, dim={self.dim})")

    @property
    def dim(self) -> int:
        """Number of search variables D."""
        return sum(self.dims)

    @property
    def target(self) -> str:
        """The metrics joined by '+', as in ``SEARCH.TARGET_METRIC``."""
        return "+".join(self.metrics)

    def initial_mu(self) -> List[float]:
        """The identity curves g(x) = x as search variables (docs/method.md §3.4): the initial
        mean, length D, clamped into the open interval the controller needs (free end heights
        start at 1e-4 and 1 - 1e-4)."""
        mu = []
        for dim, n in zip(self.dims, self.num_pieces):
            curve = identity_theta(n, self.constraints)
            mu += curve * (dim // len(curve))
        return [min(max(float(v), CLAMP_MIN), CLAMP_MAX) for v in mu]

    def split(self, theta) -> List[List[float]]:
        """A flat candidate (D numbers) -> one flat list per metric."""
        flat = [float(v) for v in (theta.tolist() if hasattr(theta, "tolist") else theta)]
        if len(flat) != self.dim:
            raise ValueError(
                f"theta has {len(flat)} values; target {self.target!r} with pieces "
                f"{self.num_pieces} and constraints {self.constraints!r} needs {self.dim}")
        bounds = np.cumsum([0] + self.dims)
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def to_params(self, theta, reward: Optional[float] = None,
                  provenance: Optional[Dict[str, Any]] = None) -> SurrogateParams:
        """The SurrogateParams of a candidate's loss; metrics get weight 1 each (the surrogates
        of "mIoU+BF1" add up)."""
        return SurrogateParams.from_theta(
            self.metrics, self.split(theta), self.num_pieces, reward=reward,
            provenance=provenance, constraints=self.constraints)

    def reward(self, results: Mapping[str, float]) -> float:
        """Reward in [0, 1]: the mean over the target metrics of the :class:`SegMetrics` results
        (percent) / 100. NaN if a target metric is undefined (the search logs such a trial as
        diverged)."""
        return float(np.mean([results[m] for m in self.metrics])) / 100.0
