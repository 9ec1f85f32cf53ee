"""Autograd contracts of the fused surrogate Functions: retained graphs and double backward.

The custom Functions consume their saved partial derivatives in place during backward and
recompute them when a retained graph is run again; their backward is not differentiable, so
differentiating a gradient (``create_graph=True``) must either raise or be right, never silently
drop second-order terms.
"""
import re

import pytest
import torch

from segloss_d2.surrogate.autograd import bezier_curve
from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import METRICS, SurrogateParams, list_presets, load_params

from ._reference import bezier as reference_bezier
from ._reference import surrogate as reference_surrogate
from .test_loss import C, blob_labels, random_logits

PRESETS = sorted(list_presets())
PRESET_OF = {load_params(p).metrics[0]: p for p in PRESETS}

LABELS = {
    "void": lambda: blob_labels(n=2, h=11, w=13, cell=3),  # every class, void pixels (weights)
    "no-void": lambda: blob_labels(n=2, h=11, w=13, cell=3, ignore=False),  # weight-free path
    "absent": lambda: blob_labels(n=2, h=11, w=13, c=3, cell=3),  # classes 3..5 absent (subsets)
}


def all_metrics_params():
    """One loss with all six metrics (shared softmax, several Functions in one graph)."""
    params = [load_params(PRESET_OF[m]) for m in METRICS]
    return SurrogateParams(metrics=list(METRICS), weights=[1.0 + i for i in range(len(METRICS))],
                           num_pieces=[p.num_pieces[0] for p in params],
                           thetas=[None] * len(METRICS),
                           control_points=[p.control_points[0] for p in params])


@pytest.mark.parametrize("labels_kind", sorted(LABELS))
@pytest.mark.parametrize("preset", PRESETS + ["all-metrics"])
def test_retained_graph_backward_twice_accumulates_identical_gradients(preset, labels_kind):
    _check_retained_graph(preset, LABELS[labels_kind]())


def _check_retained_graph(preset, labels):
    params = all_metrics_params() if preset == "all-metrics" else load_params(preset)
    loss = SurrogateLoss(params, C, tolerance=2)
    for dtype in (torch.float32, torch.float64):
        logits = random_logits(labels, dtype=dtype)
        fresh = logits.clone().requires_grad_()
        loss(fresh, labels).backward()
        assert fresh.grad.abs().max() > 0

        x = logits.clone().requires_grad_()
        value = loss(x, labels)
        (first,) = torch.autograd.grad(value, x, retain_graph=True)
        (second,) = torch.autograd.grad(value, x, retain_graph=True)
        torch.testing.assert_close(first, fresh.grad, atol=0, rtol=0)
        torch.testing.assert_close(second, first, atol=0, rtol=0)
        value.backward(retain_graph=True)
        value.backward(retain_graph=True)
        torch.testing.assert_close(x.grad, 2 * first, atol=0, rtol=0)
        value.backward()  # the last one may free the graph
        torch.testing.assert_close(x.grad, 3 * first, atol=0, rtol=0)
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            value.backward()


def test_retained_graph_bezier_curve():
    cp = load_params("voc_miou").control_points[0][0]
    x = torch.rand(50, dtype=torch.float64, requires_grad=True)
    y = bezier_curve(x, cp)
    weight = torch.randn(50, dtype=torch.float64)
    y.backward(weight, retain_graph=True)
    first = x.grad.clone()
    y.backward(weight)
    torch.testing.assert_close(x.grad, 2 * first, atol=0, rtol=0)


# torch's once_differentiable message, or a library's own (raised as early as create_graph=True)
DOUBLE_BACKWARD_ERROR = r"differentiate twice|double backward|create_graph"


def _second_order(fn, x, direction, mode):
    """Hessian-vector product of the scalar ``fn(x)`` through ``create_graph=True``, or the
    RuntimeError raised on the way. ``mode``: how the gradient is differentiated, ``"backward"``
    (``.backward()``, into every leaf) or ``"grad"`` (``torch.autograd.grad(..., inputs=x)``)."""
    leaf = x.clone().requires_grad_()
    try:
        (grad,) = torch.autograd.grad(fn(leaf), leaf, create_graph=True)
        if mode == "backward":
            (grad * direction).sum().backward()
            hvp = leaf.grad
        else:
            (hvp,) = torch.autograd.grad((grad * direction).sum(), leaf, allow_unused=True)
    except RuntimeError as error:
        return error
    return torch.zeros_like(x) if hvp is None else hvp


def _assert_raises_or_correct(fn, reference_fn, x, direction, mode):
    got = _second_order(fn, x, direction, mode)
    if isinstance(got, RuntimeError):
        assert re.search(DOUBLE_BACKWARD_ERROR, str(got)), str(got)
        return
    expected = _second_order(reference_fn, x, direction, mode)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, atol=1e-10 * expected.abs().max().item(), rtol=1e-6)


def _double_backward_cases():
    # Regression: with torch's once_differentiable, autograd.grad(..., inputs=logits) pruned the
    # error node and mACC/pACC (constant incoming gradient) installed none, so create_graph=True
    # silently dropped second-order terms. Every backward now raises in grad mode.
    for preset in PRESETS:
        for mode in ("backward", "grad"):
            yield pytest.param(preset, mode, id=f"{preset}-{mode}")


@pytest.mark.parametrize("preset, mode", list(_double_backward_cases()))
def test_double_backward_raises_or_is_correct(preset, mode):
    params = load_params(preset)
    metric = params.metrics[0]
    labels = blob_labels(n=1, h=8, w=9, cell=3)
    loss = SurrogateLoss(params, C, tolerance=2)
    x = random_logits(labels, dtype=torch.float64)
    direction = torch.randn(x.shape, dtype=torch.float64)

    def reference(z):
        return 1 - reference_surrogate(metric, z, labels, params.control_points[0], tol=2)

    _assert_raises_or_correct(lambda z: loss(z, labels), reference, x, direction, mode)


@pytest.mark.parametrize("preset", ["voc_miou", "voc_fwiou", "voc_biou", "voc_bf1"])
def test_double_backward_error_names_the_cause(preset):
    labels = blob_labels(n=1, h=8, w=9, cell=3)
    loss = SurrogateLoss(load_params(preset), C, tolerance=2)
    x = random_logits(labels, dtype=torch.float64).requires_grad_()
    with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD_ERROR):
        (grad,) = torch.autograd.grad(loss(x, labels), x, create_graph=True)
        grad.square().sum().backward()


@pytest.mark.parametrize("mode", ["backward", "grad"])
def test_bezier_curve_double_backward_raises_or_is_correct(mode):
    cp = load_params("voc_miou").control_points[0][0]
    x = torch.rand(40, dtype=torch.float64) * 0.98 + 0.01
    direction = torch.randn(40, dtype=torch.float64)

    def with_quadratic(curve):
        # Hessian diag(g'') + identity: the quadratic keeps the gradient attached to the graph,
        # so a silently constant g' is not caught by "element 0 ... does not require grad"
        return lambda z: curve(z).sum() + 0.5 * z.square().sum()

    _assert_raises_or_correct(with_quadratic(lambda z: bezier_curve(z, cp)),
                              with_quadratic(lambda z: reference_bezier(z, cp)),
                              x, direction, mode)
