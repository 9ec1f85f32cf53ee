"""Triton kernels of the fused accelerator path (docs/method.md §2.6); used through :mod:`.fused`.

Importing this module imports Triton, an optional dependency: only :func:`.fused.load` imports
it, the first time the accelerator path runs. With ``TRITON_INTERPRET=1`` set before that import,
Triton's interpreter runs the same kernels on CPU tensors (the tests do; slow, small inputs only).

Each kernel evaluates the curves per element exactly as the pure-torch reference
(:func:`.bezier.evaluate`) and the C++ kernels do (owning piece, then ``u``, ``s``, ``t``; IEEE
division and square root), and writes per-block partial sums that one torch reduction finishes
(no atomics except in the scatter of BF1's picked maxima: the sums do not depend on scheduling).
A curve arrives as its
:func:`.bezier.coefficient_table`, a contiguous (len(FIELDS), n) tensor of the input's dtype and
device, and its number of pieces n.

Kernels (one launch each; grids put the pixel blocks on axis 0, which allows 2^31 - 1 programs):

- :func:`bezier_kernel`: g and g' of one curve, elementwise.
- :func:`region_forward_kernel`: the region surrogates' per-class soft sums (I_c, Σ g_O,
  Σ_{y=c} g_O) over the listed classes, partial per (pixel block, image).
- :func:`region_backward_kernel`: dL/dp of every class, the curves re-evaluated from p.
- :func:`bf1_forward_kernel`: BF1's erosion, soft boundary B and its per-plane partial sums of B
  and B·D (D the dilated ground-truth boundary).
- :func:`bf1_backward_kernel` and :func:`bf1_route_kernel`: dL/dp of BF1's soft boundary, its
  erosion's gradient routed to each window's first minimum.
- :func:`window_argmax_kernel`: the first maximum of a (2r+1)^2 window at listed positions.
- :func:`scatter_add_kernel`: BF1's gradient of the picked window maxima, scattered (atomic adds).
"""
import os

import triton
import triton.language as tl

from .bezier import FIELDS

__all__ = [
    "INTERPRETED",
    "bezier_kernel",
    "bf1_backward_kernel",
    "bf1_forward_kernel",
    "bf1_route_kernel",
    "region_backward_kernel",
    "region_forward_kernel",
    "scatter_add_kernel",
    "window_argmax_kernel",
]

# Whether the kernels below were built for Triton's interpreter (CPU tensors) or for a GPU.
try:
    INTERPRETED = bool(triton.knobs.runtime.interpret)
except AttributeError:  # Triton before 3.3 reads the variable directly
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Rows of the coefficient table (bezier.FIELDS), as compile-time constants.
_LO = tl.constexpr(FIELDS.index("lo"))
_INV_W = tl.constexpr(FIELDS.index("inv_w"))
_A = tl.constexpr(FIELDS.index("a"))
_B = tl.constexpr(FIELDS.index("b"))
_A2 = tl.constexpr(FIELDS.index("a2"))
_C1 = tl.constexpr(FIELDS.index("c1"))
_C2 = tl.constexpr(FIELDS.index("c2"))
_D1 = tl.constexpr(FIELDS.index("d1"))
_D2 = tl.constexpr(FIELDS.index("d2"))
_Y_LO = tl.constexpr(FIELDS.index("y_lo"))


@triton.jit
def _sqrt(x):
    """IEEE (correctly rounded) square root: tl.sqrt may be approximate in float32."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _div(x, y):
    """IEEE (correctly rounded) division: ``/`` may be approximate in float32."""
    if x.dtype == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def _curve(x, coef, pieces, NEED_GRAD: tl.constexpr):
    """(g(x), g'(x)) of one curve (g' = g when not NEED_GRAD): ``coef`` points to its
    (len(FIELDS), pieces) coefficient table; piece k >= 1 owns x > lo_k, piece 0 the rest."""
    zero = tl.zeros_like(x)
    lo = zero + tl.load(coef + _LO * pieces)
    inv_w = zero + tl.load(coef + _INV_W * pieces)
    a = zero + tl.load(coef + _A * pieces)
    b = zero + tl.load(coef + _B * pieces)
    a2 = zero + tl.load(coef + _A2 * pieces)
    c1 = zero + tl.load(coef + _C1 * pieces)
    c2 = zero + tl.load(coef + _C2 * pieces)
    d1 = zero + tl.load(coef + _D1 * pieces)
    d2 = zero + tl.load(coef + _D2 * pieces)
    y_lo = zero + tl.load(coef + _Y_LO * pieces)
    for k in range(1, pieces):
        lo_k = tl.load(coef + _LO * pieces + k)
        owns = x > lo_k
        lo = tl.where(owns, lo_k, lo)
        inv_w = tl.where(owns, tl.load(coef + _INV_W * pieces + k), inv_w)
        a = tl.where(owns, tl.load(coef + _A * pieces + k), a)
        b = tl.where(owns, tl.load(coef + _B * pieces + k), b)
        a2 = tl.where(owns, tl.load(coef + _A2 * pieces + k), a2)
        c1 = tl.where(owns, tl.load(coef + _C1 * pieces + k), c1)
        c2 = tl.where(owns, tl.load(coef + _C2 * pieces + k), c2)
        d1 = tl.where(owns, tl.load(coef + _D1 * pieces + k), d1)
        d2 = tl.where(owns, tl.load(coef + _D2 * pieces + k), d2)
        y_lo = tl.where(owns, tl.load(coef + _Y_LO * pieces + k), y_lo)
    u = (x - lo) * inv_w
    s = _sqrt(a2 + b * u)
    t = _div(u, a + s)
    g = y_lo + t * (c1 + c2 * t)
    if NEED_GRAD:
        d = _div(d1 + d2 * t, s)
    else:
        d = g
    return g, d


@triton.jit
def bezier_kernel(x_ptr, g_ptr, d_ptr, coef, pieces, numel, NEED_GRAD: tl.constexpr,
                  BLOCK: tl.constexpr):
    """g (and g' if NEED_GRAD) of ``numel`` contiguous elements."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    x = tl.load(x_ptr + offs, mask=inside, other=0.0)
    g, d = _curve(x, coef, pieces, NEED_GRAD)
    tl.store(g_ptr + offs, g, mask=inside)
    if NEED_GRAD:
        tl.store(d_ptr + offs, d, mask=inside)


@triton.jit
def region_forward_kernel(p_ptr, label_ptr, weight_ptr, class_ptr, and_coef, and_pieces,
                          or_coef, or_pieces, out_ptr, C, L, K, blocks,
                          HAS_WEIGHT: tl.constexpr, HAS_OR: tl.constexpr, S: tl.constexpr,
                          BLOCK: tl.constexpr):
    """Partial sums over one block of pixels of one image, for the K listed classes c_j:

        out[i, blk, j] = (Σ w g_A(p_c) [l = c], Σ w g_O(p_c), Σ w g_O(p_c) [l = c])  (S = 3)
                       or (Σ w g_A(p_c) [l = c],)                                    (S = 1)

    p (N, C, L), labels l (N, L) int64, weights w (N, L) (HAS_WEIGHT), out (N, blocks, K, S).
    Without the OR curve only the pixels labelled c are read.
    """
    blk = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < L
    labels = tl.load(label_ptr + img * L + offs, mask=inside, other=-1)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + img * L + offs, mask=inside, other=0.0)
    out = out_ptr + (img * blocks + blk) * K * S
    for j in range(K):
        c = tl.load(class_ptr + j)
        at = inside & (labels == c)
        row = p_ptr + (img * C + c) * L
        if HAS_OR:
            x = tl.load(row + offs, mask=inside, other=0.0)
        else:
            x = tl.load(row + offs, mask=at, other=0.0)
        g_and, _ = _curve(x, and_coef, and_pieces, False)
        if HAS_WEIGHT:
            g_and = g_and * w
        tl.store(out + j * S, tl.sum(tl.where(at, g_and, 0.0), axis=0))
        if HAS_OR:
            g_or, _ = _curve(x, or_coef, or_pieces, False)
            if HAS_WEIGHT:
                g_or = g_or * w
            tl.store(out + j * S + 1, tl.sum(tl.where(inside, g_or, 0.0), axis=0))
            tl.store(out + j * S + 2, tl.sum(tl.where(at, g_or, 0.0), axis=0))


@triton.jit
def region_backward_kernel(p_ptr, label_ptr, weight_ptr, grad_ptr, grad_inter_ptr, grad_sum_ptr,
                           grad_lab_ptr, and_coef, and_pieces, or_coef, or_pieces, C, L,
                           HAS_WEIGHT: tl.constexpr, HAS_OR: tl.constexpr, BLOCK: tl.constexpr):
    """dL/dp (N, C, L) for the upstream gradients of region_forward_kernel's sums, every class:

        dL/dp_c = w (g_O'(p_c) G_c + [l = c] (g_A'(p_c) dL/dI_c + g_O'(p_c) dL/dΣ_{y=c} g_O_c)),
        G_c = dL/dΣ g_O_c,

    ``grad_sum`` already zero for the classes whose dense sum was not taken.
    """
    blk = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < L
    labels = tl.load(label_ptr + img * L + offs, mask=inside, other=-1)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + img * L + offs, mask=inside, other=0.0)
    for c in range(C):
        at = inside & (labels == c)
        row = (img * C + c) * L
        grad_inter = tl.load(grad_inter_ptr + c)
        if HAS_OR:
            x = tl.load(p_ptr + row + offs, mask=inside, other=0.0)
            _, d_and = _curve(x, and_coef, and_pieces, True)
            _, d_or = _curve(x, or_coef, or_pieces, True)
            grad_sum = tl.load(grad_sum_ptr + c)
            grad_lab = tl.load(grad_lab_ptr + c)
            grad = d_or * grad_sum + tl.where(at, d_and * grad_inter + d_or * grad_lab, 0.0)
        else:
            x = tl.load(p_ptr + row + offs, mask=at, other=0.0)
            _, d_and = _curve(x, and_coef, and_pieces, True)
            grad = tl.where(at, d_and * grad_inter, 0.0)
        if HAS_WEIGHT:
            grad = grad * w
        tl.store(grad_ptr + row + offs, grad, mask=inside)


@triton.jit
def _erode(plane_ptr, h, w, H, W, inside, BLOCK: tl.constexpr):
    """(e, code): the minimum over the 3x3 window around (h, w) cut at the border, and the
    window position (dy * 3 + dx, dy and dx in 0..2) of its first minimum in row-major order."""
    best = tl.full([BLOCK], float("inf"), plane_ptr.dtype.element_ty)
    code = tl.full([BLOCK], 4, tl.int32)
    for dy in tl.static_range(3):
        for dx in tl.static_range(3):
            hh = h + (dy - 1)
            ww = w + (dx - 1)
            ok = inside & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            v = tl.load(plane_ptr + hh * W + ww, mask=ok, other=float("inf"))
            better = v < best
            best = tl.where(better, v, best)
            code = tl.where(better, dy * 3 + dx, code)
    return best, code


@triton.jit
def bf1_forward_kernel(p_ptr, class_ptr, dilated_ptr, soft_ptr, out_ptr, g1, n1, g2, n2, g3, n3,
                       g4, n4, C, K, H, W, blocks, BLOCK: tl.constexpr):
    """B = g3(p) + g4(e) - g3(p) g4(e) - g1(p) g2(e), e = MinPool3x3(p), on one block of the plane
    (image i, kept class k) of p (N, C, H, W) read at class ``class[k]``; writes B (N, K, H, W)
    and out[i, k, blk] = (Σ B, Σ B [D]) for D (N, K, H, W) uint8 (out: (N, K, blocks, 2))."""
    blk = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64)  # i * K + k
    img = plane // K
    cls = tl.load(class_ptr + plane % K)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < H * W
    h = offs // W
    w = offs % W
    p_plane = p_ptr + (img * C + cls) * H * W
    x = tl.load(p_plane + offs, mask=inside, other=0.0)
    e, _ = _erode(p_plane, h, w, H, W, inside, BLOCK)
    e = tl.where(inside, e, 0.0)
    g1p, _ = _curve(x, g1, n1, False)
    g2e, _ = _curve(e, g2, n2, False)
    g3p, _ = _curve(x, g3, n3, False)
    g4e, _ = _curve(e, g4, n4, False)
    soft = g3p + g4e - g3p * g4e - g1p * g2e
    tl.store(soft_ptr + plane * H * W + offs, soft, mask=inside)
    dilated = tl.load(dilated_ptr + plane * H * W + offs, mask=inside, other=0) != 0
    out = out_ptr + (plane * blocks + blk) * 2
    tl.store(out, tl.sum(tl.where(inside, soft, 0.0), axis=0))
    tl.store(out + 1, tl.sum(tl.where(dilated, soft, 0.0), axis=0))


@triton.jit
def bf1_backward_kernel(p_ptr, class_ptr, dilated_ptr, buf_ptr, grad_ptr, code_ptr, grad_n_ptr,
                        grad_match_ptr, g1, n1, g2, n2, g3, n3, g4, n4, C, K, H, W,
                        BLOCK: tl.constexpr):
    """First half of BF1's backward on one block of a (image, kept class) plane: with

        dL/dB = dL/dn_k + dL/dmatch_k D + buf   (buf: the scattered dL/dpicked, (N, K, H, W)),

    writes dL/dB dB/dp into grad (N, C, H, W) at class ``class[k]``, dL/dB dB/de into buf (in
    place) and the window position of each pixel's erosion minimum into code (N, K, H, W) int8."""
    blk = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64)
    img = plane // K
    k = plane % K
    cls = tl.load(class_ptr + k)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < H * W
    h = offs // W
    w = offs % W
    p_plane = p_ptr + (img * C + cls) * H * W
    x = tl.load(p_plane + offs, mask=inside, other=0.0)
    e, code = _erode(p_plane, h, w, H, W, inside, BLOCK)
    e = tl.where(inside, e, 0.0)
    g1p, d1p = _curve(x, g1, n1, True)
    g2e, d2e = _curve(e, g2, n2, True)
    g3p, d3p = _curve(x, g3, n3, True)
    g4e, d4e = _curve(e, g4, n4, True)
    d_p = (1.0 - g4e) * d3p - d1p * g2e
    d_e = (1.0 - g3p) * d4e - g1p * d2e
    own = plane * H * W + offs
    dilated = tl.load(dilated_ptr + own, mask=inside, other=0) != 0
    grad_soft = tl.where(dilated, tl.load(grad_match_ptr + k), 0.0) + tl.load(grad_n_ptr + k)
    grad_soft = grad_soft + tl.load(buf_ptr + own, mask=inside, other=0.0)
    tl.store(grad_ptr + (img * C + cls) * H * W + offs, grad_soft * d_p, mask=inside)
    tl.store(buf_ptr + own, grad_soft * d_e, mask=inside)
    tl.store(code_ptr + own, code.to(tl.int8), mask=inside)


@triton.jit
def bf1_route_kernel(class_ptr, buf_ptr, code_ptr, grad_ptr, C, K, H, W, BLOCK: tl.constexpr):
    """Second half: add to grad every dL/dB dB/de of buf whose window's first minimum is this
    pixel (the erosion's gradient, as max-pooling's backward routes it)."""
    blk = tl.program_id(0)
    plane = tl.program_id(1).to(tl.int64)
    img = plane // K
    cls = tl.load(class_ptr + plane % K)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    inside = offs < H * W
    h = offs // W
    w = offs % W
    grad_at = grad_ptr + (img * C + cls) * H * W + offs
    acc = tl.load(grad_at, mask=inside, other=0.0)
    base = plane * H * W
    for dy in tl.static_range(3):
        for dx in tl.static_range(3):
            # the window centred at q = (h + dy - 1, w + dx - 1) holds this pixel at position
            # (2 - dy, 2 - dx)
            qh = h + (dy - 1)
            qw = w + (dx - 1)
            ok = inside & (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
            q = base + qh * W + qw
            hit = ok & (tl.load(code_ptr + q, mask=ok, other=-1) == (2 - dy) * 3 + (2 - dx))
            acc += tl.load(buf_ptr + q, mask=hit, other=0.0)
    tl.store(grad_at, acc, mask=inside)


@triton.jit
def scatter_add_kernel(out_ptr, index_ptr, value_ptr, M, BLOCK: tl.constexpr):
    """out[index[m]] += value[m] for M positions (atomic: where several positions share an index,
    the order of their additions, and so the last bits of the sum, depends on scheduling)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < M
    index = tl.load(index_ptr + offs, mask=inside, other=0)
    value = tl.load(value_ptr + offs, mask=inside, other=0.0)
    tl.atomic_add(out_ptr + index, value, mask=inside)


@triton.jit
def window_argmax_kernel(v_ptr, n_ptr, c_ptr, h_ptr, w_ptr, out_ptr, M, K, H, W, radius,
                         BLOCK: tl.constexpr):
    """Flat index into v (N, K, H, W) of the first maximum, in row-major window order, of the
    (2 radius + 1)^2 window (cut at the border) around each of M positions (n, c, h, w)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < M
    n = tl.load(n_ptr + offs, mask=inside, other=0)
    c = tl.load(c_ptr + offs, mask=inside, other=0)
    h = tl.load(h_ptr + offs, mask=inside, other=0)
    w = tl.load(w_ptr + offs, mask=inside, other=0)
    plane = (n * K + c) * H
    best = tl.full([BLOCK], float("-inf"), v_ptr.dtype.element_ty)
    index = (plane + h) * W + w
    for dy in range(-radius, radius + 1):
        row = h + dy
        row_ok = inside & (row >= 0) & (row < H)
        for dx in range(-radius, radius + 1):
            col = w + dx
            ok = row_ok & (col >= 0) & (col < W)
            at = (plane + row) * W + col
            v = tl.load(v_ptr + at, mask=ok, other=float("-inf"))
            better = ok & (v > best)
            best = tl.where(better, v, best)
            index = tl.where(better, at, index)
    tl.store(out_ptr + offs, index, mask=inside)
