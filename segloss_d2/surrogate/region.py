"""The region surrogates: mIoU, fwIoU, BIoU, mACC and pACC (docs/method.md §2.3).

Conventions (shapes, void labels, eps, ``None`` when undefined, statistics scope): see
:mod:`segloss_d2.surrogate`. Each metric is a ratio of per-class soft sums, all computed by
one fused autograd Function (:class:`_RegionSums`):

    I_c = Σ g_A(p_c) y_c,    U_c = Σ (g_O(p_c) + y_c - g_O(p_c) y_c) + eps,    n_c = Σ y_c

over the valid pixels (BIoU: those inside the ground-truth trimap). Its only full-size work, the
dense sum of g_O over the present classes, is :func:`.ops.region_dense` (compiled kernel on CPU,
pure torch elsewhere). On CUDA the whole Function is replaced by two Triton kernels
(:class:`_AcceleratedRegionSums`, chosen by :func:`.ops.accelerated`).

Every ``relaxed_*`` function takes an optional ``logits``: the (N, C, H, W) tensor whose softmax
over dim 1 is ``probs`` (as :class:`~.loss.SurrogateLoss` passes it). With the C++ kernels
(CPU) the term's gradient then goes to ``logits`` directly, through the softmax's backward fused
into the surrogate's (:class:`_SoftmaxRegionSums`), and ``probs`` gets none from this term;
elsewhere ``logits`` is not used.
"""
import torch

from . import fused, ops
from .autograd import first_order_backward
from .bezier import curve_pieces
from .labels import EPS, LabelInfo
from .morphology import check_radius

__all__ = ["relaxed_fwiou", "relaxed_gacc", "relaxed_biou", "relaxed_macc", "relaxed_miou"]


class _RegionSums(torch.autograd.Function):
    """Fused per-class sums of the region surrogates, with one dense gradient tensor.

    For probabilities p (N, C, L), labels l (N, L), pixel weights w (N, L) (None: all ones),
    curves g_A, g_O (optional) and the classes ``present`` (None: all) that need the dense sum:

        inter_c = Σ_i w_i g_A(p_{i,c}) [l_i = c],    g_lab_c = Σ_i w_i g_O(p_{i,c}) [l_i = c],
        g_sum_c = Σ_i w_i g_O(p_{i,c})  (c in present; 0 otherwise).

    The label-pixel terms touch one probability per pixel (a gather). The dense term is the only
    full-size work (:func:`.ops.region_dense`): g_O(p) is reduced per class at once and only
    w g_O'(p) is kept for backward, where

        dL/dp_{i,c} = w_i [g_O'(p_ic) dL/dg_sum_c + [l_i = c] (g_A'(p_ic) dL/dinter_c
                                                                + g_O'(p_ic) dL/dg_lab_c)]

    is assembled in a single tensor (instead of autograd adding a gather-backward, a scatter and
    an index_select-backward, each full size). Returns (inter,) without g_O, else
    (inter, g_sum, g_lab); all (C,).
    """

    @staticmethod
    def forward(ctx, probs, labels, weight, and_pieces, or_pieces, present):
        n, c, length = probs.shape
        index = labels.reshape(n, 1, length)
        (inter, g_sum, g_lab), (d_and, d_or, slopes) = _region_sums(
            probs, labels, weight, and_pieces, or_pieces, present, ctx.needs_input_grad[0])
        ctx.shape, ctx.or_pieces = probs.shape, or_pieces
        if or_pieces is None:
            ctx.save_for_backward(index, present, d_and)
            return (inter,)
        ctx.save_for_backward(index, present, d_and, d_or, probs, weight)
        # Scratch handed to backward, not a saved tensor: backward turns it into the gradient in
        # place (a fresh full-size CPU tensor costs page faults), and a saved tensor may not be
        # modified (its version check would fail a retained graph's next backward).
        ctx.slopes = slopes
        return inter, g_sum, g_lab

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_inter, grad_sum=None, grad_lab=None):
        n, c, length = ctx.shape
        if ctx.or_pieces is None:
            index, present, d_and = ctx.saved_tensors
            grad = grad_inter.new_zeros(ctx.shape)
            at_labels = d_and * grad_inter.index_select(0, index.reshape(-1))
        else:
            index, present, d_and, d_or, probs, weight = ctx.saved_tensors
            slopes, ctx.slopes = ctx.slopes, None  # used in place: fresh tensors cost page faults
            if slopes is None:  # backward through a retained graph: recompute
                _, slopes = ops.region_dense(probs, weight, ctx.or_pieces, present, True)
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


def _region_sums(probs, labels, weight, and_pieces, or_pieces, present, need_grad):
    """The sums of :class:`_RegionSums`, ((inter, g_sum, g_lab), (d_and, d_or, slopes)): g_sum,
    g_lab, d_or and slopes are None without g_O; the slopes (w g_O'(p) of the ``present``
    classes, (N, K, L)) and d_and, d_or (w g'(p) at the label pixels, (N L,)) only with
    ``need_grad``."""
    n, c, length = probs.shape
    flat_labels = labels.reshape(-1)
    flat_weight = None if weight is None else weight.reshape(-1)
    p_lab = probs.gather(1, labels.reshape(n, 1, length)).reshape(-1)

    def label_sum(pieces):
        g, d = ops.bezier(p_lab, pieces, need_grad)
        if flat_weight is not None:
            g = g.mul_(flat_weight)
            d = None if d is None else d.mul_(flat_weight)
        return probs.new_zeros(c).index_add_(0, flat_labels, g), d

    inter, d_and = label_sum(and_pieces)
    if or_pieces is None:
        return (inter, None, None), (d_and, None, None)
    g_lab, d_or = label_sum(or_pieces)
    sums, slopes = ops.region_dense(probs, weight, or_pieces, present, need_grad)
    g_sum = sums.sum(dim=0)
    if present is not None:
        g_sum = probs.new_zeros(c).index_copy_(0, present, g_sum)
    return (inter, g_sum, g_lab), (d_and, d_or, slopes)


def _sum_gradients(probs, present, grad_inter, grad_sum, grad_lab):
    """The three (C,) gradients of the sums, zeros for those not given, grad_sum zero outside
    ``present`` (no dense sum there)."""
    c = probs.shape[1]

    def vector(grad):
        return probs.new_zeros(c) if grad is None else grad.to(probs.dtype).contiguous()

    grad_inter, grad_sum, grad_lab = vector(grad_inter), vector(grad_sum), vector(grad_lab)
    if present is not None:
        grad_sum = torch.zeros_like(grad_sum).index_copy_(0, present, grad_sum[present])
    return grad_inter, grad_sum, grad_lab


class _SoftmaxRegionSums(torch.autograd.Function):
    """:class:`_RegionSums` of p = softmax(x) over dim 1, with the C++ kernels (CPU): the same
    inputs (plus the logits x) and outputs, but the gradient goes to x.

    Forward evaluates the curves without keeping their slopes. Backward is one kernel
    (:func:`.ops.region_backward`) that recomputes the slopes from p, assembles dL/dp per pixel
    in cache and applies the softmax's backward ``dL/dx = p (dL/dp - Σ_c p dL/dp)`` in the same
    pass: neither the slopes nor dL/dp is ever written, and torch's softmax backward does not run
    for this term (the softmax's backward is linear, so terms of other metrics that go through p
    still add up at x). Nothing full-size is saved but p, which the softmax keeps anyway.
    """

    @staticmethod
    def forward(ctx, logits, probs, labels, weight, and_pieces, or_pieces, present):
        sums, _ = _region_sums(probs, labels, weight, and_pieces, or_pieces, present, False)
        ctx.save_for_backward(probs, labels, weight, present)
        ctx.pieces = (and_pieces, or_pieces)
        return sums[:1] if or_pieces is None else sums

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_inter, grad_sum=None, grad_lab=None):
        probs, labels, weight, present = ctx.saved_tensors
        grad_inter, grad_sum, grad_lab = _sum_gradients(probs, present, grad_inter, grad_sum,
                                                        grad_lab)
        grad = ops.region_backward(probs, labels, weight, (grad_sum, grad_inter, grad_lab),
                                   *ctx.pieces, softmax=True)
        return grad, None, None, None, None, None, None


class _AcceleratedRegionSums(torch.autograd.Function):
    """:class:`_RegionSums` in the Triton kernels of :mod:`.fused` (CUDA): same inputs, outputs
    and formulas.

    Forward is one kernel over every (image, pixel block) that evaluates both curves on the
    ``present`` classes and reduces the three sums (without g_O: only the label pixels' g_A),
    and one torch sum of its per-block partials. Nothing full-size is saved but p: backward is
    one kernel that re-evaluates the curves' slopes and writes dL/dp of every class.
    """

    @staticmethod
    def forward(ctx, probs, labels, weight, and_pieces, or_pieces, present):
        n, c, length = probs.shape
        labels = labels.reshape(n, length)
        classes = torch.arange(c, device=probs.device) if present is None else present
        sums = fused.region_sums(probs, labels, weight, classes, and_pieces, or_pieces)
        if present is not None:
            sums = sums.new_zeros(c, sums.shape[1]).index_copy_(0, present, sums)
        ctx.save_for_backward(probs, labels, weight, present)
        ctx.pieces = (and_pieces, or_pieces)
        return tuple(column.clone() for column in sums.unbind(1))  # outputs with own memory

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_inter, grad_sum=None, grad_lab=None):
        probs, labels, weight, present = ctx.saved_tensors
        and_pieces, or_pieces = ctx.pieces
        grad_inter, grad_sum, grad_lab = _sum_gradients(probs, present, grad_inter, grad_sum,
                                                        grad_lab)
        grad = fused.region_grad(probs, labels, weight, grad_inter, grad_sum, grad_lab,
                                 and_pieces, or_pieces)
        return grad, None, None, None, None, None


def _intersection_union(probs, info, and_cp, or_cp, mask, logits=None):
    """Per-class relaxed intersection, union (None if ``or_cp`` is None) and GT counts.

    I_c = Σ_{mask} g_A(p_c) y_c,  U_c = Σ_{mask} (g_O(p_c) + y_c - g_O(p_c) y_c) + eps,
    n_c = Σ_{mask} y_c; all (C,) in the dtype of ``probs`` (float32 for half inputs). The sum of
    g_O is only taken over the classes present in the mask (absent ones have I_c = 0, so their
    U_c does not matter; see the module docstring). Computed by :class:`_RegionSums`, or by
    :class:`_SoftmaxRegionSums` when ``logits`` (whose softmax over dim 1 is ``probs``) are given
    and the C++ kernels run.
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
    flat = probs.reshape(n, c, h * w).contiguous()
    with torch.autocast(device_type=probs.device.type, enabled=False):
        if ops.accelerated(probs):
            sums = _AcceleratedRegionSums.apply(flat, info.safe, weight, and_pieces, or_pieces,
                                                present)
        elif (logits is not None and logits.dtype == probs.dtype
              and ops.softmax_region_backward(probs)):
            sums = _SoftmaxRegionSums.apply(logits.reshape(n, c, h * w), flat.detach(),
                                            info.safe, weight, and_pieces, or_pieces, present)
        else:
            sums = _RegionSums.apply(flat, info.safe, weight, and_pieces, or_pieces, present)
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


def relaxed_miou(probs, labels, and_cp, or_cp, present_classes_only=False, info=None,
                 logits=None):
    """mIoU~ = (1/C) Σ_c I_c / U_c over the valid pixels (absent classes add 0 to the mean);
    None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, union, counts = _intersection_union(probs, info, and_cp, or_cp, info.valid, logits)
    return _class_mean(inter / union, counts, present_classes_only)


def relaxed_fwiou(probs, labels, and_cp, or_cp, info=None, logits=None):
    """fwIoU~ = Σ_{c: n_c>0} n_c I_c / U_c / Σ_c n_c; None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, union, counts = _intersection_union(probs, info, and_cp, or_cp, info.valid, logits)
    total = counts.sum()
    if not bool(total > 0):
        return None
    return (counts * (inter / union)).sum() / total


def relaxed_biou(probs, labels, and_cp, or_cp, tolerance=5, drop_background=False,
                 present_classes_only=False, info=None, logits=None):
    """BIoU~: mIoU~ over the valid pixels inside the ground-truth trimap band (§2.3).

    The trimap is the union over classes (without class 0 if ``drop_background``) of the
    ground-truth boundaries dilated by a (2 tolerance + 1)^2 square; exact, no gradient. The mean is
    over all C classes (background included) unless ``present_classes_only``. None when no valid
    pixel lies inside the trimap (e.g. no ground-truth boundary, or every pixel ignored).
    """
    tolerance = check_radius(tolerance)
    info = info or LabelInfo(labels, probs.shape[1])
    mask = info.valid & info.trimap(tolerance, drop_background)
    inter, union, counts = _intersection_union(probs, info, and_cp, or_cp, mask, logits)
    return _class_mean(inter / union, counts, present_classes_only)


def relaxed_macc(probs, labels, and_cp, present_classes_only=False, info=None, logits=None):
    """mACC~ = (1/C) Σ_c Σ g_A(p_c) y_c / (Σ y_c + eps); None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, _, counts = _intersection_union(probs, info, and_cp, None, info.valid, logits)
    return _class_mean(inter / (counts + EPS), counts, present_classes_only)


def relaxed_gacc(probs, labels, and_cp, info=None, logits=None):
    """pACC~ = Σ_c Σ g_A(p_c) y_c / (Σ_c Σ y_c + eps); None without valid pixels."""
    info = info or LabelInfo(labels, probs.shape[1])
    inter, _, counts = _intersection_union(probs, info, and_cp, None, info.valid, logits)
    total = counts.sum()
    if not bool(total > 0):
        return None
    return inter.sum() / (total + EPS)
