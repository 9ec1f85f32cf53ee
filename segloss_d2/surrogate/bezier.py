"""Piecewise quadratic Bézier curves g: [0,1] -> [0,1] (docs/method.md §3.1-§3.4).

A curve with ``n`` pieces is stored as its free control points, flat:
``[x_1, y_1, x_2, y_2, ..., x_{2n-1}, y_{2n-1}]`` (length ``4n - 2``); ``P_0 = (0, 0)`` and
``P_{2n} = (1, 1)`` are fixed. Piece ``k`` runs from ``P_{2k}`` through control ``P_{2k+1}`` to
``P_{2k+2}``; piece 0 owns ``x <= x_2`` and piece ``k >= 1`` owns ``x_{2k} < x <= x_{2k+2}``.

Constraints (docs/method.md, "Curve constraints"): the paper's parameterization (``"all"``) fixes
the end points, so that the curve reproduces the truth table of AND/OR on binary inputs (g(0) = 0,
g(1) = 1), and makes the y coordinates non-decreasing, so that g is monotone. For the paper's
ablation each can be dropped (:data:`CONSTRAINTS`): without the truth table the end points'
heights are free and appended to the flat list, ``[..., x_{2n-1}, y_{2n-1}, y_0, y_{2n}]``
(length ``4n``; the length tells the two layouts apart); without monotonicity the y coordinates
are free in [0, 1]. The x coordinates always increase strictly (g stays a function of x).

The curve is only evaluated, never trained by gradient descent (the search is black-box), so
control points are constants: :func:`.autograd.bezier_curve` is differentiable with respect to
``x`` only.

This module is the lowest layer of the surrogates: the curve maths (θ <-> control points and
their constraints, the per-piece coefficients :class:`Piece` and their table
:func:`coefficient_table`, the pure-torch evaluation :func:`evaluate`), importing only torch and
the standard library, nothing of this package. Choosing an implementation (C++ / Triton / torch)
is :mod:`.ops`'s, autograd is :mod:`.autograd`'s.
"""
import functools
from typing import NamedTuple

import torch

__all__ = [
    "CONSTRAINTS",
    "CLAMP_MIN",
    "CLAMP_MAX",
    "curve_length",
    "identity_theta",
    "clamp_theta",
    "theta_to_control_points",
    "control_points_to_theta",
    "control_point_coordinates",
    "validate_control_points",
    "curve_pieces",
    "Piece",
    "evaluate",
    "coefficient_table",
    "FIELDS",
]

CLAMP_MIN = 1e-4
CLAMP_MAX = 1.0 - 1e-4


CONSTRAINTS = ("all", "no_truth_table", "no_monotonic", "none")
"""Curve constraints: ``"all"`` (the paper's: truth table and monotonicity), one dropped, or
``"none"``."""


def check_constraints(constraints):
    """Return ``constraints`` if it is one of :data:`CONSTRAINTS`, else raise ValueError."""
    if not isinstance(constraints, str) or constraints not in CONSTRAINTS:
        raise ValueError(f"constraints must be one of {list(CONSTRAINTS)}, got {constraints!r}")
    return constraints


def truth_table(constraints):
    """Whether curves under ``constraints`` have the fixed end points (0, 0) and (1, 1)."""
    return check_constraints(constraints) in ("all", "no_monotonic")


def monotonic(constraints):
    """Whether curves under ``constraints`` have non-decreasing y coordinates."""
    return check_constraints(constraints) in ("all", "no_truth_table")


def curve_length(num_pieces, constraints="all"):
    """Number of free numbers of one curve with ``num_pieces`` pieces: ``4 * num_pieces - 2``,
    plus the two end heights without the truth-table constraint."""
    if isinstance(num_pieces, bool) or not isinstance(num_pieces, int) or num_pieces < 1:
        raise ValueError(f"num_pieces must be an int >= 1, got {num_pieces!r}")
    return 4 * num_pieces - 2 + (0 if truth_table(constraints) else 2)


def identity_theta(num_pieces, constraints="all"):
    """Search variables of the identity curve g(x) = x (docs/method.md), as a list of floats.

    Control points of the identity are ``x_j = y_j = j / (2n)``; in θ form
    ``θ_j = (x_j - x_{j-1}) / (1 - x_{j-1}) = 1 / (2n - j + 1)``, e.g.
    [1/4, 1/4, 1/3, 1/3, 1/2, 1/2] for two pieces and [1/2, 1/2] for one. Without monotonicity
    the y variables are the heights themselves (``θy_j = j / (2n)``); without the truth table
    ``[0, 1]`` (the end heights' variables) is appended.
    """
    curve_length(num_pieces, constraints)
    m = 2 * num_pieces
    theta = []
    for j in range(1, m):
        theta += [1.0 / (m - j + 1), 1.0 / (m - j + 1) if monotonic(constraints) else j / m]
    return theta if truth_table(constraints) else theta + [0.0, 1.0]


def _as_float64(values, name):
    try:
        if torch.is_tensor(values):
            t = values.detach().to("cpu", torch.float64)
        else:
            t = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be numbers, got {values!r}") from None
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def clamp_theta(theta):
    """Clamp search variables into ``[CLAMP_MIN, CLAMP_MAX]`` so no piece can degenerate (§3.1)."""
    return torch.as_tensor(theta).clamp(CLAMP_MIN, CLAMP_MAX)


def theta_to_control_points(theta, num_pieces, clamp=True, constraints="all"):
    """Map search variables θ ∈ [0,1]^L of one curve to its control points (docs/method.md).

    Args:
        theta: array-like of shape (..., L), L = :func:`curve_length`, laid out
            ``[θx_1, θy_1, θx_2, θy_2, ...]`` (then ``θ_start, θ_end`` without the truth-table
            constraint), values in [0, 1]; leading dimensions are batch dimensions.
        num_pieces (int): n.
        clamp (bool): clamp θ to ``[CLAMP_MIN, CLAMP_MAX]`` first (the default), which guarantees
            strictly increasing x coordinates.
        constraints (str): one of :data:`CONSTRAINTS`.

    Returns:
        float64 tensor of shape (..., L) with ``x_j = x_{j-1} + θx_j (1 - x_{j-1})`` (x_0 = 0),
        i.e. ``1 - x_j = prod_{i <= j} (1 - θx_i)``; y likewise when monotone (from
        ``y_0 = θ_start`` without the truth table, ending at ``y_{2n} = y_{2n-1} + θ_end (1 -
        y_{2n-1})``), else ``y_j = θy_j`` (and ``y_0 = θ_start``, ``y_{2n} = θ_end``).
    """
    length = curve_length(num_pieces, constraints)
    t = _as_float64(theta, "theta")
    if t.dim() == 0 or t.shape[-1] != length:
        raise ValueError(
            f"theta for {num_pieces} piece(s) must have last dimension {length}, "
            f"got shape {tuple(t.shape)}"
        )
    if (t < 0).any() or (t > 1).any():
        raise ValueError(f"theta values must lie in [0, 1], got {t.tolist()}")
    if clamp:
        t = clamp_theta(t)
    free_ends = not truth_table(constraints)
    inner = t[..., :-2] if free_ends else t
    pairs = inner.reshape(*inner.shape[:-1], inner.shape[-1] // 2, 2)
    x = 1.0 - torch.cumprod(1.0 - pairs[..., 0], dim=-1)
    y_start = t[..., -2:-1] if free_ends else torch.zeros_like(t[..., :1])
    if monotonic(constraints):
        y = 1.0 - (1.0 - y_start) * torch.cumprod(1.0 - pairs[..., 1], dim=-1)
    else:
        y = pairs[..., 1]
    cp = torch.stack([x, y], dim=-1).reshape(inner.shape)
    if not free_ends:
        return cp
    y_end = t[..., -1:]
    if monotonic(constraints):
        y_end = y[..., -1:] + y_end * (1.0 - y[..., -1:])
    return torch.cat([cp, y_start, y_end], dim=-1)


def control_points_to_theta(control_points, num_pieces):
    """Inverse of :func:`theta_to_control_points` (without clamping) for the paper's constraints;
    float64 (..., 4n-2)."""
    length = curve_length(num_pieces)
    cp = _as_float64(control_points, "control_points")
    if cp.dim() == 0 or cp.shape[-1] != length:
        raise ValueError(f"control_points must have last dimension {length}, got {tuple(cp.shape)}")
    pairs = cp.reshape(*cp.shape[:-1], length // 2, 2)
    prev = torch.cat([torch.zeros_like(pairs[..., :1, :]), pairs[..., :-1, :]], dim=-2)
    return ((pairs - prev) / (1.0 - prev)).reshape(cp.shape)


def control_point_coordinates(values):
    """(xs, ys): lists of all control points P_0 .. P_{2n} of one flat curve of either layout
    (``4n - 2`` numbers with fixed ends, or ``4n`` with the end heights appended)."""
    values = [float(v) for v in values]
    if len(values) % 4 == 0:  # free end heights, appended
        inner = values[:-2]
        return [0.0] + inner[0::2] + [1.0], [values[-2]] + inner[1::2] + [values[-1]]
    return [0.0] + values[0::2] + [1.0], [0.0] + values[1::2] + [1.0]


def validate_control_points(control_points, num_pieces, name="control_points",
                            constraints="all"):
    """Check one curve's control points and return them as a list of floats.

    Requirements: length :func:`curve_length`; all values finite in [0, 1]; x strictly
    increasing, ``0 < x_1 < x_2 < ... < x_{2n-1} < 1`` (no degenerate piece, finite slopes); y
    non-decreasing (end heights included) unless ``constraints`` drops monotonicity.

    Raises:
        ValueError naming ``name``, the offending index and value.
    """
    length = curve_length(num_pieces, constraints)
    cp = _as_float64(control_points, name).reshape(-1)
    if cp.numel() != length:
        ends = "" if truth_table(constraints) else f", y_0, y_{2 * num_pieces}"
        raise ValueError(
            f"{name}: a curve with {num_pieces} piece(s) needs {length} numbers "
            f"[x_1, y_1, ..., x_{2 * num_pieces - 1}, y_{2 * num_pieces - 1}{ends}] "
            f"(constraints {constraints!r}), got {cp.numel()}"
        )
    values = cp.tolist()
    for i, v in enumerate(values):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}[{i}] = {v!r} is outside [0, 1]")
    xs, ys = control_point_coordinates(values)
    for j in range(1, len(xs)):
        if not xs[j] > xs[j - 1]:
            raise ValueError(
                f"{name}: x coordinates must be strictly increasing (0 < x_1 < ... < 1), but "
                f"x_{j} = {xs[j]!r} <= x_{j - 1} = {xs[j - 1]!r} (degenerate piece)"
            )
        if monotonic(constraints) and not ys[j] >= ys[j - 1]:
            raise ValueError(
                f"{name}: y coordinates must be non-decreasing, but y_{j} = {ys[j]!r} < "
                f"y_{j - 1} = {ys[j - 1]!r}"
            )
    return values


class Piece(NamedTuple):
    """One quadratic Bézier piece's precomputed coefficients (see :func:`_piece_coefficients`).

    The field order is the layout the C++ kernels read (``segloss_d2/csrc``: the same names in
    ``SEGLOSS_PIECE_COEFFICIENTS``; :mod:`.kernels` checks at load time that the built extension
    declares this layout, and flattens a curve's pieces with
    :func:`.kernels.flat_coefficients`: ``len(Piece._fields)`` numbers per piece, pieces in order).
    The pure-torch path and the Triton kernels read the fields by name, as the rows of
    :func:`coefficient_table` (:data:`FIELDS`).
    """

    lo: float  # x_{2k}, the piece's start
    hi: float  # x_{2k+2}, its end
    inv_w: float  # 1 / w, w = hi - lo
    a: float  # (x_{2k+1} - lo) / w, the control point's local abscissa
    b: float  # 1 - 2a
    a2: float  # a^2
    c1: float  # 2 (y_{2k+1} - y_{2k})
    c2: float  # y_{2k} - 2 y_{2k+1} + y_{2k+2}
    d1: float  # c1 / (2 w)
    d2: float  # c2 / w
    y_lo: float  # y_{2k}, the height at lo


def _piece_coefficients(control_points):
    """Per-piece float64 coefficients: one :class:`Piece` per piece.

    Piece k spans ``[lo, hi] = [x_{2k}, x_{2k+2}]`` with width ``w = hi - lo`` and control point
    ``(x_{2k+1}, y_{2k+1})``. Its local coordinate is ``u = (x - lo) / w`` and ``a = (x_{2k+1} - lo)
    / w``, so ``x(t) = lo + w (2 a t + (1 - 2a) t^2)``. The Bézier parameter is the root in [0, 1]

        t = u / (a + s),   s = sqrt(a^2 + b u),   b = 1 - 2a

    (the root of ``b t^2 + 2a t - u = 0`` written without the cancellation of ``(s - a) / b``, so
    a = 0.5 needs no special case), and with ``s = a + b t = (dx/dt) / (2w)``

        g - y_{2k} = t (c1 + c2 t),   c1 = 2 (y_{2k+1} - y_{2k}),
        c2 = y_{2k} - 2 y_{2k+1} + y_{2k+2},
        dg/dx = (c1 + 2 c2 t) / (2 w s) = (d1 + d2 t) / s,   d1 = c1 / (2 w),   d2 = c2 / w,

    and ``y_lo = y_{2k}``. This layout (:class:`Piece`) is also the input of the C++ kernels
    (``segloss_d2/csrc``).
    """
    xs, ys = control_point_coordinates(control_points)
    pieces = []
    for k in range((len(xs) - 1) // 2):
        x0, xc, x2 = xs[2 * k : 2 * k + 3]
        y0, yc, y2 = ys[2 * k : 2 * k + 3]
        w = x2 - x0
        a = (xc - x0) / w
        c1, c2 = 2.0 * (yc - y0), y0 - 2.0 * yc + y2
        pieces.append(Piece(lo=x0, hi=x2, inv_w=1.0 / w, a=a, b=1.0 - 2.0 * a, a2=a * a, c1=c1,
                            c2=c2, d1=c1 / (2.0 * w), d2=c2 / w, y_lo=y0))
    return pieces


# The per-piece fields a curve evaluation reads per element, in the row order of
# :func:`coefficient_table` (``hi`` is implied by the next piece's ``lo``).
FIELDS = ("lo", "inv_w", "a", "b", "a2", "c1", "c2", "d1", "d2", "y_lo")


@functools.lru_cache(maxsize=256)
def _cached_table(pieces, dtype, device):
    rows = [[getattr(piece, name) for piece in pieces] for name in FIELDS]
    table = torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=dtype)
    return table, dict(zip(FIELDS, table.unbind(0)))


def coefficient_table(pieces, like):
    """One curve's coefficients as a (len(FIELDS), n) tensor of ``like``'s dtype and device.

    Row ``i`` holds field ``FIELDS[i]`` of every piece (:class:`Piece`), so ``table[i]`` is
    contiguous. Cached per (curve, dtype, device): a training loop that calls the loss with the
    same curves copies them to the device once.
    """
    return _cached_table(tuple(pieces), like.dtype, like.device)[0]


def _coefficient_rows(pieces, like):
    """{field: (n,) row of :func:`coefficient_table`} (cached with it)."""
    return _cached_table(tuple(pieces), like.dtype, like.device)[1]


def _affine(c0, c1, t):
    """``c0 + c1 t`` for Python-float or per-element tensor coefficients (one op for tensors)."""
    if torch.is_tensor(c0):
        return torch.addcmul(c0, c1, t)
    out = torch.mul(t, c1)
    return out.add_(c0) if c0 != 0.0 else out


def evaluate(x, pieces, need_grad, grad_out=None):
    """g(x) and (if ``need_grad``, else None) dg/dx in pure torch, on the whole tensor at once.

    The formulas of :func:`_piece_coefficients` on the owning piece of each element (piece 0
    owns x <= x_2, piece k >= 1 owns lo_k < x), as the C++ and Triton kernels compute them:

        u = (x - lo) inv_w,   s = sqrt(a2 + b u),   t = u / (a + s),
        g = y_lo + t (c1 + c2 t),   g' = (d1 + d2 t) / s.

    A one-piece curve (BF1's) uses its coefficients as Python floats (a straight piece, a = 0.5,
    has s = a and t = u exactly). With several pieces the owning piece is found once
    (:func:`_owning_piece`) and six coefficients are gathered per element from
    :func:`coefficient_table` (one ``index_select`` each; a2, b, d1 and d2 follow from them).
    Either way the number of ops is fixed (10 kernels for one piece, 22 for several on a GPU,
    plus views; on a CPU two more per break point past the first) whatever the size of x: no
    blocks, one kernel launch per op on a GPU (docs/method.md §2.6). Scratch: a few tensors
    like x.

    Args:
        x (Tensor): any shape, float32 or float64; not modified, no autograd.
        pieces: one curve (:func:`curve_pieces`).
        grad_out (Tensor or None): where to write dg/dx (like x; e.g. a slice of a larger
            tensor, saving a copy), or None for a new tensor.
    """
    if len(pieces) == 1:
        values = pieces[0]._asdict()  # Python floats
        return _evaluate_one(x, values, need_grad, grad_out)
    rows = _coefficient_rows(pieces, x)
    index = _owning_piece(x, rows["lo"], pieces).reshape(-1)

    def coef(name):  # per element, from the owning piece
        return rows[name].index_select(0, index).view(x.shape)

    # A gather costs several elementwise ops on a CPU: a2, b, d1 and d2 are derived from a, c1,
    # c2 and 1 / w instead of gathered (the same numbers up to a unit in the last place).
    inv_w, a, c2 = coef("inv_w"), coef("a"), coef("c2")
    u = torch.sub(x, coef("lo")).mul_(inv_w)
    b = torch.rsub(a, 1.0, alpha=2.0)  # 1 - 2a
    s = torch.mul(a, a).addcmul_(b, u).sqrt_()  # a2 + b u
    denominator = b.copy_(s).add_(a)
    t = torch.div(u, denominator, out=denominator)
    rise = torch.addcmul(coef("c1"), c2, t)  # c1 + c2 t
    g = torch.addcmul(coef("y_lo"), rise, t)
    if not need_grad:
        return g, None
    # g' = (d1 + d2 t) / s = (c1 + 2 c2 t) / (2 w s) = (rise + c2 t) (1 / w) / (2 s)
    numerator = rise.addcmul_(c2, t).mul_(inv_w)
    return g, torch.div(numerator, s.mul_(2.0), out=numerator if grad_out is None else grad_out)


def _owning_piece(x, lo, pieces):
    """(x.shape) int32 index of the piece owning each element: piece 0 owns x <= lo_1, piece
    k >= 1 owns lo_k < x. On a CPU a comparison per break point (torch.bucketize searches each
    element: 3-4x slower there for the few break points of a curve); elsewhere one bucketize."""
    if x.device.type != "cpu":
        return torch.bucketize(x, lo[1:], out_int32=True)
    breaks = [piece.lo for piece in pieces[1:]]
    index = torch.gt(x, breaks[0]).to(torch.int32)
    for value in breaks[1:]:
        index += torch.gt(x, value)
    return index


def _evaluate_one(x, values, need_grad, grad_out):
    """:func:`evaluate` of a one-piece curve, its coefficients ``values`` as Python floats."""
    coef = values.__getitem__
    lo, inv_w = values["lo"], values["inv_w"]
    u = x if lo == 0.0 and inv_w == 1.0 else torch.sub(x, lo).mul_(inv_w)
    if values["b"] == 0.0:
        s, t = values["a"], u
    else:
        s = _affine(coef("a2"), coef("b"), u).sqrt_()  # a2 + b u
        denominator = torch.add(s, coef("a"))
        t = torch.div(u, denominator, out=denominator)
    rise = _affine(coef("c1"), coef("c2"), t)  # c1 + c2 t
    y_lo = coef("y_lo")
    g = rise.mul_(t)
    if y_lo != 0.0:
        g.add_(y_lo)
    if not need_grad:
        return g, None
    numerator = _affine(coef("d1"), coef("d2"), t)
    return g, torch.div(numerator, s, out=numerator if grad_out is None else grad_out)


def curve_pieces(control_points):
    """Validate the length of one curve's flat control points and precompute its pieces.

    Args:
        control_points: flat (4n-2,) sequence or tensor, or (4n,) with free end heights, already
            validated (see :func:`validate_control_points`).

    Returns:
        opaque per-piece coefficients (a list of :class:`Piece`) for :func:`evaluate` and
        :func:`.ops.bezier`.
    """
    if torch.is_tensor(control_points):
        control_points = control_points.detach().reshape(-1).tolist()
    n = len(control_points)
    if n < 2 or n % 2:
        raise ValueError(f"control_points must have length 4n-2 (2, 6, 10, ...) or, with free "
                         f"end heights, 4n (4, 8, 12, ...), got {n}")
    return _piece_coefficients(control_points)
