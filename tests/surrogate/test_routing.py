"""Gradient routing of BF1's pooling on inputs full of exact ties.

Min- and max-pooling pass a window's gradient to one element: max-pooling's backward picks the
first maximum in row-major window order. The BF1 surrogate computes its 3x3 erosion and the
(2 tol + 1)^2 window argmax of its dilation separably (``morphology._erode`` /
``morphology._erode_grad_add``, ``ops.window_argmax``), so on ties the separable passes must pick
the same element as ``torch.nn.functional.max_pool2d(..., return_indices=True)`` (on the negated
input for the minimum). Inputs: quantized values, constant planes, {0, 1} maps, checkerboards and
(as a no-tie control) continuous values, on odd shapes down to 1x1.
"""
import pytest
import torch
import torch.nn.functional as F

from segloss_d2.surrogate.boundary import relaxed_bf1
from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.morphology import _erode, _erode_grad_add
from segloss_d2.surrogate.ops import window_argmax
from segloss_d2.surrogate.params import load_params

from ._reference import EPS, _dilate, _edge, bezier, one_hot
from ._reference import surrogate as reference_surrogate
from .test_loss import C, blob_labels

SHAPES = [(1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (8, 9)]
KINDS = ["quantized", "constant", "ones", "binary", "checker", "continuous"]


def tie_values(kind, shape, seed=0, dtype=torch.float64):
    """Values in [0, 1] of ``shape`` with many exact ties (except ``continuous``)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "quantized":
        out = torch.randint(0, 5, shape, generator=gen) / 4
    elif kind == "constant":
        out = torch.full(shape, 0.375)
    elif kind == "ones":  # the erosion's pad value itself
        out = torch.ones(shape)
    elif kind == "binary":
        out = (torch.rand(shape, generator=gen) < 0.6).double()
    elif kind == "checker":
        h, w = shape[-2:]
        out = ((torch.arange(h)[:, None] + torch.arange(w)) % 2).double().expand(shape)
    else:
        out = torch.rand(shape, generator=gen, dtype=torch.float64)
    return out.to(dtype).contiguous()


def positive_integer_grad(shape, seed, dtype):
    """Gradients in [1, 2^16): every window's share stays visible and all sums are exact."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 1 << 16, shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
def test_erosion_routes_like_max_pool_indices(kind, shape, dtype):
    x = tie_values(kind, (2, 3) + shape, seed=shape[0] * 10 + shape[1], dtype=dtype)
    neg_min, index = F.max_pool2d(-x, 3, stride=1, padding=1, return_indices=True)
    eroded = _erode(x)
    torch.testing.assert_close(eroded, -neg_min, atol=0, rtol=0)
    grad = positive_integer_grad(x.shape, seed=1, dtype=dtype)
    base = positive_integer_grad(x.shape, seed=2, dtype=dtype)  # _erode_grad_add accumulates
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            expected = base[i, k].reshape(-1).clone().index_add_(
                0, index[i, k].reshape(-1), grad[i, k].reshape(-1))
            result = base[i, k].clone()
            _erode_grad_add(x[i, k], eroded[i, k], grad[i, k], result)
            torch.testing.assert_close(result.reshape(-1), expected, atol=0, rtol=0,
                                       msg=f"plane ({i}, {k})")


@pytest.mark.parametrize("positions", ["all", "sparse"])
@pytest.mark.parametrize("radius", [0, 1, 2, 5])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
def test_window_argmax_is_max_pool_index(kind, shape, radius, positions):
    """All positions (dense row maxima) and one in (2r+1)^2 (on CPU: the direct-scan kernel)."""
    n, k = 2, 3
    values = tie_values(kind, (n, k) + shape, seed=radius, dtype=torch.float32)
    if kind == "continuous":
        values = values - 0.5  # negative values too
    _, index = F.max_pool2d(values, 2 * radius + 1, stride=1, padding=radius,
                            return_indices=True)
    n_idx, c_idx, h_idx, w_idx = torch.nonzero(torch.ones_like(values, dtype=torch.bool),
                                               as_tuple=True)
    index = index.reshape(-1)
    if positions == "sparse":
        keep = torch.arange(radius, values.numel(), (2 * radius + 1) ** 2)
        n_idx, c_idx, h_idx, w_idx, index = (t[keep] for t in (n_idx, c_idx, h_idx, w_idx, index))
    got = window_argmax(values, n_idx, c_idx, h_idx, w_idx, radius)
    plane = (n_idx * k + c_idx) * shape[0] * shape[1]
    torch.testing.assert_close(got, plane + index, atol=0, rtol=0)


def test_window_argmax_on_a_subset_of_positions():
    values = tie_values("quantized", (2, 2, 6, 7), dtype=torch.float64)
    _, index = F.max_pool2d(values, 5, stride=1, padding=2, return_indices=True)
    n_idx, c_idx, h_idx, w_idx = (torch.tensor(v) for v in
                                  ([1, 0, 1, 0], [0, 1, 1, 0], [5, 0, 3, 2], [6, 0, 2, 4]))
    got = window_argmax(values, n_idx, c_idx, h_idx, w_idx, 2)
    expected = (n_idx * 2 + c_idx) * 42 + index[n_idx, c_idx, h_idx, w_idx]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def bf1_of_probs(p, labels, curves, tol, drop_bg, pad_with_one=False):
    """The reference BF1 (``_reference.surrogate``) on probabilities instead of logits.

    The erosion's windows are cut at the border (max_pool2d's own padding, never picked) unless
    ``pad_with_one``: then p is padded with 1.0 first, as the reference code does
    (docs/method.md §1.3), and a window whose minimum ties with the pad sends its gradient to the
    pad, where it is lost.
    """
    y, _ = one_hot(labels, p.shape[1])
    gt_edge = _edge(y.to(p.dtype))
    if pad_with_one:
        e = -F.max_pool2d(-F.pad(p, (1, 1, 1, 1), value=1.0), 3, stride=1)
    else:
        e = -F.max_pool2d(-p, 3, stride=1, padding=1)
    g1, g2, g3, g4 = (bezier(v, cp) for v, cp in zip((p, e, p, e), curves))
    soft = g3 + g4 - g3 * g4 - g1 * g2
    n_gt = gt_edge.sum(dim=(0, 2, 3))
    precision = (soft * _dilate(gt_edge, tol)).sum(dim=(0, 2, 3)) / (soft.sum(dim=(0, 2, 3)) + EPS)
    recall = (_dilate(soft, tol) * gt_edge).sum(dim=(0, 2, 3)) / (n_gt + EPS)
    f1 = 2 * precision * recall / (precision + recall + EPS)
    keep = n_gt != 0
    if drop_bg:
        keep[0] = False
    return f1[keep].mean()


# not "ones": p = 1 everywhere has no predicted boundary (B = g3 + g4 - g3 g4 - g1 g2 = 0 up to
# round-off), and precision = 0 / eps amplifies that round-off by 1 / eps
@pytest.mark.parametrize("kind", ["quantized", "constant", "binary", "checker"])
@pytest.mark.parametrize("drop_bg", [False, True])
def test_bf1_probability_gradient_on_ties(kind, drop_bg):
    labels = blob_labels(n=2, h=9, w=11, cell=3)
    p = tie_values(kind, (2, C, 9, 11), seed=3)
    p[1, :, :2, :] = 1.0  # border windows whose minimum ties with the pad value
    curves = load_params("voc_bf1").control_points[0]
    leaf, ref_leaf = p.clone().requires_grad_(), p.clone().requires_grad_()
    value = relaxed_bf1(leaf, labels, curves, tolerance=2, drop_background=drop_bg)
    expected = bf1_of_probs(ref_leaf, labels, curves, 2, drop_bg)
    torch.testing.assert_close(value, expected, atol=1e-12, rtol=1e-10)
    weight = positive_integer_grad((), seed=4, dtype=torch.float64)
    (value * weight).backward()
    (expected * weight).backward()
    assert ref_leaf.grad.abs().max() > 0
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, atol=1e-12, rtol=1e-9)


def test_bf1_pad_ties_keep_their_gradient_in_the_image():
    """Documented deviation (values equal, gradients differ only where p == 1.0 exactly): the
    reference pads p with 1.0 and max-pools, so a border window whose minimum ties the pad sends
    its gradient to the pad, where it is lost; segloss_d2 routes it to the first in-image minimum,
    as max_pool2d(padding=1) does."""
    labels = blob_labels(n=2, h=9, w=11, cell=3)
    p = tie_values("quantized", (2, C, 9, 11), seed=3)
    p[1, :, :2, :] = 1.0
    curves = load_params("voc_bf1").control_points[0]
    leaf, ref_leaf = p.clone().requires_grad_(), p.clone().requires_grad_()
    value = relaxed_bf1(leaf, labels, curves, tolerance=2)
    ref_value = bf1_of_probs(ref_leaf, labels, curves, 2, False, pad_with_one=True)
    torch.testing.assert_close(value, ref_value, atol=1e-12, rtol=1e-9)
    value.backward()
    ref_value.backward()
    differs = (leaf.grad - ref_leaf.grad).abs() > 1e-12
    assert differs.any(), "the tie case was not exercised"
    assert bool((p[differs] == 1.0).all()), "gradients may differ only at probabilities of 1.0"
    # nothing is lost: the reference's gradient mass dropped into the pad shows up in the image
    assert leaf.grad.abs().sum() >= ref_leaf.grad.abs().sum()


def tie_logits(kind, labels, c):
    """float64 logits whose softmax has many exactly equal probabilities, and the most distinct
    probability values one (n, c) plane may hold.

    Equal probabilities come from identical logit vectors (a pixel-to-vector map over a few random
    vectors) or from sums that do not depend on the order of the classes (two classes). One-hot
    logits of more than two classes are avoided: their cold probabilities are equal in exact
    arithmetic but differ by an ulp with the position of the hot class (the softmax sums in
    another order), so which "tied" element wins is round-off, not routing. For the same reason
    these tests are float64 only: float32 softmax over the channels can give identical logit
    vectors at different pixels results one ulp apart (vectorized body versus scalar tail).
    """
    gen = torch.Generator().manual_seed(5)
    n, h, w = labels.shape
    pred = labels.clone()
    pred[pred >= c] = 0
    pred[:, ::3] = torch.roll(pred[:, ::3], 2, dims=-1)  # wrong bands: predicted edges move
    if kind == "palette":  # each pixel one of three random logit vectors
        vectors = 2 * torch.randn(3, c, generator=gen, dtype=torch.float64)
        return vectors[torch.randint(0, 3, (n, h, w), generator=gen)].permute(0, 3, 1, 2), 3
    if kind == "class-palette":  # one random logit vector per predicted class
        vectors = 2 * torch.randn(c, c, generator=gen, dtype=torch.float64)
        return vectors[pred].permute(0, 3, 1, 2), c
    if kind == "constant-planes":
        plane = torch.randn(n, c, 1, 1, generator=gen, dtype=torch.float64)
        return plane.expand(n, c, h, w).contiguous(), 1
    if kind == "uniform":
        return torch.zeros(n, c, h, w, dtype=torch.float64), 1
    assert kind == "one-hot" and c == 2
    return 3.0 * F.one_hot(pred, c).permute(0, 3, 1, 2).double(), 2


@pytest.mark.parametrize(
    "kind, c",
    [("palette", C), ("class-palette", C), ("constant-planes", C), ("uniform", C),
     ("one-hot", 2), ("class-palette", 2)])
def test_bf1_loss_matches_reference_on_tied_logits(kind, c):
    labels = blob_labels(n=2, h=10, w=12, c=c, cell=3)
    logits, most_distinct = tie_logits(kind, labels, c)
    probs = torch.softmax(logits, dim=1)
    distinct = max(len(torch.unique(plane)) for plane in probs.flatten(2).flatten(0, 1))
    assert distinct <= most_distinct, "precondition: the softmax must keep the ties exact"
    curves = load_params("voc_bf1")
    for drop_bg in (False, True):
        loss = SurrogateLoss(curves, c, tolerance=2, drop_background=drop_bg)
        leaf, ref_leaf = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        value = loss(leaf, labels)
        expected = 1 - reference_surrogate("BF1", ref_leaf, labels, curves.control_points[0], 2,
                                           drop_bg=drop_bg)
        value.backward()
        expected.backward()
        torch.testing.assert_close(value, expected, atol=1e-12, rtol=0)
        scale = ref_leaf.grad.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(leaf.grad, ref_leaf.grad, atol=1e-12 * scale, rtol=1e-8)
