"""Surrogate parameters: which metric(s), their weights and their Bézier curves; JSON io.

File format (``format_version`` 1)::

    {
      "format_version": 1,
      "terms": [
        {"metric": "mIoU", "weight": 1.0, "num_pieces": 2,
         "theta": [[...4n-2...], [...]] or null,         # search variables, one list per curve
         "control_points": [[...4n-2...], [...]],        # what the loss uses, one list per curve
         "constraints": "all"}                            # optional (default "all"), see below
      ],
      "reward": 0.8078 or null,
      "provenance": {...free-form, JSON-serializable...}
    }

Curves per metric (docs/method.md §3.3/§3.4): mIoU, fwIoU, BIoU: [AND, OR]; mACC, pACC: [AND];
BF1: [g1 (AND on p), g2 (AND on eroded p), g3 (OR on p), g4 (OR on eroded p)].

``constraints`` (:data:`~segloss_d2.surrogate.bezier.CONSTRAINTS`) is the curve parameterization
of a term: ``"all"`` (the paper's, the only one of the presets) or one of the ablations without the
truth-table and/or monotonicity constraint (curves of ``4n`` numbers with free end heights, or
non-monotone y); it is written only when it is not ``"all"``.
"""
import copy
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

from ..metric_names import METRIC_INFO, METRICS, canonical_metric
from .bezier import (
    check_constraints,
    curve_length,
    identity_theta,
    theta_to_control_points,
    validate_control_points,
)

__all__ = [
    "FORMAT_VERSION",
    "METRICS",
    "SurrogateParams",
    "curves_per_metric",
    "default_num_pieces",
    "theta_dim",
    "identity_params",
    "load_params",
    "save_params",
    "list_presets",
]

FORMAT_VERSION = 1
THETA_MATCH_ATOL = 1e-6
"""How far stored control points may be from those their stored θ maps to (absolute, per number):
wide enough for control points written with float32 or ~7 significant digits, far below any
difference that changes a curve visibly."""
_PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def _check_metric(metric, where="metric"):
    """The metric's name in segloss_d2's vocabulary (aliases such as the paper's ``mAcc``
    accepted, :mod:`segloss_d2.metric_names`); ValueError naming ``where`` otherwise."""
    return canonical_metric(metric, where)


def curves_per_metric(metric):
    """Number of Bézier curves of a metric's surrogate: IoU-type 2, Acc-type 1, BF1 4."""
    return METRIC_INFO[_check_metric(metric)].curves


def default_num_pieces(metric):
    """Default pieces per curve: 1 for BF1, 2 otherwise (the released configs)."""
    return METRIC_INFO[_check_metric(metric)].default_pieces


def theta_dim(metric, num_pieces=None, constraints="all"):
    """Total number of search variables of one metric: curves x (4n - 2), or curves x 4n without
    the truth-table constraint."""
    if num_pieces is None:
        num_pieces = default_num_pieces(metric)
    return curves_per_metric(metric) * curve_length(num_pieces, constraints)


@dataclass
class SurrogateParams:
    """Parameters of a (weighted sum of) metric surrogate(s).

    Attributes:
        metrics (list[str]): metric names among :data:`METRICS`, no duplicates.
        weights (list[float]): one finite weight >= 0 per metric, not all 0 (the loss is
            Σ w_k (1 - surrogate_k); a negative weight would train against metric k, and all
            zeros give a loss that is identically 0).
        num_pieces (list[int]): pieces per curve, one per metric.
        thetas (list): per metric, None or a list of ``curves_per_metric`` lists of 4n-2 search
            variables in [0, 1] (None for the released presets, which only exist as control points).
        control_points (list): per metric, a list of ``curves_per_metric`` validated lists of
            4n-2 control-point coordinates (what the loss evaluates). Where θ is given, the control
            points must be what θ maps to (:func:`~.bezier.theta_to_control_points`) within
            :data:`THETA_MATCH_ATOL`, so a file never holds two different curves.
        reward (float or None): the search reward that selected these parameters, if any.
        provenance (dict): where the numbers come from (free-form, JSON-serializable).
        constraints (list[str] or None): curve constraints per metric (see the module
            docstring); None = ``"all"`` for every metric.
    """

    metrics: List[str]
    weights: List[float]
    num_pieces: List[int]
    thetas: List[Optional[List[List[float]]]]
    control_points: List[List[List[float]]]
    reward: Optional[float] = None
    provenance: dict = field(default_factory=dict)
    constraints: Optional[List[str]] = None

    def __post_init__(self):
        self.validate()

    def validate(self, source="SurrogateParams"):
        """Check every field; raises ValueError naming ``source`` and the bad field."""
        if isinstance(self.metrics, str) or not self.metrics:
            raise ValueError(f"{source}: metrics must be a non-empty list, got {self.metrics!r}")
        self.metrics = [_check_metric(m, f"{source}: metrics[{i}]")
                        for i, m in enumerate(self.metrics)]
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"{source}: metrics must not repeat, got {self.metrics}")
        k = len(self.metrics)
        if self.constraints is None:
            self.constraints = ["all"] * k
        for name in ("weights", "num_pieces", "thetas", "control_points", "constraints"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != k:
                raise ValueError(f"{source}: {name} must be a list with one entry per metric "
                                 f"({k}), got {value!r}")
        for i, w in enumerate(self.weights):
            if not _is_finite_number(w) or w < 0:
                raise ValueError(f"{source}: weights[{i}] ({self.metrics[i]}) must be a finite "
                                 f"number >= 0, got {w!r}")
        if not any(w > 0 for w in self.weights):
            terms = dict(zip(self.metrics, self.weights))
            raise ValueError(f"{source}: weights are all 0 ({terms}): the loss would be "
                             f"identically 0; give at least one term a positive weight")
        self.weights = [float(w) for w in self.weights]
        thetas, control_points = [], []
        for i, metric in enumerate(self.metrics):
            n = self.num_pieces[i]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{source}: num_pieces[{i}] ({metric}) must be an int >= 1, "
                                 f"got {n!r}")
            try:
                constraints = check_constraints(self.constraints[i])
            except ValueError as e:
                raise ValueError(f"{source}: constraints[{i}] ({metric}): {e}") from None
            length = curve_length(n, constraints)
            ncurves = METRIC_INFO[metric].curves
            cps = self.control_points[i]
            if not isinstance(cps, (list, tuple)) or len(cps) != ncurves:
                raise ValueError(f"{source}: control_points[{i}] ({metric}) must hold {ncurves} "
                                 f"curve(s), got {cps!r}")
            control_points.append([
                validate_control_points(cp, n, f"{source}: control_points[{i}][{j}] ({metric})",
                                        constraints)
                for j, cp in enumerate(cps)
            ])
            th = self.thetas[i]
            if th is not None:
                if not isinstance(th, (list, tuple)) or len(th) != ncurves:
                    raise ValueError(f"{source}: thetas[{i}] ({metric}) must be null or hold "
                                     f"{ncurves} curve(s), got {th!r}")
                checked = []
                for j, curve in enumerate(th):
                    if (not isinstance(curve, (list, tuple)) or len(curve) != length
                            or not all(_is_finite_number(v) and 0.0 <= v <= 1.0 for v in curve)):
                        raise ValueError(f"{source}: thetas[{i}][{j}] ({metric}) must be "
                                         f"{length} numbers in [0, 1], got {curve}")
                    checked.append([float(v) for v in curve])
                _check_theta_matches(checked, control_points[-1], n, constraints,
                                     f"{source}: terms[{i}] ({metric})")
                th = checked
            thetas.append(th)
        self.thetas, self.control_points = thetas, control_points
        if self.reward is not None:
            if not _is_finite_number(self.reward):
                raise ValueError(f"{source}: reward must be null or a finite number, "
                                 f"got {self.reward!r}")
            self.reward = float(self.reward)
        if not isinstance(self.provenance, dict):
            raise ValueError(f"{source}: provenance must be a dict, got {self.provenance!r}")

    @classmethod
    def from_theta(cls, metrics, thetas, num_pieces=None, weights=None, reward=None,
                   provenance=None, constraints="all"):
        """Build parameters from search variables (docs/method.md, θ clamped to [1e-4, 1-1e-4]).

        Args:
            metrics (list[str]): metric names.
            thetas (list): per metric, either a flat sequence of ``theta_dim(metric, n)`` numbers
                (curves concatenated as in the reference) or a list of per-curve sequences.
            num_pieces (int, list[int] or None): pieces per curve; None = per-metric default.
            weights (list[float] or None): None = 1.0 each.
            constraints (str): curve constraints of every metric (see the module docstring).
        """
        metrics = _as_metric_list(metrics)
        pieces = _normalize_pieces(metrics, num_pieces)
        check_constraints(constraints)
        if len(thetas) != len(metrics):
            raise ValueError(f"thetas must hold one entry per metric ({len(metrics)}), "
                             f"got {len(thetas)}")
        curves, cps = [], []
        for metric, n, theta in zip(metrics, pieces, thetas):
            length, ncurves = curve_length(n, constraints), METRIC_INFO[metric].curves
            flat = [float(v) for v in _flatten(theta)]
            if len(flat) != length * ncurves:
                raise ValueError(f"theta for {metric} with {n} piece(s) needs "
                                 f"{length * ncurves} numbers, got {len(flat)}")
            per_curve = [flat[j * length:(j + 1) * length] for j in range(ncurves)]
            curves.append(per_curve)
            cps.append([theta_to_control_points(c, n, constraints=constraints).tolist()
                        for c in per_curve])
        return cls(metrics=metrics, weights=_normalize_weights(metrics, weights),
                   num_pieces=pieces, thetas=curves, control_points=cps, reward=reward,
                   provenance=dict(provenance or {}), constraints=[constraints] * len(metrics))

    def to_dict(self):
        """JSON-serializable dict in the current file format."""
        return {
            "format_version": FORMAT_VERSION,
            "terms": [
                {"metric": m, "weight": w, "num_pieces": n, "theta": copy.deepcopy(th),
                 "control_points": copy.deepcopy(cp),
                 **({} if c == "all" else {"constraints": c})}
                for m, w, n, th, cp, c in zip(self.metrics, self.weights, self.num_pieces,
                                              self.thetas, self.control_points, self.constraints)
            ],
            "reward": self.reward,
            "provenance": copy.deepcopy(self.provenance),
        }

    @classmethod
    def from_dict(cls, data, source="<dict>"):
        """Parse a dict in file format; raises ValueError naming ``source`` and the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{source}: format_version must be {FORMAT_VERSION}, got {version!r}")
        unknown = set(data) - {"format_version", "terms", "reward", "provenance"}
        if unknown:
            raise ValueError(f"{source}: unknown top-level field(s) {sorted(unknown)}")
        terms = data.get("terms")
        if not isinstance(terms, list) or not terms:
            raise ValueError(f"{source}: 'terms' must be a non-empty list, got {terms!r}")
        fields = {"metric", "weight", "num_pieces", "theta", "control_points"}
        for i, term in enumerate(terms):
            if not isinstance(term, dict) or not fields <= set(term) <= fields | {"constraints"}:
                got = sorted(term) if isinstance(term, dict) else term
                raise ValueError(f"{source}: terms[{i}] must have exactly the fields "
                                 f"{sorted(fields)} (and optionally 'constraints'), got {got}")
        params = cls.__new__(cls)  # validated below with the file name in every message
        params.metrics = [t["metric"] for t in terms]
        params.weights = [t["weight"] for t in terms]
        params.num_pieces = [t["num_pieces"] for t in terms]
        params.thetas = [t["theta"] for t in terms]
        params.control_points = [t["control_points"] for t in terms]
        params.constraints = [t.get("constraints", "all") for t in terms]
        params.reward = data.get("reward")
        params.provenance = data.get("provenance") or {}
        params.validate(source)
        return params


def _check_theta_matches(thetas, control_points, num_pieces, constraints, where):
    """Raise ValueError unless each curve's θ maps to its control points (THETA_MATCH_ATOL)."""
    for j, (theta, cp) in enumerate(zip(thetas, control_points)):
        mapped = theta_to_control_points(theta, num_pieces, constraints=constraints).tolist()
        worst = max(range(len(cp)), key=lambda q: abs(mapped[q] - cp[q]))
        if abs(mapped[worst] - cp[worst]) > THETA_MATCH_ATOL:
            raise ValueError(
                f"{where}: theta[{j}] and control_points[{j}] describe different curves: theta "
                f"maps to control point {worst} = {mapped[worst]!r}, the file stores "
                f"{cp[worst]!r} (|difference| {abs(mapped[worst] - cp[worst]):.3g} > "
                f"{THETA_MATCH_ATOL:g}); theta maps to {mapped}. Regenerate the file, or set "
                f"theta to null to keep only the control points")


def _is_finite_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value - value == 0)


def _flatten(values):
    if hasattr(values, "tolist"):
        values = values.tolist()
    out = []
    for v in values:
        if isinstance(v, (list, tuple)) or hasattr(v, "tolist"):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _as_metric_list(metrics):
    if isinstance(metrics, str):
        metrics = [metrics]
    return [_check_metric(m, f"metrics[{i}]") for i, m in enumerate(metrics)]


def _normalize_pieces(metrics, num_pieces):
    if num_pieces is None:
        return [default_num_pieces(m) for m in metrics]
    if isinstance(num_pieces, int) and not isinstance(num_pieces, bool):
        return [num_pieces] * len(metrics)
    num_pieces = list(num_pieces)
    if len(num_pieces) != len(metrics):
        raise ValueError(f"num_pieces must be an int or one per metric ({len(metrics)}), "
                         f"got {num_pieces}")
    return num_pieces


def _normalize_weights(metrics, weights):
    if weights is None:
        return [1.0] * len(metrics)
    weights = list(weights)
    if len(weights) != len(metrics):
        raise ValueError(f"weights must hold one entry per metric ({len(metrics)}), "
                         f"got {weights}")
    return weights


def identity_params(metrics, num_pieces=None, weights=None):
    """The "naive" surrogate: identity curves g(x) = x (the search initialization,
    docs/method.md)."""
    metrics = _as_metric_list(metrics)
    pieces = _normalize_pieces(metrics, num_pieces)
    thetas = [[identity_theta(n)] * METRIC_INFO[m].curves for m, n in zip(metrics, pieces)]
    return SurrogateParams.from_theta(metrics, thetas, pieces, weights,
                                      provenance={"source": "identity initialization"})


def list_presets():
    """Names of the parameter presets shipped with the package, e.g. ``["voc_biou", ...]``."""
    return sorted(f[:-5] for f in os.listdir(_PRESET_DIR) if f.endswith(".json"))


def load_params(name_or_path, expected_metrics=None, expected_num_pieces=None):
    """Load parameters from a preset name (see :func:`list_presets`) or a JSON file path.

    Args:
        name_or_path (str or os.PathLike): e.g. ``"voc_miou"`` or ``"output/best_params.json"``.
        expected_metrics (str or list[str] or None): if given, the file must hold exactly these
            metrics (order free), e.g. to catch a params file searched for another metric.
        expected_num_pieces (int or None): if given, every metric must use this many pieces.

    Raises:
        FileNotFoundError for an unknown name/path; ValueError naming the file and the bad field
        for a corrupt, hand-edited or mismatching file.
    """
    path = os.fspath(name_or_path)
    if not os.path.exists(path):
        preset = os.path.join(_PRESET_DIR, f"{path}.json")
        if os.sep in path or "/" in path or path.endswith(".json") or not os.path.exists(preset):
            raise FileNotFoundError(f"no params file {path!r} and no preset of that name; "
                                    f"presets: {list_presets()}")
        path = preset
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    params = SurrogateParams.from_dict(data, source=path)
    if expected_metrics is not None:
        expected = _as_metric_list(expected_metrics)
        if sorted(expected) != sorted(params.metrics):
            raise ValueError(f"{path}: holds parameters for {params.metrics}, expected "
                             f"{expected}")
    if expected_num_pieces is not None and any(n != expected_num_pieces
                                               for n in params.num_pieces):
        raise ValueError(f"{path}: num_pieces {params.num_pieces}, expected "
                         f"{expected_num_pieces} for every metric")
    return params


def save_params(params, path):
    """Write ``params`` (validated again) to ``path`` as JSON; creates parent directories."""
    if not isinstance(params, SurrogateParams):
        raise TypeError(f"params must be a SurrogateParams, got {type(params).__name__}")
    params.validate()
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(params.to_dict(), f, indent=2)
        f.write("\n")
