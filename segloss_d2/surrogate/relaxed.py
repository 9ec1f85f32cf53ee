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

On CPU the full-size work (curve evaluations with their derivatives, the per-class sums, BF1's
soft boundary and its backward, the window maxima) runs in the fused C++ kernels of
``segloss_d2._C`` (see :mod:`.kernels`); the torch code below is the same computation, used on
other devices and as the fallback.
"""
import numbers
from functools import cached_property

import torch
import torch.nn.functional as F

from . import kernels
from .bezier import (
    block_size,
    curve_pieces,
    evaluate_block,
    evaluate_curve,
    no_double_backward,
    workspace,
)
from .stats import LOCAL

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

EPS = 1e-8


def check_radius(radius, name="tolerance"):
    """``radius`` as a Python int after checking it is an integer >= 0 (pixels); else raise.

    Raises:
        TypeError for a non-integer (bools and floats included), ValueError for a negative value.
    """
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0 (pixels), got {radius!r} "
                        f"({type(radius).__name__})")
    if radius < 0:
        raise ValueError(f"{name} must be an int >= 0 (pixels), got {radius}")
    return int(radius)


def effective_radius(radius, *lengths):
    """The radius that square-window operations cut at the image border need, at most.

    A window of radius r around a pixel of an axis of length L covers the whole axis once
    r >= L - 1, so every radius from ``max(lengths) - 1`` on gives the same dilation, window
    maximum and window argmax (value and gradient routing): the window operations below clamp
    the radius to this bound, so their work and memory stay bounded by the image size whatever
    the tolerance (docs/method.md §1.3).

    Args:
        radius (int): r >= 0.
        lengths (int): the side lengths of the window's axes (e.g. H, W).
    """
    return min(check_radius(radius, "radius"), max(max(lengths, default=1) - 1, 0))


def dilate_bool(mask, radius):
    """Square (Chebyshev) dilation of a bool map over its last two dims, windows cut at the border.

    Equal to ``max_pool2d(mask, 2 r + 1, stride=1, padding=r)`` on {0, 1} values, computed
    separably with log-many shifted ORs; the radius of each axis is clamped to its length - 1
    (see :func:`effective_radius`), so any radius costs at most what the image size needs.

    Each pass widens windows of radius ``covered`` to ``covered + shift`` (shift <= 2 covered + 1)
    by OR-ing the windows ``shift`` pixels away. A window centred outside the axis is read at the
    nearest end instead (its part inside the axis is contained in the end's window, and that one
    in the widened window), so windows near the border stay complete.

    Args:
        mask (Tensor): bool, shape (..., H, W).
        radius (int): r >= 0.
    """
    radius = check_radius(radius, "radius")
    out = mask
    for dim in (-1, -2):
        length, covered = out.shape[dim], 0
        axis_radius = effective_radius(radius, length)  # so every shift below is < length
        while covered < axis_radius:
            shift = min(2 * covered + 1, axis_radius - covered)
            rest = length - shift
            new = out.clone()
            new.narrow(dim, shift, rest).logical_or_(out.narrow(dim, 0, rest))
            new.narrow(dim, 0, shift).logical_or_(out.narrow(dim, 0, 1))
            new.narrow(dim, 0, rest).logical_or_(out.narrow(dim, shift, rest))
            new.narrow(dim, rest, shift).logical_or_(out.narrow(dim, length - 1, 1))
            out = new
            covered += shift
    return out


class LabelInfo:
    """Label statistics shared by the relaxed metrics of one batch (each computed once, lazily).

    Args:
        labels (Tensor): (N, H, W) int64.
        num_classes (int): C.
        reducer (Reducer): the statistics scope across processes (:mod:`.stats`, docs/method.md
            §2.5): :meth:`counts` and the relaxed metrics' soft sums go through it; default
            :data:`~.stats.LOCAL` (this process's batch).
    """

    def __init__(self, labels, num_classes, reducer=LOCAL):
        self.labels = labels = labels.contiguous()  # flat views in the backward passes
        self.num_classes = num_classes
        self.reducer = reducer
        self.valid = (labels >= 0) & (labels < num_classes)
        self.safe = torch.where(self.valid, labels, 0)

    @cached_property
    def boundary(self):
        """(N, H, W) bool: valid pixels with an in-image 8-neighbour of another label (§1.3)."""
        lab = self.labels
        differs = torch.zeros_like(self.valid)
        h, w = lab.shape[-2:]
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            x0, x1 = max(0, -dx), w - max(0, dx)
            a = lab[:, : h - dy, x0:x1]
            b = lab[:, dy:, x0 + dx : x1 + dx]
            neq = a != b
            differs[:, : h - dy, x0:x1] |= neq
            differs[:, dy:, x0 + dx : x1 + dx] |= neq
        return differs & self.valid

    def counts(self, mask):
        """(C,) float per-class number of ground-truth pixels inside ``mask`` (N, H, W) bool,
        summed by :attr:`reducer` (over all processes under ``global`` statistics)."""
        weights = mask.reshape(-1).to(torch.float64)  # exact integer counts
        counts = torch.bincount(self.safe.reshape(-1), weights, minlength=self.num_classes)
        return self.reducer.counts(counts).float()

    def trimap(self, tolerance, drop_background):
        """(N, H, W) bool BIoU band: dilated ground-truth boundaries (without class 0 if asked)."""
        edges = self.boundary
        if drop_background:
            edges = edges & (self.labels != 0)
        return dilate_bool(edges, tolerance)


def _blocks(n, k, length, step):
    """Cache-sized contiguous blocks of a contiguous (N, K, L) tensor, as index tuples.

    Yields ``(i, rows, cols)``: ``x[i, rows, cols]`` is a contiguous (r, l) block of about ``step``
    elements, either part of one row (``L >= step``) or several whole rows.
    """
    if length >= step:
        for i in range(n):
            for r in range(k):
                for c0 in range(0, length, step):
                    yield i, slice(r, r + 1), slice(c0, c0 + step)
    else:
        rows = max(1, step // max(1, length))
        for i in range(n):
            for r0 in range(0, k, rows):
                yield i, slice(r0, r0 + rows), slice(None)


def _dense_terms(probs, weight, pieces, present, need_grad):
    """Block loop of the dense union term over the ``present`` classes (all if None).

    For probabilities (N, C, L), pixel weights (N, L) (None: all ones) and one curve g, returns
    the per-image, per-class sums ``Σ_l w g(p)`` (N, K) and, if ``need_grad``, the slopes
    ``w g'(p)`` (N, K, L) (else None), K = number of present classes. g(p) is evaluated block by
    block (see :func:`_blocks`) and never stored at full size; on CPU in one fused C++ pass
    (``region_dense``, see :mod:`.kernels`).
    """
    if kernels.use_kernels(probs):
        classes = (torch.arange(probs.shape[1], device=probs.device) if present is None
                   else present)
        sums, slopes = torch.ops.segloss_d2.region_dense(
            probs, classes, weight, kernels.flat_coefficients(pieces), need_grad)
        return sums, slopes if need_grad else None
    n, _, length = probs.shape
    dense = probs if present is None else probs.index_select(1, present)
    k = dense.shape[1]
    sums = probs.new_zeros(n, k)
    slopes = torch.empty_like(dense) if need_grad else None
    step = block_size(dense)
    work = workspace(dense, step)
    buffer = dense.new_empty(work.shape[1])
    for i, rows, cols in _blocks(n, k, length, step):
        x = dense[i, rows, cols]
        g = buffer[: x.numel()].view(x.shape)
        d = None if slopes is None else slopes[i, rows, cols]
        evaluate_block(x, pieces, g, d, work)
        if weight is None:
            sums[i, rows] += g.sum(dim=1)
        else:
            sums[i, rows] += torch.mv(g, weight[i, cols])
            if d is not None:
                d.mul_(weight[i, cols])
    return sums, slopes


class _RegionSums(torch.autograd.Function):
    """Fused per-class sums of the region surrogates, with one dense gradient tensor.

    For probabilities p (N, C, L), labels l (N, L), pixel weights w (N, L) (None: all ones),
    curves g_A, g_O (optional) and the classes ``present`` (None: all) that need the dense sum:

        inter_c = Σ_i w_i g_A(p_{i,c}) [l_i = c],    g_lab_c = Σ_i w_i g_O(p_{i,c}) [l_i = c],
        g_sum_c = Σ_i w_i g_O(p_{i,c})  (c in present; 0 otherwise).

    The label-pixel terms touch one probability per pixel (a gather). The dense term is the only
    full-size work: g_O and g_O' are evaluated block by block in cache, g_O(p) is reduced per
    class at once (it is never stored), and only w g_O'(p) is kept for backward, where

        dL/dp_{i,c} = w_i [g_O'(p_ic) dL/dg_sum_c + [l_i = c] (g_A'(p_ic) dL/dinter_c
                                                                + g_O'(p_ic) dL/dg_lab_c)]

    is assembled in a single tensor (instead of autograd adding a gather-backward, a scatter and
    an index_select-backward, each full size). Returns (inter,) without g_O, else
    (inter, g_sum, g_lab); all (C,).
    """

    @staticmethod
    def forward(ctx, probs, labels, weight, and_pieces, or_pieces, present):
        n, c, length = probs.shape
        need_grad = ctx.needs_input_grad[0]
        index = labels.reshape(n, 1, length)
        flat_labels = labels.reshape(-1)
        flat_weight = None if weight is None else weight.reshape(-1)
        p_lab = probs.gather(1, index).reshape(-1)

        def label_sum(pieces):
            g, d = evaluate_curve(p_lab, pieces, need_grad)
            if flat_weight is not None:
                g = g.mul_(flat_weight)
                d = None if d is None else d.mul_(flat_weight)
            return probs.new_zeros(c).index_add_(0, flat_labels, g), d

        inter, d_and = label_sum(and_pieces)
        ctx.shape, ctx.present = probs.shape, present
        if or_pieces is None:
            ctx.save_for_backward(index, d_and)
            return (inter,)
        g_lab, d_or = label_sum(or_pieces)
        sums, slopes = _dense_terms(probs, weight, or_pieces, present, need_grad)
        g_sum = sums.sum(dim=0)
        if present is not None:
            g_sum = probs.new_zeros(c).index_copy_(0, present, g_sum)
        ctx.save_for_backward(index, d_and, d_or, probs, weight)
        ctx.or_pieces, ctx.slopes = or_pieces, slopes
        return inter, g_sum, g_lab

    @staticmethod
    def backward(ctx, grad_inter, grad_sum=None, grad_lab=None):
        no_double_backward()
        n, c, length = ctx.shape
        present = ctx.present
        if len(ctx.saved_tensors) == 2:
            index, d_and = ctx.saved_tensors
            grad = grad_inter.new_zeros(ctx.shape)
            at_labels = d_and * grad_inter.index_select(0, index.reshape(-1))
        else:
            index, d_and, d_or, probs, weight = ctx.saved_tensors
            slopes, ctx.slopes = ctx.slopes, None  # used in place: fresh tensors cost page faults
            if slopes is None:  # backward through a retained graph: recompute
                _, slopes = _dense_terms(probs, weight, ctx.or_pieces, present, True)
            if present is None:
                grad = slopes.mul_(grad_sum.view(1, c, 1))
            else:
                grad = grad_sum.new_zeros(ctx.shape).index_copy_(
                    1, present, slopes * grad_sum[present].view(1, -1, 1))
            flat = index.reshape(-1)
            at_labels = (d_and * grad_inter.index_select(0, flat)).addcmul_(
                d_or, grad_lab.index_select(0, flat))
        grad.scatter_add_(1, index, at_labels.view(n, 1, length))
        return grad, None, None, None, None, None


def _intersection_union(probs, info, and_cp, or_cp, mask):
    """Per-class relaxed intersection, union (None if ``or_cp`` is None) and GT counts.

    I_c = Σ_{mask} g_A(p_c) y_c,  U_c = Σ_{mask} (g_O(p_c) + y_c - g_O(p_c) y_c) + eps,
    n_c = Σ_{mask} y_c; all (C,) in the dtype of ``probs`` (float32 for half inputs). The sum of
    g_O is only taken over the classes present in the mask (absent ones have I_c = 0, so their
    U_c does not matter; see the module docstring). Computed by :class:`_RegionSums`.
    """
    n, c, h, w = probs.shape
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
    counts = info.counts(mask).to(probs.dtype)
    weight = None if bool(mask.all()) else mask.to(probs.dtype).reshape(n, h * w)
    and_pieces = curve_pieces(and_cp)
    or_pieces = None if or_cp is None else curve_pieces(or_cp)
    present = torch.nonzero(counts > 0).reshape(-1)
    present = None if present.numel() == c else present
    with torch.autocast(device_type=probs.device.type, enabled=False):
        sums = _RegionSums.apply(probs.reshape(n, c, h * w).contiguous(), info.safe, weight,
                                 and_pieces, or_pieces, present)
    sums = info.reducer.sums(*sums)  # statistics scope (docs/method.md §2.5)
    if or_cp is None:
        return sums[0], None, counts
    inter, g_sum, g_lab = sums
    return inter, g_sum + counts - g_lab + EPS, counts


def _class_mean(values, counts, present_classes_only):
    """Mean of the per-class ``values`` over all classes (or the present ones); None (undefined)
    when no pixel was counted (``counts`` (C,) all zero: e.g. every pixel ignored)."""
    present = counts > 0
    if not bool(present.any()):
        return None
    return values[present].mean() if present_classes_only else values.mean()


def relaxed_miou(probs, labels, and_cp, or_cp, present_classes_only=False, info=None):
    """mIoU~ = (1/C) Σ_c I_c / U_c over the valid pixels (absent classes add 0 to the mean);
    None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, union, counts = _intersection_union(probs, info, and_cp, or_cp, info.valid)
    return _class_mean(inter / union, counts, present_classes_only)


def relaxed_fwiou(probs, labels, and_cp, or_cp, info=None):
    """fwIoU~ = Σ_{c: n_c>0} n_c I_c / U_c / Σ_c n_c; None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, union, counts = _intersection_union(probs, info, and_cp, or_cp, info.valid)
    total = counts.sum()
    if not bool(total > 0):
        return None
    return (counts * (inter / union)).sum() / total


def relaxed_biou(probs, labels, and_cp, or_cp, tolerance=5, drop_background=False,
                 present_classes_only=False, info=None):
    """BIoU~: mIoU~ over the valid pixels inside the ground-truth trimap band (§2.3).

    The trimap is the union over classes (without class 0 if ``drop_background``) of the
    ground-truth boundaries dilated by a (2 tolerance + 1)^2 square; exact, no gradient. The mean is
    over all C classes (background included) unless ``present_classes_only``. None when no valid
    pixel lies inside the trimap (e.g. no ground-truth boundary, or every pixel ignored).
    """
    tolerance = check_radius(tolerance)
    info = info or LabelInfo(labels, probs.shape[1])
    mask = info.valid & info.trimap(tolerance, drop_background)
    inter, union, counts = _intersection_union(probs, info, and_cp, or_cp, mask)
    return _class_mean(inter / union, counts, present_classes_only)


def relaxed_macc(probs, labels, and_cp, present_classes_only=False, info=None):
    """mACC~ = (1/C) Σ_c Σ g_A(p_c) y_c / (Σ y_c + eps); None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, _, counts = _intersection_union(probs, info, and_cp, None, info.valid)
    return _class_mean(inter / (counts + EPS), counts, present_classes_only)


def relaxed_gacc(probs, labels, and_cp, info=None):
    """pACC~ = Σ_c Σ g_A(p_c) y_c / (Σ_c Σ y_c + eps); None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, _, counts = _intersection_union(probs, info, and_cp, None, info.valid)
    total = counts.sum()
    if not bool(total > 0):
        return None
    return inter.sum() / (total + EPS)


def _min3(x, out, dim):
    """``out[i] = min(x[i-1], x[i], x[i+1])`` along ``dim`` (window cut at the border)."""
    out.copy_(x)
    rest = x.shape[dim] - 1
    if rest > 0:
        head, tail = out.narrow(dim, 0, rest), out.narrow(dim, 1, rest)
        torch.minimum(tail, x.narrow(dim, 0, rest), out=tail)
        torch.minimum(head, x.narrow(dim, 1, rest), out=head)
    return out


def _min3_backward(x, out, grad, dim, result, work, accumulate):
    """Route ``grad`` of ``out = _min3(x)`` to the first minimum of each window, into ``result``.

    "First" in window order (``i-1``, then ``i``, then ``i+1``), as in max-pooling's backward.
    ``out[i]`` is one of its window's values, so exact equality identifies the winner; the
    indicators are {0, 1} floats (``torch.eq`` into a float tensor), which keeps every product and
    sum exact. ``work``: (3, ...) scratch like ``x``. Adds to ``result`` if ``accumulate``.
    """
    rest = x.shape[dim] - 1
    if rest == 0:
        return result.add_(grad) if accumulate else result.copy_(grad)
    prev, own, nxt = work  # out[i] = x[i-1]; = x[i] (not x[i-1]); = x[i+1] (neither)
    prev.narrow(dim, 0, 1).zero_()
    torch.eq(x.narrow(dim, 0, rest), out.narrow(dim, 1, rest), out=prev.narrow(dim, 1, rest))
    torch.eq(x, out, out=own).addcmul_(own, prev, value=-1.0)
    torch.add(prev, own, out=nxt).neg_().add_(1.0)
    if accumulate:
        result.addcmul_(grad, own)
    else:
        torch.mul(grad, own, out=result)
    result.narrow(dim, 0, rest).addcmul_(grad.narrow(dim, 1, rest), prev.narrow(dim, 1, rest))
    result.narrow(dim, 1, rest).addcmul_(grad.narrow(dim, 0, rest), nxt.narrow(dim, 0, rest))
    return result


def _plane_chunks(x):
    """Slices of the flattened planes of (N, K, H, W) ``x``, about one block each.

    The pure-torch BF1 code works on a few (H, W) planes at a time, ``block_size(x)`` elements
    (at least one plane): on CPU a chunk stays in cache; on GPUs it bounds the scratch while
    keeping kernel launches few (one chunk of many small planes instead of a loop over planes).
    """
    planes = x.shape[0] * x.shape[1]
    step = max(1, block_size(x) // max(1, x.shape[2] * x.shape[3]))
    return [slice(i, i + step) for i in range(0, planes, step)]


def _erode(x):
    """3x3 min-pool of (N, K, H, W) values, windows cut at the border (= padding with 1.0).

    Separable (rows, then columns), a chunk of planes at a time (see :func:`_plane_chunks`).
    """
    out = torch.empty_like(x)
    flat_x, flat_out = x.flatten(0, 1), out.flatten(0, 1)
    chunks = _plane_chunks(x)
    rows = x.new_empty((chunks[0].stop - chunks[0].start,) + x.shape[2:]) if chunks else None
    for chunk in chunks:
        part = flat_x[chunk]
        _min3(_min3(part, rows[: part.shape[0]], -1), flat_out[chunk], -2)
    return out


def _erode_grad_add(x, eroded, grad, result):
    """Add the gradient of :func:`_erode` for (..., H, W) planes ``grad`` to ``result``, in place.

    Exactly like ``-max_pool2d(-x, 3, 1, 1)``: each window's gradient goes to its first minimum
    in row-major order; the column pass routes to the first row whose row minimum is the window
    minimum, the row pass to the first column in that row.
    """
    rows, grad_rows, *work = x.new_empty((5,) + x.shape)
    _min3(x, rows, -1)
    _min3_backward(rows, eroded, grad, -2, grad_rows, work, False)
    return _min3_backward(x, rows, grad_rows, -1, result, work, True)


def _soft_boundary_blocks(p, e, curves, need_grad):
    """B and (if ``need_grad``) dB/dp, dB/de at full size, evaluated in cache-sized blocks."""
    p_flat, e_flat = p.reshape(-1), e.reshape(-1)
    soft = torch.empty_like(p_flat)
    d_p = torch.empty_like(p_flat) if need_grad else None
    d_e = torch.empty_like(p_flat) if need_grad else None
    step = block_size(p_flat)
    work = workspace(p_flat, step)
    values = p_flat.new_empty(4, work.shape[1])
    for start in range(0, p_flat.numel(), step):
        sl = slice(start, start + step)
        size = min(step, p_flat.numel() - start)
        gp, ge, dp, de = (buf[:size] for buf in values)
        dp, de = (dp, de) if need_grad else (None, None)
        # union part: g3(p) + g4(e) - g3(p) g4(e)
        evaluate_block(p_flat[sl], curves[2], gp, dp, work)
        evaluate_block(e_flat[sl], curves[3], ge, de, work)
        torch.add(gp, ge, out=soft[sl]).addcmul_(gp, ge, value=-1.0)
        if need_grad:
            torch.mul(ge, -1.0, out=d_p[sl]).add_(1.0).mul_(dp)
            torch.mul(gp, -1.0, out=d_e[sl]).add_(1.0).mul_(de)
        # minus the intersection g1(p) g2(e)
        evaluate_block(p_flat[sl], curves[0], gp, dp, work)
        evaluate_block(e_flat[sl], curves[1], ge, de, work)
        soft[sl].addcmul_(gp, ge, value=-1.0)
        if need_grad:
            d_p[sl].addcmul_(dp, ge, value=-1.0)
            d_e[sl].addcmul_(gp, de, value=-1.0)
    if not need_grad:
        return soft.view(p.shape), None, None
    return soft.view(p.shape), d_p.view(p.shape), d_e.view(p.shape)


class _SoftBoundary(torch.autograd.Function):
    """BF1's soft boundary of (N, K, H, W) probabilities p, erosion fused in (docs/method.md §2.3):

        e = MinPool3x3(p) (pad 1.0),   B = g3(p) + g4(e) - g3(p) g4(e) - g1(p) g2(e).

    The four curves and their derivatives are evaluated block by block in cache; only e, B and
    the two partials are written at full size:

        dB/dp = g3'(p) (1 - g4(e)) - g1'(p) g2(e),    dB/de = g4'(e) (1 - g3(p)) - g1(p) g2'(e),

    and backward returns ``grad dB/dp + MinPoolBackward(grad dB/de)`` (see :func:`_erode_grad_add`),
    computed in place in the partials a chunk of planes at a time (a fresh full-size CPU tensor
    costs page faults). A second backward through a retained graph recomputes the partials.

    On CPU, :class:`_FusedBoundaryTerms` replaces this and :class:`_BoundaryMatch`.
    """

    @staticmethod
    def forward(ctx, p, curves):
        eroded = _erode(p)
        soft, d_p, d_e = _soft_boundary_blocks(p, eroded, curves, ctx.needs_input_grad[0])
        ctx.save_for_backward(p, eroded)
        ctx.curves, ctx.partials = curves, (d_p, d_e)
        return soft

    @staticmethod
    def backward(ctx, grad):
        no_double_backward()
        d_p, d_e = ctx.partials or (None, None)
        ctx.partials = None
        p, eroded = ctx.saved_tensors
        if d_p is None:  # backward through a retained graph: the partials were consumed
            _, d_p, d_e = _soft_boundary_blocks(p, eroded, ctx.curves, True)
        views = [t.flatten(0, 1) for t in (p, eroded, d_p, d_e, grad.expand_as(p))]
        for chunk in _plane_chunks(p):  # a few planes at a time, reused from cache
            x, e, dp, de, g = (v[chunk] for v in views)
            dp.mul_(g)
            de.mul_(g)
            _erode_grad_add(x, e, de, dp)
        return d_p, None


def _row_window_max(values, radius):
    """max over ``values[n, c, h, w - r : w + r + 1]`` (cut at the border), like ``values``.

    A chunk of planes at a time (:func:`_plane_chunks`): pad the rows with -inf, then running
    maxima of doubling span (log2(2r+1) passes); on CPU the same in C++, row by row. The radius is
    clamped to W - 1 (:func:`effective_radius`).
    """
    radius = effective_radius(radius, values.shape[-1])
    if kernels.use_kernels(values):
        return torch.ops.segloss_d2.row_window_max(values.contiguous(), radius)
    result = torch.empty_like(values)
    size = 2 * radius + 1
    flat_values, flat_result = values.flatten(0, 1), result.flatten(0, 1)
    for chunk in _plane_chunks(values):
        out = F.pad(flat_values[chunk], (radius, radius), value=float("-inf"))
        span = 1
        while span < size:
            shift = min(span, size - span)
            out = torch.maximum(out[..., :-shift], out[..., shift:])
            span += shift
        flat_result[chunk] = out
    return result


def _window_argmax(values, n_idx, c_idx, h_idx, w_idx, radius):
    """Flat index into ``values`` of the max over the (2r+1)^2 window (cut at the border) of
    ``values[n, c]`` around (h, w), for M positions; no gradient.

    ``values.flatten()[index]`` equals ``max_pool2d(values, 2r+1, 1, r)[n, c, h, w]``, and the index
    is max-pooling's gradient routing (the first maximum in row-major window order). Separable:
    the first of the window's rows whose row-window maximum is the largest (from the dense row
    maxima, :func:`_row_window_max`), then the first column of that row holding it.

    On CPU, when the positions are sparse (M (2r+1)^2 <= values.numel(), e.g. boundary pixels),
    a C++ kernel scans each window directly instead (same index: the first maximum in row-major
    order), which needs no dense row maxima. The radius is clamped to max(H, W) - 1
    (:func:`effective_radius`: a larger one changes neither the maximum nor its index).

    Returns:
        (M,) int64 tensor.
    """
    _, c, h, w = values.shape
    radius = effective_radius(radius, h, w)
    if kernels.use_kernels(values) and n_idx.numel() * (2 * radius + 1) ** 2 <= values.numel():
        return torch.ops.segloss_d2.window_argmax(
            values.detach().contiguous(), n_idx.contiguous(), c_idx.contiguous(),
            h_idx.contiguous(), w_idx.contiguous(), radius)
    offsets = torch.arange(-radius, radius + 1, device=values.device)
    with torch.no_grad():
        row_max = _row_window_max(values.detach(), radius).reshape(-1)
        plane = (n_idx * c + c_idx) * h
        rows = (h_idx[:, None] + offsets).clamp_(0, h - 1)  # (M, 2r+1); repeats keep "first"
        best = row_max[(plane[:, None] + rows) * w + w_idx[:, None]].argmax(dim=1, keepdim=True)
        row = (plane + rows.gather(1, best).squeeze(1)) * w
        cols = (w_idx[:, None] + offsets).clamp_(0, w - 1)
        best = values.detach().reshape(-1)[row[:, None] + cols].argmax(dim=1, keepdim=True)
        return row + cols.gather(1, best).squeeze(1)


class _BoundaryMatch(torch.autograd.Function):
    """BF1's sums over the soft boundary B (N, K, H, W), with one gradient tensor.

    For the dilated ground-truth boundaries D (N, K, H, W) bool and the flat window-argmax
    ``index`` (see :func:`_window_argmax`):

        n_fg_k = Σ B_k,   match_fg_k = Σ B_k D_k,   picked = B.flatten()[index],

    and backward assembles ``dL/dB = dL/dn_fg_k + dL/dmatch_fg_k D + scatter(dL/dpicked)`` in
    place in the float copy of D (instead of autograd adding three full-size tensors).
    """

    @staticmethod
    def forward(ctx, soft, dilated, index):
        n, k = soft.shape[:2]
        weight = dilated.to(soft.dtype)
        n_fg = soft.sum(dim=(0, 2, 3))
        # one dot product per (n, k) plane (bmm: no full-size product tensor, unlike vecdot);
        # never in reduced precision, even when called under autocast
        with torch.autocast(device_type=soft.device.type, enabled=False):
            match_fg = torch.bmm(soft.reshape(n * k, 1, -1), weight.reshape(n * k, -1, 1))
        match_fg = match_fg.reshape(n, k).sum(0)
        ctx.save_for_backward(dilated, index)
        ctx.weight = weight
        return n_fg, match_fg, soft.reshape(-1).take(index)

    @staticmethod
    def backward(ctx, grad_n, grad_match, grad_picked):
        no_double_backward()
        dilated, index = ctx.saved_tensors
        grad = ctx.weight if ctx.weight is not None else dilated.to(grad_match.dtype)
        ctx.weight = None  # consumed in place; a retained graph's next backward rebuilds it
        k = grad.shape[1]
        grad.mul_(grad_match.view(1, k, 1, 1)).add_(grad_n.view(1, k, 1, 1))
        grad.view(-1).index_put_((index,), grad_picked, accumulate=True)
        return grad, None, None


class _FusedBoundaryTerms(torch.autograd.Function):
    """BF1's soft boundary and its three sums on CPU, in the C++ kernels (see :mod:`.kernels`).

    The same as ``_BoundaryMatch(_SoftBoundary(p), dilated, _window_argmax(...))`` for
    probabilities p (N, K, H, W), the dilated ground-truth boundaries ``dilated`` (N, K, H, W)
    bool and the ground-truth boundary pixels ``positions`` (four (M,) int64 tensors n, k, h, w):
    returns ``n_fg``, ``match_fg`` (K,) and ``picked`` (M,). The forward kernel computes B, its
    partials and both per-plane sums in one pass; B itself is dropped after the window maxima are
    picked. The backward kernel composes ``dL/dB = dL/dn_fg + dL/dmatch_fg D + scatter(dL/dpicked)``
    band by band while it routes the erosion's gradient, so no full-size dL/dB is stored.
    """

    @staticmethod
    def forward(ctx, p, curves, dilated, positions, radius):
        need_grad = ctx.needs_input_grad[0]
        p, dilated = p.contiguous(), dilated.contiguous()
        soft, d_p, d_e, sums = _fused_soft_boundary(p, curves, need_grad, dilated)
        index = _window_argmax(soft, *positions, radius)
        picked = soft.reshape(-1).take(index)
        n, k = p.shape[:2]
        totals = sums.view(n, k, 2).sum(dim=0).to(p.dtype)
        ctx.save_for_backward(p, dilated, index)
        ctx.curves, ctx.partials = curves, ((d_p, d_e) if need_grad else None)
        return totals[:, 0].clone(), totals[:, 1].clone(), picked  # outputs with own memory

    @staticmethod
    def backward(ctx, grad_n, grad_match, grad_picked):
        no_double_backward()
        p, dilated, index = ctx.saved_tensors
        d_p, d_e = ctx.partials or (None, None)
        ctx.partials = None  # consumed in place; a retained graph's next backward recomputes them
        if d_p is None:
            _, d_p, d_e, _ = _fused_soft_boundary(p, ctx.curves, True)
        k = p.shape[1]
        grad_n = p.new_zeros(k) if grad_n is None else grad_n.to(p.dtype).contiguous()
        grad_match = (p.new_zeros(k) if grad_match is None
                      else grad_match.to(p.dtype).contiguous())
        grad_picked = (p.new_zeros(index.shape) if grad_picked is None
                       else grad_picked.to(p.dtype))
        order = torch.argsort(index)
        grad = torch.ops.segloss_d2.soft_boundary_backward_bf1(
            p, d_p, d_e, dilated, grad_n, grad_match, index[order],
            grad_picked[order].contiguous(), d_p)
        return grad, None, None, None, None


def _fused_soft_boundary(p, curves, need_grad, mask=None):
    """B, dB/dp, dB/de (empty without ``need_grad``) and, with ``mask``, the per-plane sums
    (N*K, 2) float64 of B and B [mask], by the C++ kernel (contiguous CPU p)."""
    coeffs = [v for pieces in curves for v in kernels.flat_coefficients(pieces)]
    return torch.ops.segloss_d2.soft_boundary(p, coeffs, [len(pieces) for pieces in curves],
                                              need_grad, mask)


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
    dense = probs if k == c else probs.index_select(1, keep)
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
    if kernels.use_kernels(dense):
        n_fg, match_fg, soft_dilated = _FusedBoundaryTerms.apply(
            dense, pieces, gt_dilated, (n_idx, c_idx, h_idx, w_idx), tolerance)
    else:
        soft_edges = _SoftBoundary.apply(dense, pieces)
        index = _window_argmax(soft_edges, n_idx, c_idx, h_idx, w_idx, tolerance)
        n_fg, match_fg, soft_dilated = _BoundaryMatch.apply(soft_edges, gt_dilated, index)
    match_gt = probs.new_zeros(k).index_add(0, c_idx, soft_dilated)
    n_fg, match_fg, match_gt = info.reducer.sums(n_fg, match_fg, match_gt)  # docs/method.md §2.5

    precision = match_fg / (n_fg + EPS)
    recall = match_gt / (n_gt[keep] + EPS)
    return (2 * precision * recall / (precision + recall + EPS)).mean()
