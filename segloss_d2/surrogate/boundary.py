"""The BF1 surrogate: soft boundary, erosion and window match (docs/method.md §2.3).

Conventions (shapes, void labels, eps, ``None`` when undefined, statistics scope): see
:mod:`segloss_d2.surrogate`. For probabilities p of the kept classes:

    e = MinPool3x3(p) (pad 1.0),   B~ = g3(p) + g4(e) - g3(p) g4(e) - g1(p) g2(e),
    P_c = Σ B~ D_gt / (Σ B~ + eps),   R_c = Σ D~ B_gt / (Σ B_gt + eps),
    F_c = 2 P R / (P + R + eps),

with D_gt the dilated exact ground-truth boundary and D~ the window maximum of B~ (read only at
ground-truth boundary pixels). :func:`relaxed_bf1` is the definition; the autograd Functions below
compute its sums with one gradient tensor each, in three interchangeable ways chosen in
:mod:`.ops`: the Triton kernels on CUDA (:class:`_AcceleratedBoundaryTerms`,
:func:`.ops.accelerated`), the compiled CPU kernels (:class:`_FusedBoundaryTerms`,
:func:`.ops.fused_bf1`) or pure torch (:class:`_SoftBoundary`, :func:`.ops.window_argmax`,
:class:`_BoundaryMatch`). The erosion and dilation are in :mod:`.morphology`.
"""
import torch

from . import bezier as _curves
from . import fused, ops
from .autograd import first_order_backward
from .bezier import curve_pieces
from .labels import EPS, LabelInfo
from .morphology import _erode, _erode_grad_add, check_radius, dilate_bool

__all__ = ["relaxed_bf1"]


def _soft_boundary_block(p, e, curves, need_grad):
    """B and (if ``need_grad``, else None) dB/dp, dB/de, like p, from p and its erosion e: four
    curve evaluations and a fixed number of ops on whole tensors."""
    # union part: g3(p) + g4(e) - g3(p) g4(e)
    gp, dp = _curves.evaluate(p, curves[2], need_grad)
    ge, de = _curves.evaluate(e, curves[3], need_grad)
    soft = torch.add(gp, ge).addcmul_(gp, ge, value=-1.0)
    if need_grad:
        d_p = torch.rsub(ge, 1.0).mul_(dp)
        d_e = torch.rsub(gp, 1.0).mul_(de)
    # minus the intersection g1(p) g2(e)
    gp, dp = _curves.evaluate(p, curves[0], need_grad)
    ge, de = _curves.evaluate(e, curves[1], need_grad)
    soft.addcmul_(gp, ge, value=-1.0)
    if not need_grad:
        return soft, None, None
    d_p.addcmul_(dp, ge, value=-1.0)
    d_e.addcmul_(gp, de, value=-1.0)
    return soft, d_p, d_e


def _soft_boundary_torch(p, curves, need_grad):
    """B and (if ``need_grad``, else None) dB/dp, dB/de of (N, K, H, W) probabilities p, its
    erosion computed on the way: on the whole tensors (a fixed number of ops), or on CPU above
    :data:`.ops.CPU_CHUNK_ELEMENTS` a group of planes at a time (:func:`.ops.plane_chunks`) into
    full-size outputs (:func:`.ops.map_planes`), so that the dozens of temporaries are
    chunk-sized and stay in cache."""
    if need_grad:
        return ops.map_planes(lambda x: _soft_boundary_block(x, _erode(x), curves, True), p, 3)
    soft = ops.map_planes(lambda x: _soft_boundary_block(x, _erode(x), curves, False)[0], p)
    return soft, None, None


class _SoftBoundary(torch.autograd.Function):
    """BF1's soft boundary of (N, K, H, W) probabilities p, erosion fused in (docs/method.md §2.3):

        e = MinPool3x3(p) (pad 1.0),   B = g3(p) + g4(e) - g3(p) g4(e) - g1(p) g2(e),
        dB/dp = g3'(p) (1 - g4(e)) - g1'(p) g2(e),    dB/de = g4'(e) (1 - g3(p)) - g1(p) g2'(e).

    The forward computes B and the two partials (:func:`_soft_boundary_torch`) and keeps the
    partials; backward returns ``grad dB/dp + MinPoolBackward(grad dB/de)`` (see
    :func:`_erode_grad_add`), computed in place in the partials, the erosion recomputed (on CPU
    a group of planes at a time, as in the forward). A second backward through a retained graph
    recomputes the partials.

    On CPU :class:`_FusedBoundaryTerms`, on CUDA :class:`_AcceleratedBoundaryTerms` replaces this
    and :class:`_BoundaryMatch`.
    """

    @staticmethod
    def forward(ctx, p, curves):
        soft, d_p, d_e = _soft_boundary_torch(p, curves, ctx.needs_input_grad[0])
        ctx.save_for_backward(p)
        # scratch, not saved tensors: backward turns the partials into the gradient in place
        ctx.curves, ctx.partials = curves, (d_p, d_e)
        return soft

    @staticmethod
    @first_order_backward
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        d_p, d_e = ctx.partials or (None, None)
        ctx.partials = None
        if d_p is None:  # backward through a retained graph: the partials were consumed
            _, d_p, d_e = _soft_boundary_torch(p, ctx.curves, True)
        chunks = ops.plane_chunks(p)
        if len(chunks) == 1:
            return _erode_grad_add(p, _erode(p), d_e.mul_(grad), d_p.mul_(grad)), None
        shape = (-1,) + p.shape[-2:]  # the partials are contiguous (_soft_boundary_torch)
        planes, grads = p.reshape(shape), grad.reshape(shape)
        d_ps, d_es = d_p.view(shape), d_e.view(shape)
        for chunk in chunks:
            x, g = planes[chunk], grads[chunk]
            _erode_grad_add(x, _erode(x), d_es[chunk].mul_(g), d_ps[chunk].mul_(g))
        return d_p, None


class _BoundaryMatch(torch.autograd.Function):
    """BF1's sums over the soft boundary B (N, K, H, W), with one gradient tensor.

    For the dilated ground-truth boundaries D (N, K, H, W) bool and the flat window-argmax
    ``index`` (see :func:`.ops.window_argmax`):

        n_fg_k = Σ B_k,   match_fg_k = Σ B_k D_k,   picked = B.flatten()[index],

    and backward assembles ``dL/dB = dL/dn_fg_k + dL/dmatch_fg_k D + scatter(dL/dpicked)`` in
    place in the float copy of D (instead of autograd adding three full-size tensors).
    """

    @staticmethod
    def forward(ctx, soft, dilated, index):
        n, k = soft.shape[:2]
        weight = dilated.to(soft.dtype)
        n_fg = soft.sum(dim=(0, 2, 3))
        # one dot product per (n, k) plane, no full-size product tensor (unlike vecdot); never in
        # reduced precision, even when called under autocast. On a CPU one BLAS dot per plane
        # (bmm's batched 1x1 products took 15x as long there: 78 vs 5 ms for 38 planes of 512K);
        # elsewhere one bmm.
        with torch.autocast(device_type=soft.device.type, enabled=False):
            length = soft.shape[2] * soft.shape[3]
            planes, weights = soft.reshape(n * k, length), weight.reshape(n * k, length)
            if soft.device.type == "cpu" and n * k:
                match_fg = torch.stack([torch.dot(a, b) for a, b in zip(planes, weights)])
            else:
                match_fg = torch.bmm(planes.unsqueeze(1), weights.unsqueeze(2))
        match_fg = match_fg.reshape(n, k).sum(0)
        ctx.save_for_backward(dilated, index)
        ctx.weight = weight  # scratch, not a saved tensor: backward builds dL/dB in it in place
        return n_fg, match_fg, soft.reshape(-1).take(index)

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_n, grad_match, grad_picked):
        dilated, index = ctx.saved_tensors
        grad = ctx.weight if ctx.weight is not None else dilated.to(grad_match.dtype)
        ctx.weight = None  # consumed in place; a retained graph's next backward rebuilds it
        k = grad.shape[1]
        grad.mul_(grad_match.view(1, k, 1, 1)).add_(grad_n.view(1, k, 1, 1))
        grad.view(-1).index_put_((index,), grad_picked, accumulate=True)
        return grad, None, None


class _FusedBoundaryTerms(torch.autograd.Function):
    """BF1's soft boundary and its three sums on CPU, in the C++ kernels (see :mod:`.ops`).

    The same as ``_BoundaryMatch(_SoftBoundary(p), dilated, ops.window_argmax(...))`` for
    probabilities p (N, K, H, W), the dilated ground-truth boundaries ``dilated`` (N, K, H, W)
    bool and the ground-truth boundary pixels ``positions`` (four (M,) int64 tensors n, k, h, w):
    returns ``n_fg``, ``match_fg`` (K,) and ``picked`` (M,). The forward kernel computes B and
    both per-plane sums in one pass; B itself is dropped after the window maxima are picked.
    The backward kernel recomputes the erosion and B's partials band by band, composes
    ``dL/dB = dL/dn_fg + dL/dmatch_fg D + scatter(dL/dpicked)`` and routes the erosion's
    gradient, so nothing full-size is stored between the passes but p.
    """

    @staticmethod
    def forward(ctx, p, curves, dilated, positions, radius):
        p, dilated = p.contiguous(), dilated.contiguous()
        soft, sums = ops.soft_boundary(p, curves, dilated)
        index = ops.window_argmax(soft, *positions, radius)
        picked = soft.reshape(-1).take(index)
        n, k = p.shape[:2]
        totals = sums.view(n, k, 2).sum(dim=0).to(p.dtype)
        ctx.save_for_backward(p, dilated, index)
        ctx.curves = curves
        return totals[:, 0].clone(), totals[:, 1].clone(), picked  # outputs with own memory

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_n, grad_match, grad_picked):
        p, dilated, index = ctx.saved_tensors
        k = p.shape[1]
        grad_n = p.new_zeros(k) if grad_n is None else grad_n.to(p.dtype).contiguous()
        grad_match = (p.new_zeros(k) if grad_match is None
                      else grad_match.to(p.dtype).contiguous())
        grad_picked = (p.new_zeros(index.shape) if grad_picked is None
                       else grad_picked.to(p.dtype))
        order = torch.argsort(index)
        grad = ops.soft_boundary_backward_bf1(
            p, ctx.curves, dilated, grad_n, grad_match, index[order],
            grad_picked[order].contiguous())
        return grad, None, None, None, None


class _AcceleratedBoundaryTerms(torch.autograd.Function):
    """BF1's soft boundary and its three sums in the Triton kernels of :mod:`.fused` (CUDA).

    The same as ``_BoundaryMatch(_SoftBoundary(p[:, keep]), dilated, ops.window_argmax(...))``
    for probabilities p (N, C, H, W), the kept classes ``keep`` (K,) int64, the dilated
    ground-truth boundaries ``dilated`` (N, K, H, W) bool and the ground-truth boundary pixels
    ``positions`` (four (M,) int64 tensors n, k, h, w): returns ``n_fg``, ``match_fg`` (K,) and
    ``picked`` (M,). p is read at the kept classes in place (no copy). Forward: one kernel for
    the erosion, B and both sums, one for the window argmax (:func:`.ops.window_argmax`; the
    separable torch fallback for windows too large to scan). Nothing full-size is saved but p:
    backward scatters dL/dpicked (one kernel, atomic adds), re-evaluates the curves in a second,
    composing ``dL/dB = dL/dn_fg + dL/dmatch_fg D + scatter(dL/dpicked)``, and routes the
    erosion's gradient in a third.
    """

    @staticmethod
    def forward(ctx, p, keep, curves, dilated, positions, radius):
        p, dilated = p.contiguous(), dilated.contiguous()
        soft, totals = fused.soft_boundary(p, keep, curves, dilated)
        index = ops.window_argmax(soft, *positions, radius)
        picked = soft.reshape(-1).take(index)
        ctx.save_for_backward(p, keep, dilated, index)
        ctx.curves = curves
        return totals[:, 0].clone(), totals[:, 1].clone(), picked  # outputs with own memory

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_n, grad_match, grad_picked):
        p, keep, dilated, index = ctx.saved_tensors
        k = keep.numel()
        grad_n = p.new_zeros(k) if grad_n is None else grad_n.to(p.dtype).contiguous()
        grad_match = (p.new_zeros(k) if grad_match is None
                      else grad_match.to(p.dtype).contiguous())
        if grad_picked is not None:
            grad_picked = grad_picked.to(p.dtype)
        grad = fused.soft_boundary_grad(p, keep, ctx.curves, dilated, index, grad_picked, grad_n,
                                        grad_match)
        return grad, None, None, None, None, None


def relaxed_bf1(probs, labels, curves, tolerance=5, drop_background=False, info=None):
    """BF1~ with four curves ``curves = [g1, g2, g3, g4]`` (docs/method.md §2.3).

    e = MinPool3x3(p) (pad 1.0); B~ = g3(p) + g4(e) - g3(p) g4(e) - g1(p) g2(e); the ground-truth
    boundary B_gt is exact; D~, D_gt are (2 tolerance + 1)^2 max-pool dilations;
    P_c = Σ B~ D_gt / (Σ B~ + eps), R_c = Σ D~ B_gt / (Σ B_gt + eps), F_c = 2 P R / (P + R + eps);
    the mean is over classes with a ground-truth boundary in the batch (without class 0 if
    ``drop_background``). No valid mask (void pixels count for the prediction side). None if no
    class qualifies.
    """
    n, c, h, w = probs.shape
    tolerance = check_radius(tolerance)
    info = info or LabelInfo(labels, c)
    edges = info.boundary
    n_gt = info.counts(edges).to(probs.dtype)
    keep_mask = n_gt > 0
    if drop_background:
        keep_mask[0] = False
    keep = torch.nonzero(keep_mask).reshape(-1)
    k = keep.numel()
    if k == 0:
        return None
    pieces = [curve_pieces(cp) for cp in curves]

    # Prediction side against the exact dilated ground-truth boundaries of the kept classes;
    gt_edges = edges.unsqueeze(1) & (info.safe.unsqueeze(1) == keep.view(1, k, 1, 1))
    gt_dilated = dilate_bool(gt_edges, tolerance)
    # ground-truth side: the dilated soft boundary is only needed at ground-truth boundary pixels.
    position = torch.full((c,), -1, dtype=torch.long, device=probs.device)
    position[keep] = torch.arange(k, device=probs.device)
    kept_class = position[info.safe]
    n_idx, h_idx, w_idx = torch.nonzero(edges & (kept_class >= 0), as_tuple=True)
    c_idx = kept_class[n_idx, h_idx, w_idx]
    positions = (n_idx, c_idx, h_idx, w_idx)
    if ops.accelerated(probs):
        n_fg, match_fg, soft_dilated = _AcceleratedBoundaryTerms.apply(
            probs, keep, pieces, gt_dilated, positions, tolerance)
    elif ops.fused_bf1(probs):
        dense = probs if k == c else probs.index_select(1, keep)
        n_fg, match_fg, soft_dilated = _FusedBoundaryTerms.apply(
            dense, pieces, gt_dilated, positions, tolerance)
    else:
        dense = probs if k == c else probs.index_select(1, keep)
        soft_edges = _SoftBoundary.apply(dense, pieces)
        index = ops.window_argmax(soft_edges, n_idx, c_idx, h_idx, w_idx, tolerance)
        n_fg, match_fg, soft_dilated = _BoundaryMatch.apply(soft_edges, gt_dilated, index)
    match_gt = probs.new_zeros(k).index_add(0, c_idx, soft_dilated)
    n_fg, match_fg, match_gt = info.reducer.sums(n_fg, match_fg, match_gt)  # docs/method.md §2.5

    precision = match_fg / (n_fg + EPS)
    recall = match_gt / (n_gt[keep] + EPS)
    return (2 * precision * recall / (precision + recall + EPS)).mean()
