"""Metric surrogates (pure torch): Bézier curves, parameters files, relaxed metrics, the loss."""
from .bezier import bezier_curve, identity_theta, theta_to_control_points, validate_control_points
from .loss import SurrogateLoss
from .params import (
    METRICS,
    SurrogateParams,
    curves_per_metric,
    identity_params,
    list_presets,
    load_params,
    save_params,
    theta_dim,
)

__all__ = [
    "METRICS",
    "SurrogateLoss",
    "SurrogateParams",
    "bezier_curve",
    "curves_per_metric",
    "identity_params",
    "identity_theta",
    "list_presets",
    "load_params",
    "save_params",
    "theta_dim",
    "theta_to_control_points",
    "validate_control_points",
]
