"""The compiled ops of ``segloss_d2._C`` (``segloss_d2/csrc``), one Python function each.

This is the only module that calls ``torch.ops.segloss_d2.*``, and the one place where a compiled
op is chosen or falls back: each function below asks :func:`.kernels.use_kernels` (CPU tensor,
float32/float64, extension loaded, ``SEGLOSS_DISABLE_CPU_KERNELS`` unset; tests flip
``kernels.ENABLED``) and then runs the C++ op or its pure-torch twin, defined next to it. Both
compute the same formulas; the torch code is the reference, what every other device runs and the
fallback without the extension. The rest of the package calls these functions only.

Function (= compiled op) and its pure-torch fallback:

- :func:`bezier`: one curve elementwise; fallback: a block loop of :func:`.bezier.evaluate_block`.
- :func:`region_dense`: the dense per-class sums of the region surrogates; fallback: the same
  block loop, per class.
- :func:`row_window_max`: BF1's row-window maxima; fallback: maxima of doubling span.
- :func:`window_argmax`: BF1's window argmax at sparse positions; fallback: separable, from the
  dense row maxima.
- :func:`soft_boundary`, :func:`soft_boundary_backward_bf1`: kernel only (see below).

The two BF1 kernels replace a chain of autograd Functions rather than one torch op, so their
fallback is that chain (in :mod:`.boundary`); the choice is still made here, by :func:`fused_bf1`.

The curve coefficients handed to the kernels are flattened by :func:`.kernels.flat_coefficients`
(layout: :data:`.kernels.COEFFICIENTS`).

Cache blocking: the torch fallbacks read :func:`.bezier.block_size`, :func:`.bezier.workspace` and
:func:`.bezier.evaluate_block` through the :mod:`.bezier` module at call time (tests patch them
there).
"""
import torch
import torch.nn.functional as F

from . import bezier as _curves  # the curve module; ``bezier`` below is the op's wrapper
from . import kernels
from .morphology import _blocks, _plane_chunks, effective_radius

__all__ = [
    "bezier",
    "fused_bf1",
    "region_dense",
    "row_window_max",
    "soft_boundary",
    "soft_boundary_backward_bf1",
    "window_argmax",
]

def _lib():
    """``torch.ops.segloss_d2`` (only reached once :func:`.kernels.use_kernels` said yes)."""
    return torch.ops.segloss_d2


# ---------------------------------------------------------------------------------------------
# bezier: one curve, elementwise


def bezier(x, pieces, need_grad):
    """g(x) and (if ``need_grad``, else None) dg/dx for a float32/float64 tensor; no autograd.

    ``pieces`` from :func:`.bezier.curve_pieces`. Kernel: one fused C++ pass. Fallback: block by
    block (:func:`.bezier.block_size`) into preallocated outputs.
    """
    if kernels.use_kernels(x):
        g, d = _lib().bezier(x.contiguous(), kernels.flat_coefficients(pieces), need_grad)
        return g.view(x.shape), d.view(x.shape) if need_grad else None
    return _bezier_torch(x, pieces, need_grad)


def _bezier_torch(x, pieces, need_grad):
    flat = x.reshape(-1)
    g = torch.empty_like(flat)
    d = torch.empty_like(flat) if need_grad else None
    step = _curves.block_size(flat)
    work = _curves.workspace(flat, step)
    for start in range(0, flat.numel(), step):
        sl = slice(start, start + step)
        _curves.evaluate_block(flat[sl], pieces, g[sl], None if d is None else d[sl], work)
    return g.view(x.shape), None if d is None else d.view(x.shape)


# ---------------------------------------------------------------------------------------------
# region_dense: the dense union term of the region surrogates


def region_dense(probs, weight, pieces, present, need_grad):
    """Per-image, per-class sums of one curve g over the ``present`` classes (all if None).

    Args:
        probs (Tensor): (N, C, L) float32/float64, contiguous.
        weight (Tensor or None): (N, L) pixel weights like ``probs`` (None: all ones).
        pieces: one curve (:func:`.bezier.curve_pieces`).
        present (Tensor or None): (K,) int64 class indices (None: all C).
        need_grad (bool): also return the slopes.

    Returns:
        ``Σ_l w g(p)`` (N, K) and, if ``need_grad``, the slopes ``w g'(p)`` (N, K, L) (else None).
        g(p) is never stored at full size: the kernel evaluates it in one fused pass; the fallback
        block by block (:func:`.morphology._blocks`).
    """
    if kernels.use_kernels(probs):
        classes = (torch.arange(probs.shape[1], device=probs.device) if present is None
                   else present)
        sums, slopes = _lib().region_dense(
            probs, classes, weight, kernels.flat_coefficients(pieces), need_grad)
        return sums, slopes if need_grad else None
    return _region_dense_torch(probs, weight, pieces, present, need_grad)


def _region_dense_torch(probs, weight, pieces, present, need_grad):
    n, _, length = probs.shape
    dense = probs if present is None else probs.index_select(1, present)
    k = dense.shape[1]
    sums = probs.new_zeros(n, k)
    slopes = torch.empty_like(dense) if need_grad else None
    step = _curves.block_size(dense)
    work = _curves.workspace(dense, step)
    buffer = dense.new_empty(work.shape[1])
    for i, rows, cols in _blocks(n, k, length, step):
        x = dense[i, rows, cols]
        g = buffer[: x.numel()].view(x.shape)
        d = None if slopes is None else slopes[i, rows, cols]
        _curves.evaluate_block(x, pieces, g, d, work)
        if weight is None:
            sums[i, rows] += g.sum(dim=1)
        else:
            sums[i, rows] += torch.mv(g, weight[i, cols])
            if d is not None:
                d.mul_(weight[i, cols])
    return sums, slopes


# ---------------------------------------------------------------------------------------------
# row_window_max / window_argmax: BF1's window maxima


def row_window_max(values, radius):
    """max over ``values[n, c, h, w - r : w + r + 1]`` (cut at the border), like ``values``.

    The radius is clamped to W - 1 (:func:`.morphology.effective_radius`). Kernel: row by row in
    C++. Fallback: a chunk of planes at a time (:func:`.morphology._plane_chunks`), rows padded
    with -inf, then running maxima of doubling span (log2(2r+1) passes).
    """
    radius = effective_radius(radius, values.shape[-1])
    if kernels.use_kernels(values):
        return _lib().row_window_max(values.contiguous(), radius)
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


def window_argmax(values, n_idx, c_idx, h_idx, w_idx, radius):
    """Flat index into ``values`` of the max over the (2r+1)^2 window (cut at the border) of
    ``values[n, c]`` around (h, w), for M positions; no gradient.

    ``values.flatten()[index]`` equals ``max_pool2d(values, 2r+1, 1, r)[n, c, h, w]``, and the index
    is max-pooling's gradient routing (the first maximum in row-major window order). The radius is
    clamped to max(H, W) - 1 (:func:`.morphology.effective_radius`: a larger one changes neither
    the maximum nor its index).

    Kernel (CPU, sparse positions: M (2r+1)^2 <= values.numel(), e.g. boundary pixels): a direct
    scan of each window. Fallback (and dense positions): separable, the first of the window's rows
    whose row-window maximum (:func:`row_window_max`, itself dispatched) is the largest, then the
    first column of that row holding it.

    Args:
        values (Tensor): (N, K, H, W) float.
        n_idx, c_idx, h_idx, w_idx (Tensor): (M,) int64 positions.

    Returns:
        (M,) int64 tensor.
    """
    _, c, h, w = values.shape
    radius = effective_radius(radius, h, w)
    if kernels.use_kernels(values) and n_idx.numel() * (2 * radius + 1) ** 2 <= values.numel():
        return _lib().window_argmax(
            values.detach().contiguous(), n_idx.contiguous(), c_idx.contiguous(),
            h_idx.contiguous(), w_idx.contiguous(), radius)
    offsets = torch.arange(-radius, radius + 1, device=values.device)
    with torch.no_grad():
        row_max = row_window_max(values.detach(), radius).reshape(-1)
        plane = (n_idx * c + c_idx) * h
        rows = (h_idx[:, None] + offsets).clamp_(0, h - 1)  # (M, 2r+1); repeats keep "first"
        best = row_max[(plane[:, None] + rows) * w + w_idx[:, None]].argmax(dim=1, keepdim=True)
        row = (plane + rows.gather(1, best).squeeze(1)) * w
        cols = (w_idx[:, None] + offsets).clamp_(0, w - 1)
        best = values.detach().reshape(-1)[row[:, None] + cols].argmax(dim=1, keepdim=True)
        return row + cols.gather(1, best).squeeze(1)


# ---------------------------------------------------------------------------------------------
# BF1's fused soft boundary: kernels without a per-op fallback


def fused_bf1(p):
    """Whether BF1's soft boundary and sums of ``p`` run in the fused kernels
    (:class:`.boundary._FusedBoundaryTerms`: :func:`soft_boundary` and
    :func:`soft_boundary_backward_bf1`) or in the pure-torch Functions of :mod:`.boundary`."""
    return kernels.use_kernels(p)


def soft_boundary(p, curves, need_grad, mask=None):
    """B, dB/dp, dB/de (empty without ``need_grad``) and, with ``mask``, the per-plane sums
    (N*K, 2) float64 of B and B [mask], by the C++ kernel; only when :func:`fused_bf1` (p).

    Args:
        p (Tensor): (N, K, H, W) contiguous CPU float32/float64 probabilities.
        curves: the four BF1 curves ``[g1, g2, g3, g4]`` (:func:`.bezier.curve_pieces` each).
        mask (Tensor or None): (N, K, H, W) contiguous bool.
    """
    coeffs = [v for pieces in curves for v in kernels.flat_coefficients(pieces)]
    return _lib().soft_boundary(p, coeffs, [len(pieces) for pieces in curves], need_grad, mask)


def soft_boundary_backward_bf1(p, d_p, d_e, dilated, grad_n, grad_match, pick_index, pick_grad,
                               out):
    """``out = dL/dB d_p + MinPoolBackward(dL/dB d_e)`` in the C++ kernel (``out`` may be ``d_p``),
    for ``dL/dB = grad_n[k] + grad_match[k] [dilated] + scatter(pick_grad at pick_index)``;
    only when :func:`fused_bf1` (p). ``pick_index`` (M,) sorted, ``pick_grad`` (M,) like it."""
    return _lib().soft_boundary_backward_bf1(p, d_p, d_e, dilated, grad_n, grad_match,
                                             pick_index, pick_grad, out)

