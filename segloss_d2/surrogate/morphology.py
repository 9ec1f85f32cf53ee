"""Morphology on (N, K, H, W) maps for the pure-torch surrogates.

- Radii: :func:`check_radius`, :func:`effective_radius` (window radii clamped to the image).
- Dilation of bool maps (:func:`dilate_bool`: BIoU's trimap, BF1's dilated ground truth) and the
  3x3 erosion of probabilities with its exact gradient routing (:func:`_erode`,
  :func:`_erode_grad_add`: BF1's soft boundary, docs/method.md §2.3).

Every function works on the whole tensor at once: a fixed number of ops whatever the image size
(docs/method.md §2.6). No compiled ops here: those are dispatched in :mod:`.ops`.
"""
import numbers

import torch

__all__ = ["check_radius", "dilate_bool", "effective_radius"]


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


def _erode(x):
    """3x3 min-pool of (N, K, H, W) values, windows cut at the border (= padding with 1.0).

    Separable: rows, then columns (six ops on the whole tensor).
    """
    return _min3(_min3(x, torch.empty_like(x), -1), torch.empty_like(x), -2)


def _erode_grad_add(x, eroded, grad, result):
    """Add the gradient of :func:`_erode` for (..., H, W) planes ``grad`` to ``result``, in place.

    Exactly like ``-max_pool2d(-x, 3, 1, 1)``: each window's gradient goes to its first minimum
    in row-major order; the column pass routes to the first row whose row minimum is the window
    minimum, the row pass to the first column in that row.
    """
    # five tensors, not one of five times the size: chunk-sized ones stay in the heap and caches
    rows, grad_rows, *work = (x.new_empty(x.shape) for _ in range(5))
    _min3(x, rows, -1)
    _min3_backward(rows, eroded, grad, -2, grad_rows, work, False)
    return _min3_backward(x, rows, grad_rows, -1, result, work, True)
