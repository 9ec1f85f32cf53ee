"""``build_sem_seg_loss(cfg)``: the one place where config keys become a loss module.

Any detectron2 head gets segloss_d2's losses in a few lines::

    from segloss_d2.modeling import build_sem_seg_loss

    class MyHead(nn.Module):
        def __init__(self, cfg, input_shape):
            ...
            self.loss_fn = build_sem_seg_loss(cfg)      # errors here, at model build time

        def losses(self, logits, targets):               # logits (N, C, h, w), targets (N, H, W)
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear",
                                   align_corners=False)  # the loss sees label resolution
            return {"loss_sem_seg": self.loss_fn(logits, targets)}
"""
from typing import List

from torch import nn

from ..config import LOSS_TYPES
from ..losses import LOSSES
from ..metric_names import canonical_metrics
from ..surrogate.loss import SurrogateLoss
from ..surrogate.params import SurrogateParams, identity_params, load_params
from ..surrogate.stats import check_stats

__all__ = ["build_sem_seg_loss", "build_surrogate_loss", "build_surrogate_params"]


def _combine(params_list: List[SurrogateParams]) -> SurrogateParams:
    """One SurrogateParams holding the metrics of several (their surrogates add up)."""
    if len(params_list) == 1:
        return params_list[0]
    fields = ("metrics", "weights", "num_pieces", "thetas", "control_points", "constraints")
    merged = {f: [x for p in params_list for x in getattr(p, f)] for f in fields}
    return SurrogateParams(
        **merged, provenance={"combined_from": [p.provenance for p in params_list]}
    )


def build_surrogate_params(cfg) -> SurrogateParams:
    """The SurrogateParams of ``LOSS_TYPE`` naive or searched, validated against the config.

    Raises:
        ValueError: ``searched`` without ``SURROGATE.PARAMS``, PARAMS holding other metrics than a
            non-empty ``SURROGATE.METRICS``, or WEIGHTS of another length than the metrics.
    """
    head = cfg.MODEL.SEM_SEG_HEAD
    sur = head.SURROGATE
    metrics = canonical_metrics(sur.METRICS, "MODEL.SEM_SEG_HEAD.SURROGATE.METRICS")
    if head.LOSS_TYPE == "naive":
        params = identity_params(metrics or ["mIoU"], num_pieces=sur.NUM_PIECES or None)
    else:
        names = [s.strip() for s in str(sur.PARAMS).split(",") if s.strip()]
        if not names:
            raise ValueError(
                "MODEL.SEM_SEG_HEAD.LOSS_TYPE 'searched' needs "
                "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS: "
                "a params JSON file (e.g. a search's best_params.json) or a preset name such as "
                "'voc_miou'"
            )
        params = _combine([load_params(n) for n in names])
        if metrics and sorted(metrics) != sorted(params.metrics):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS {sur.PARAMS!r} holds parameters for "
                f"{params.metrics}, but SURROGATE.METRICS is {metrics}"
            )
    weights = list(sur.WEIGHTS)
    if weights:
        if len(weights) != len(params.metrics):
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.SURROGATE.WEIGHTS {weights} must hold one weight per metric "
                f"of {params.metrics}"
            )
        order = {m: i for i, m in enumerate(metrics or params.metrics)}
        params.weights = [float(weights[order[m]]) for m in params.metrics]
        try:
            params.validate()
        except ValueError as e:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.SURROGATE.WEIGHTS {weights}: {e}") from None
    return params


def build_surrogate_loss(cfg, params: SurrogateParams) -> SurrogateLoss:
    """SurrogateLoss of ``params`` with the head's classes, ignore value and loss weight and the
    ``SURROGATE`` tolerance / background / class-averaging / statistics-scope options (also used
    by the search)."""
    head = cfg.MODEL.SEM_SEG_HEAD
    sur = head.SURROGATE
    return SurrogateLoss(
        params,
        num_classes=head.NUM_CLASSES,
        ignore_value=head.IGNORE_VALUE,
        tolerance=sur.TOLERANCE,
        drop_background=sur.DROP_BACKGROUND,
        present_classes_only=sur.PRESENT_CLASSES_ONLY,
        loss_weight=head.LOSS_WEIGHT,
        stats=check_stats(sur.STATS, "MODEL.SEM_SEG_HEAD.SURROGATE.STATS"),
    )


def build_sem_seg_loss(cfg) -> nn.Module:
    """Build the loss selected by ``cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE`` (see add_segloss_config).

    Returns:
        nn.Module: ``loss(logits, labels) -> scalar``, with logits (N, C, H, W) float at label
        resolution and labels (N, H, W) int64 (``IGNORE_VALUE`` = ignored); ``LOSS_WEIGHT`` is
        already applied.
    Raises:
        ValueError: at build time for an unknown LOSS_TYPE or inconsistent SURROGATE keys.
    """
    head = cfg.MODEL.SEM_SEG_HEAD
    loss_type = head.LOSS_TYPE
    common = dict(
        num_classes=head.NUM_CLASSES, ignore_value=head.IGNORE_VALUE, loss_weight=head.LOSS_WEIGHT
    )
    if loss_type in ("naive", "searched"):
        return build_surrogate_loss(cfg, build_surrogate_params(cfg))
    if loss_type not in LOSSES:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.LOSS_TYPE {loss_type!r} is unknown; expected one of {LOSS_TYPES}"
        )
    extra = {}
    if loss_type == "hard_pixel_mining":
        extra["top_k_percent_pixels"] = head.HARD_PIXEL_TOP_K
    elif loss_type == "wce" and len(head.CLASS_WEIGHTS):
        extra["class_weights"] = list(head.CLASS_WEIGHTS)
    return LOSSES[loss_type](**common, **extra)
