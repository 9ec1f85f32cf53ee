"""The dispatch layer: for each full-size op of the surrogates, the implementation that runs.

Three implementations compute the same formulas:

- the fused accelerator path (:mod:`.fused`: Triton kernels), on CUDA tensors, chosen by
  :func:`accelerated` (``SEGLOSS_DISABLE_FUSED=1`` or ``fused.ENABLED = False`` turns it off);
- the compiled CPU kernels of ``segloss_d2._C`` (``segloss_d2/csrc``), on CPU tensors, chosen
  by :func:`.kernels.use_kernels` (float32/float64, extension loaded,
  ``SEGLOSS_DISABLE_CPU_KERNELS`` unset; tests flip ``kernels.ENABLED``);
- pure torch: the reference, the fallback everywhere. It works on whole tensors (no blocks), so
  its number of ops per call does not grow with the image (docs/method.md §2.6); on CPU only, the
  region surrogates' dense evaluation and BF1's erosion, soft boundary and window maxima go in
  chunks of :data:`CPU_CHUNK_ELEMENTS` (:func:`plane_chunks` for BF1's whole planes).

This is the only module that calls ``torch.ops.segloss_d2.*``, and (with the autograd Functions
that :func:`accelerated` selects in :mod:`.region` and :mod:`.boundary`) the only place that
chooses. It sits above the curve maths (:mod:`.bezier`) and the kernels (:mod:`.kernels`,
:mod:`.fused`), and below every autograd Function (:mod:`.autograd`, :mod:`.region`,
:mod:`.boundary`); no autograd here. Functions (= compiled op) and their fallbacks:

- :func:`bezier`: one curve elementwise; Triton kernel, C++ kernel, or
  :func:`.bezier.evaluate`.
- :func:`region_dense`: the dense per-class sums of the region surrogates (C++ or torch; on the
  accelerator path the whole of ``region._RegionSums`` is one kernel instead,
  ``region._AcceleratedRegionSums``).
- :func:`region_backward`: their gradient, through the softmax that made the probabilities, in one
  pass (C++ only, chosen by :func:`softmax_region_backward`: ``region._SoftmaxRegionSums``).
- :func:`row_window_max`: BF1's row-window maxima (C++ or torch: maxima of doubling span).
- :func:`window_argmax`: BF1's window argmax at sparse positions (Triton or C++ scan of each
  window; torch: separable, from the dense row maxima).
- :func:`soft_boundary`, :func:`soft_boundary_backward_bf1`: C++ kernels only (see below).

BF1's fused kernels replace a chain of autograd Functions rather than one torch op, so their
fallback is that chain (in :mod:`.boundary`); the choice is still made here, by
:func:`accelerated` (Triton) and :func:`fused_bf1` (C++).

The curve coefficients handed to the C++ kernels are flattened by
:func:`.kernels.flat_coefficients` (layout: :data:`.kernels.COEFFICIENTS`); the Triton kernels
read :func:`.bezier.coefficient_table`.
"""
import torch
import torch.nn.functional as F

from . import bezier as _curves  # the curve module; ``bezier`` below is the op's wrapper
from . import fused, kernels
from .morphology import effective_radius

__all__ = [
    "accelerated",
    "bezier",
    "fused_bf1",
    "map_planes",
    "plane_chunks",
    "region_backward",
    "region_dense",
    "row_window_max",
    "soft_boundary",
    "soft_boundary_backward_bf1",
    "softmax_region_backward",
    "window_argmax",
]


def accelerated(*tensors):
    """Whether the fused accelerator path (:mod:`.fused`, Triton) runs on ``tensors``."""
    return fused.use_fused(*tensors)


def _lib():
    """``torch.ops.segloss_d2`` (only reached once :func:`.kernels.use_kernels` said yes)."""
    return torch.ops.segloss_d2


# ---------------------------------------------------------------------------------------------
# bezier: one curve, elementwise


def bezier(x, pieces, need_grad):
    """g(x) and (if ``need_grad``, else None) dg/dx for a float32/float64 tensor; no autograd.

    ``pieces`` from :func:`.bezier.curve_pieces`. One fused pass (Triton on CUDA, C++ on CPU),
    else :func:`.bezier.evaluate` (pure torch, a fixed number of ops).
    """
    if accelerated(x):
        g, d = fused.bezier(x, pieces, need_grad)
        return g.view(x.shape), None if d is None else d.view(x.shape)
    if kernels.use_kernels(x):
        g, d = _lib().bezier(x.contiguous(), kernels.flat_coefficients(pieces), need_grad)
        return g.view(x.shape), d.view(x.shape) if need_grad else None
    return _curves.evaluate(x, pieces, need_grad)


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
        The kernel evaluates g in one fused pass without storing it; the fallback evaluates the
        whole (N, K, L) tensor at once (:func:`.bezier.evaluate`), a fixed number of ops.
    """
    if kernels.use_kernels(probs):
        classes = (torch.arange(probs.shape[1], device=probs.device) if present is None
                   else present)
        sums, slopes = _lib().region_dense(
            probs, classes, weight, kernels.flat_coefficients(pieces), need_grad)
        return sums, slopes if need_grad else None
    return _region_dense_torch(probs, weight, pieces, present, need_grad)


def softmax_region_backward(probs):
    """Whether :func:`region_backward` runs on ``probs`` (the C++ kernels; there is no fallback:
    elsewhere the region surrogates keep the softmax's own backward)."""
    return kernels.use_kernels(probs)


def region_backward(probs, labels, weight, grads, and_pieces, or_pieces, softmax):
    """The gradient of the region sums (``region._RegionSums``) in one pass, C++ kernel only.

    Args:
        probs (Tensor): (N, C, L) float32/float64, contiguous.
        labels (Tensor): (N, L) int64 in [0, C) (void pixels have weight 0).
        weight (Tensor or None): (N, L) pixel weights like ``probs`` (None: all ones).
        grads: (grad_dense, grad_and, grad_or), each (C,) like ``probs``: the gradients of the
            dense sum of g_O (0 outside the classes it was taken over), of the label pixels'
            g_A and of their g_O.
        and_pieces, or_pieces: the curves (``or_pieces`` None: no g_O terms).
        softmax (bool): ``probs`` is softmax(x) over dim 1: return dL/dx (the softmax's backward
            in the same pass) instead of dL/dp.

    Returns:
        (N, C, L) tensor like ``probs``. The curves' slopes are recomputed from ``probs``.
    """
    or_coefficients = [] if or_pieces is None else kernels.flat_coefficients(or_pieces)
    return _lib().region_backward(
        probs, labels.reshape(-1).contiguous(), weight, *(g.contiguous() for g in grads),
        kernels.flat_coefficients(and_pieces), or_coefficients, softmax)


CPU_CHUNK_ELEMENTS = 1 << 19
"""Elements per chunk of the pure-torch path's dense work on CPU (2 MiB of float32; one 512x1024
plane): the region surrogates' curve evaluation, BF1's erosion, soft boundary and window maxima.
A fresh full-size CPU tensor is new pages from the kernel, page-faulted and zeroed at first touch
(on the 2-core machine ``x * 2`` on a fresh 80 MB tensor took 18x as long as into a reused one),
and a curve evaluation makes a dozen temporaries: chunk-sized, they stay in the caches (L2 / L3)
between the ops that make and read them. Smaller chunks mean more operator calls (BF1 at
(2, 19, 512, 1024): one chunk per plane); 2M-element chunks were slower alone and no more robust
with the cores shared (docs/benchmarks.md). On accelerators the whole tensor is one call
(:func:`.bezier.evaluate`'s fixed op count)."""


def plane_chunks(x):
    """Slices of ``x.reshape(-1, H, W)``'s planes, in groups of about
    :data:`CPU_CHUNK_ELEMENTS` elements (at least one plane), for the pure-torch path's plane-wise
    work (BF1's erosion, soft boundary and window maxima) on CPU; ``[slice(None)]`` (the whole
    tensor at once) elsewhere or when ``x`` fits one chunk.

    Args:
        x (Tensor): (..., H, W).
    """
    area = x.shape[-2] * x.shape[-1]
    if x.device.type != "cpu" or x.numel() <= CPU_CHUNK_ELEMENTS or area == 0:
        return [slice(None)]
    step = max(1, CPU_CHUNK_ELEMENTS // area)
    return [slice(start, start + step) for start in range(0, x.numel() // area, step)]


def map_planes(fn, x, num_outputs=1):
    """``fn(x)`` for a plane-wise ``fn`` (each output plane depends on its input plane only),
    computed a group of planes at a time (:func:`plane_chunks`) into new contiguous tensors
    like ``x``; ``fn(x)`` itself when ``x`` is one chunk.

    Args:
        fn: (P, H, W) -> one tensor like its input, or a tuple of ``num_outputs`` of them.
        x (Tensor): (..., H, W).
    """
    chunks = plane_chunks(x)
    if len(chunks) == 1:
        return fn(x)
    outputs = [torch.empty_like(x, memory_format=torch.contiguous_format)
               for _ in range(num_outputs)]
    shape = (-1,) + x.shape[-2:]
    planes, views = x.reshape(shape), [out.view(shape) for out in outputs]
    for chunk in chunks:
        parts = fn(planes[chunk])
        for view, part in zip(views, parts if num_outputs > 1 else (parts,)):
            view[chunk] = part
    return tuple(outputs) if num_outputs > 1 else outputs[0]


def _region_dense_torch(probs, weight, pieces, present, need_grad):
    n, c, length = probs.shape
    k = c if present is None else int(present.numel())
    if probs.device.type != "cpu" or n * k * length <= CPU_CHUNK_ELEMENTS:
        return _region_dense_block(probs, weight, pieces, present, need_grad)
    # CPU, large: image by image, a few classes at a time (each chunk's rows are contiguous)
    rows = max(1, CPU_CHUNK_ELEMENTS // length)
    sums = probs.new_empty(n, k)
    slopes = probs.new_empty(n, k, length) if need_grad else None
    for i in range(n):
        w = None if weight is None else weight[i:i + 1]
        for start in range(0, k, rows):
            stop = min(k, start + rows)
            block = probs[i:i + 1, start:stop] if present is None else \
                probs[i:i + 1].index_select(1, present[start:stop])
            out = slopes[i:i + 1, start:stop] if need_grad else None  # contiguous rows
            sums[i, start:stop] = _region_dense_block(block, w, pieces, None, need_grad, out)[0][0]
    return sums, slopes


def _region_dense_block(probs, weight, pieces, present, need_grad, slopes_out=None):
    """:func:`region_dense` on the whole of ``probs`` at once (a fixed number of ops); the slopes
    are written into ``slopes_out`` if given."""
    dense = probs if present is None else probs.index_select(1, present)
    g, slopes = _curves.evaluate(dense, pieces, need_grad, slopes_out)
    if weight is None:
        return g.sum(dim=2), slopes
    w = weight.unsqueeze(1)
    if slopes is not None:
        slopes.mul_(w)
    return g.mul_(w).sum(dim=2), slopes


# ---------------------------------------------------------------------------------------------
# row_window_max / window_argmax: BF1's window maxima


def row_window_max(values, radius):
    """max over ``values[n, c, h, w - r : w + r + 1]`` (cut at the border), like ``values``.

    The radius is clamped to W - 1 (:func:`.morphology.effective_radius`). Kernel: row by row in
    C++. Fallback: the rows padded with -inf, then running maxima of doubling span
    (log2(2r+1) passes over the whole tensor; on CPU a group of planes at a time,
    :func:`plane_chunks`).
    """
    radius = effective_radius(radius, values.shape[-1])
    if kernels.use_kernels(values):
        return _lib().row_window_max(values.contiguous(), radius)
    return map_planes(lambda planes: _row_window_max_block(planes, radius), values)


def _row_window_max_block(values, radius):
    """:func:`row_window_max`'s fallback on the whole of ``values`` at once (radius clamped)."""
    size = 2 * radius + 1
    out = F.pad(values, (radius, radius), value=float("-inf"))
    span = 1
    while span < size:
        shift = min(span, size - span)
        out = torch.maximum(out[..., :-shift], out[..., shift:])
        span += shift
    return out


# The Triton window scan reads M (2r+1)^2 values, mostly from cache; the separable fallback
# makes ~log2(2r+1) + 2 full passes and ~10 more launches. A guess, not measured: scan up to 8
# values per element (19 classes at the default tolerance 5 always scan: 121 M <= 8 * 19 NHW).
ACCELERATOR_SCAN_FACTOR = 8


def window_argmax(values, n_idx, c_idx, h_idx, w_idx, radius):
    """Flat index into ``values`` of the max over the (2r+1)^2 window (cut at the border) of
    ``values[n, c]`` around (h, w), for M positions; no gradient.

    ``values.flatten()[index]`` equals ``max_pool2d(values, 2r+1, 1, r)[n, c, h, w]``, and the index
    is max-pooling's gradient routing (the first maximum in row-major window order). The radius is
    clamped to max(H, W) - 1 (:func:`.morphology.effective_radius`: a larger one changes neither
    the maximum nor its index).

    Kernels (sparse positions, e.g. boundary pixels: M (2r+1)^2 <= values.numel() for the C++
    kernel on CPU, <= :data:`ACCELERATOR_SCAN_FACTOR` values.numel() for the Triton kernel on
    CUDA): a direct scan of each window. Fallback (and dense positions): separable, the first of
    the window's rows whose row-window maximum (:func:`row_window_max`, itself dispatched) is the
    largest, then the first column of that row holding it.

    Args:
        values (Tensor): (N, K, H, W) float.
        n_idx, c_idx, h_idx, w_idx (Tensor): (M,) int64 positions.

    Returns:
        (M,) int64 tensor.
    """
    _, c, h, w = values.shape
    radius = effective_radius(radius, h, w)
    scan = n_idx.numel() * (2 * radius + 1) ** 2
    if accelerated(values) and scan <= ACCELERATOR_SCAN_FACTOR * values.numel():
        return fused.window_argmax(values.detach().contiguous(), n_idx, c_idx, h_idx, w_idx,
                                   radius)
    if kernels.use_kernels(values) and scan <= values.numel():
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
    """Whether BF1's soft boundary and sums of ``p`` run in the fused C++ kernels
    (:class:`.boundary._FusedBoundaryTerms`: :func:`soft_boundary` and
    :func:`soft_boundary_backward_bf1`) or in the pure-torch Functions of :mod:`.boundary` (when
    not :func:`accelerated`)."""
    return kernels.use_kernels(p)


def _boundary_curves(curves):
    """The four BF1 curves as the kernels read them: (flat coefficients, pieces per curve)."""
    coeffs = [v for pieces in curves for v in kernels.flat_coefficients(pieces)]
    return coeffs, [len(pieces) for pieces in curves]


def soft_boundary(p, curves, mask=None):
    """B and, with ``mask``, the per-plane sums (N*K, 2) float64 of B and B [mask] (else empty),
    by the C++ kernel; only when :func:`fused_bf1` (p). The partials dB/dp, dB/de are not
    stored: :func:`soft_boundary_backward_bf1` recomputes them.

    Args:
        p (Tensor): (N, K, H, W) contiguous CPU float32/float64 probabilities.
        curves: the four BF1 curves ``[g1, g2, g3, g4]`` (:func:`.bezier.curve_pieces` each).
        mask (Tensor or None): (N, K, H, W) contiguous bool.
    """
    return _lib().soft_boundary(p, *_boundary_curves(curves), mask)


def soft_boundary_backward_bf1(p, curves, dilated, grad_n, grad_match, pick_index, pick_grad):
    """``dL/dp = dL/dB dB/dp + MinPoolBackward(dL/dB dB/de)`` in the C++ kernel, for
    ``dL/dB = grad_n[k] + grad_match[k] [dilated] + scatter(pick_grad at pick_index)``, the
    partials recomputed from p band by band; only when :func:`fused_bf1` (p). ``pick_index``
    (M,) sorted, ``pick_grad`` (M,) like it."""
    return _lib().soft_boundary_backward_bf1(p, *_boundary_curves(curves), dilated, grad_n,
                                             grad_match, pick_index, pick_grad)

