"""Metric surrogates (pure torch): Bézier curves, parameters files, relaxed metrics, the loss.

The relaxed (differentiable) metrics of Auto Seg-Loss, exactly as the reference codes them
(docs/method.md §2.3), live in :mod:`.region` (mIoU, fwIoU, BIoU, mACC, pACC:
:func:`~.region.relaxed_miou`, ...) and :mod:`.boundary` (BF1: :func:`~.boundary.relaxed_bf1`).
Conventions shared by all of them:

- ``probs``: (N, C, H, W) float32/float64 softmax probabilities (the relaxed prediction).
- ``labels``: (N, H, W) int64; values outside [0, C) (e.g. the ignore value 255) are void: an
  all-zero one-hot row, excluded from region statistics.
- Statistics are per class over the whole mini-batch (N, H, W), not per image; eps = 1e-8
  (:data:`.labels.EPS`). ``LabelInfo.reducer`` extends them to the global batch of all processes
  (:mod:`.stats`).
- Each curve argument is one curve's flat control points (see :mod:`.bezier`).
- Each function returns the surrogate metric as a 0-dim tensor (higher is better), or ``None``
  when it is undefined for this batch because the metric counts no pixel of it: mIoU, fwIoU, mACC
  and pACC without a valid pixel, BIoU without a valid pixel inside the trimap, BF1 without a
  (kept) ground-truth boundary. The loss then skips the term: it contributes 0 with zero gradient,
  never NaN (docs/method.md §2.3).
- ``tolerance`` (BIoU, BF1) is an int >= 0; every radius from max(H, W) - 1 on gives the same
  values and gradients, and the window operations clamp it there
  (:func:`.morphology.effective_radius`), so work and memory are bounded by the image size.

Instead of the reference's one-hot products these functions use label-indexed gathers, which are
mathematically identical: ``Σ_i g(p_ic) y_ic`` is a sum of ``g(p_{i,label_i})`` per label, and
``Σ_i (g + y - g y) = Σ_i g(p_ic) + n_c - Σ_{label_i = c} g(p_ic)``. Classes without ground truth in
the counted pixels contribute exactly 0 (value and gradient) to mIoU/fwIoU/BIoU/mACC, so the dense
part of the work is restricted to the present classes; BF1 likewise only evaluates the classes that
enter its mean.

The full-size work (curve evaluations with their derivatives, the per-class sums, BF1's soft
boundary and its backward, the window maxima) runs in fused kernels: Triton on CUDA
(:mod:`.fused`), C++ on CPU (``segloss_d2._C``); the torch code is the same computation, the
reference and the fallback everywhere. Where each one is chosen: :mod:`.ops`.

Modules, in layers (each imports only from its own layer or the layers below, and the imports
form no cycle; tests/surrogate/test_layering.py checks both):

1. curve maths and pure helpers, importing nothing from this package: :mod:`.bezier` (control
   points and their constraints, the per-piece coefficient layout :class:`~.bezier.Piece` and
   table, the pure-torch evaluation :func:`~.bezier.evaluate`), :mod:`.morphology` (radii,
   dilation, erosion), :mod:`.stats` (cross-process reduction), :mod:`.inputs` (input checks);
2. kernels and data over layer 1: :mod:`.kernels` (loading of the C++ kernels), :mod:`.fused`
   (launchers of the Triton kernels of :mod:`.triton_kernels`, imported on first use),
   :mod:`.labels` (:class:`~.labels.LabelInfo`), :mod:`.params` (parameters files);
3. dispatch: :mod:`.ops` (per op: Triton, C++ or pure torch; no autograd);
4. autograd: :mod:`.autograd` (the first-order-only guard of this package's Functions, and
   :func:`~.autograd.bezier_curve`, the differentiable curve);
5. the relaxed metrics and their autograd Functions: :mod:`.region`, :mod:`.boundary`;
6. the loss: :mod:`.loss` (:class:`~.loss.SurrogateLoss`), and this package's namespace.
"""
from .autograd import bezier_curve
from .bezier import identity_theta, theta_to_control_points, validate_control_points
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
