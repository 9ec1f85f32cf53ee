"""The autograd layer of the surrogates, above the dispatch layer :mod:`.ops`.

- :func:`first_order_backward` (with :func:`no_double_backward`): the guard of the ``backward`` of
  every custom autograd Function of this package (here, :mod:`.region`, :mod:`.boundary`): first
  order only, an error for ``create_graph=True``.
- :func:`bezier_curve`: one curve elementwise as a differentiable op (its Function evaluates the
  curve and its slope in one pass through :func:`.ops.bezier`).

The curve maths it evaluates are :mod:`.bezier`'s.
"""
import functools

import torch
from torch.autograd.function import once_differentiable

from . import ops
from .bezier import curve_pieces

__all__ = ["bezier_curve", "first_order_backward", "no_double_backward"]


def no_double_backward():
    """Raise if a higher-order graph is requested: these backwards are first-order only, and
    autograd runs a backward with grad mode enabled exactly when ``create_graph=True``, which would
    otherwise silently miss second-order terms. Applied by :func:`first_order_backward`."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "segloss_d2's surrogates support first-order gradients only; double backward "
            "(create_graph=True) is not implemented"
        )


def first_order_backward(backward):
    """Decorator for the ``backward`` of this package's custom autograd Functions.

    torch's :func:`~torch.autograd.function.once_differentiable` runs the backward without
    recording a graph. On its own it is not enough: it only defers an error to a node attached
    to its outputs when an incoming *gradient* requires grad, so a second-order request whose
    incoming gradients are constants (mACC, pACC), or an ``autograd.grad(..., inputs=x)`` that
    prunes the error node, would silently drop this backward's second-order terms. So
    :func:`no_double_backward` raises first, as soon as ``create_graph=True`` reaches it.

    Use below ``@staticmethod``.
    """
    inner = once_differentiable(backward)

    @functools.wraps(backward)
    def guarded(ctx, *grads):
        no_double_backward()
        return inner(ctx, *grads)

    return guarded


class _BezierFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pieces):
        g, grad = ops.bezier(x, pieces, need_grad=x.requires_grad)
        ctx.save_for_backward(grad)
        return g

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


def bezier_curve(x, control_points):
    """Evaluate the piecewise quadratic Bézier curve g elementwise on ``x`` (docs/method.md §3.1).

    Solves ``x(t) = x`` in closed form: in one fused pass on CUDA (Triton) and on CPU (C++),
    elsewhere in pure torch (:func:`.bezier.evaluate`); the choice is :func:`.ops.bezier`'s.

    Args:
        x (Tensor): any shape, values in [0, 1] (probabilities), any float dtype. Half and bfloat16
            inputs are computed and returned in float32 (also under autocast); float64 stays
            float64.
        control_points: one curve's free control points, flat (4n-2,) sequence or tensor, already
            validated (see :func:`.bezier.validate_control_points`).

    Returns:
        Tensor like ``x`` (float32 or float64) holding g(x); differentiable with respect to ``x``
        (dg/dx = (dg/dt)(dt/du)(du/dx), through the owning piece only, as in the reference).
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    pieces = curve_pieces(control_points)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _BezierFunction.apply(x, pieces)
