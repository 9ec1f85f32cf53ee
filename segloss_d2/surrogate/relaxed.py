"""The six relaxed (differentiable) metrics of Auto Seg-Loss, exactly as the reference codes them.

docs/method.md §2.3. Conventions shared by every function here:

- ``probs``: (N, C, H, W) float32/float64 softmax probabilities (the relaxed prediction).
- ``labels``: (N, H, W) int64; values outside [0, C) (e.g. the ignore value 255) are void: an
  all-zero one-hot row, excluded from region statistics.
- Statistics are per class over the whole mini-batch (N, H, W), not per image; eps = 1e-8.
  ``LabelInfo.reducer`` extends them to the global batch of all processes (:mod:`.stats`).
- Each curve argument is one curve's flat control points (see :mod:`.bezier`).
- Each function returns the surrogate metric as a 0-dim tensor (higher is better), or ``None``
  when it is undefined for this batch because the metric counts no pixel of it: mIoU, fwIoU, mACC
  and pACC without a valid pixel, BIoU without a valid pixel inside the trimap, BF1 without a
  (kept) ground-truth boundary. The loss then skips the term: it contributes 0 with zero gradient,
  never NaN (docs/method.md §2.3).
- ``tolerance`` (BIoU, BF1) is an int >= 0; every radius from max(H, W) - 1 on gives the same
  values and gradients, and the window operations clamp it there (:func:`effective_radius`), so
  work and memory are bounded by the image size.

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

Where the code lives (this module re-exports it; every name importable from here stays so):

- :mod:`.region`: mIoU, fwIoU, BIoU, mACC, pACC (:func:`relaxed_miou`, ...) and their fused soft
  sums (``_RegionSums``).
- :mod:`.boundary`: BF1 (:func:`relaxed_bf1`): soft boundary, erosion, window match.
- :mod:`.labels`: :class:`LabelInfo` (label statistics shared by the metrics of one batch).
- :mod:`.morphology`: radii, dilation and erosion.
- :mod:`.ops`: the choice of implementation, the compiled ops and their pure-torch fallbacks.
"""
# Re-exports: the public names of this module, and the internals tests and tools reach here.
from .bezier import (  # noqa: F401
    curve_pieces,
    evaluate,
    evaluate_curve,
    no_double_backward,
)
from .boundary import (  # noqa: F401
    _AcceleratedBoundaryTerms,
    _BoundaryMatch,
    _FusedBoundaryTerms,
    _soft_boundary_torch,
    _SoftBoundary,
    relaxed_bf1,
)
from .labels import EPS, LabelInfo  # noqa: F401
from .morphology import (  # noqa: F401
    _erode,
    _erode_grad_add,
    _min3,
    _min3_backward,
    check_radius,
    dilate_bool,
    effective_radius,
)
from .ops import region_dense as _dense_terms  # noqa: F401
from .ops import row_window_max as _row_window_max  # noqa: F401
from .ops import window_argmax as _window_argmax  # noqa: F401
from .region import (  # noqa: F401
    _AcceleratedRegionSums,
    _class_mean,
    _intersection_union,
    _RegionSums,
    relaxed_biou,
    relaxed_fwiou,
    relaxed_gacc,
    relaxed_macc,
    relaxed_miou,
)
from .stats import LOCAL  # noqa: F401

__all__ = [
    "LabelInfo",
    "dilate_bool",
    "relaxed_miou",
    "relaxed_fwiou",
    "relaxed_biou",
    "relaxed_macc",
    "relaxed_gacc",
    "relaxed_bf1",
]
