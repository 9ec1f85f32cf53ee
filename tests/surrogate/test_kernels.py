"""The compiled CPU kernels (``segloss_d2._C``) against the pure-torch path they replace on CPU.

Every other surrogate test already runs on both paths (see conftest.py) against the reference
formulas; these tests compare the two implementations op by op, on the cases where kernels most
easily go wrong: breakpoints and the generic many-piece path, shapes of one row or column, bands
of rows, exact ties in the erosion's gradient routing, aliasing, thread counts, and bad input.
"""
import logging
from types import SimpleNamespace

import pytest
import torch

from segloss_d2.surrogate import (
    SurrogateLoss,
    SurrogateParams,
    bezier,
    boundary,
    kernels,
    list_presets,
    load_params,
    ops,
)
from segloss_d2.surrogate.autograd import bezier_curve
from segloss_d2.surrogate.bezier import curve_pieces, identity_theta, theta_to_control_points

from .test_loss import C, blob_labels, random_logits

pytestmark = pytest.mark.skipif(not kernels.available(),
                                reason=f"segloss_d2._C not built: {kernels.load_error()}")


@pytest.fixture(autouse=True)
def compute_path(monkeypatch):
    """Each test switches paths itself (overrides the two-path fixture of conftest.py)."""
    monkeypatch.setattr(kernels, "ENABLED", True)
    return "both"


def _both(monkeypatch, fn):
    """``fn()`` on the kernels, then on the pure-torch path."""
    monkeypatch.setattr(kernels, "ENABLED", True)
    fast = fn()
    monkeypatch.setattr(kernels, "ENABLED", False)
    slow = fn()
    monkeypatch.setattr(kernels, "ENABLED", True)
    return fast, slow


def _tol(dtype):
    return dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-13, rtol=1e-11)


def _random_curve(num_pieces, seed):
    """Random monotone control points; many pieces: the identity's θ, randomly scaled (θ of
    0.05-0.95 would squeeze the later pieces of a long curve to nothing)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(4 * num_pieces - 2, generator=gen, dtype=torch.float64)
    if num_pieces <= 8:
        theta = noise * 0.9 + 0.05
    else:
        theta = torch.tensor(identity_theta(num_pieces), dtype=torch.float64) * (0.5 + noise)
    return theta_to_control_points(theta.clamp(max=0.95), num_pieces).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# 4 and 7: the generic (run-time) loop; 70: more pieces than it holds (plain loop)
@pytest.mark.parametrize("num_pieces", [1, 2, 3, 4, 7, 70])
def test_bezier_matches_torch_path(monkeypatch, num_pieces, dtype):
    cp = _random_curve(num_pieces, num_pieces)
    pieces = curve_pieces(cp)
    x = torch.rand(3, 5, 301, dtype=torch.float64)
    x.view(-1)[: 2 + len(cp) // 2] = torch.tensor([0.0, 1.0] + cp[0::2], dtype=torch.float64)
    x = x.to(dtype)
    for need_grad in (True, False):
        (g, d), (g_ref, d_ref) = _both(
            monkeypatch, lambda need_grad=need_grad: ops.bezier(x, pieces, need_grad))
        assert g.shape == x.shape and g.dtype == dtype
        torch.testing.assert_close(g, g_ref, **_tol(dtype))
        if need_grad:
            # the derivative is the owning piece's on both paths, breakpoints included (another
            # piece's slope would differ by O(1) of the largest slope). In float32 the narrow last
            # pieces of 7-piece curves are ill-conditioned near their ends (s = sqrt(a^2 + b u)
            # -> 1 - a): one ulp of u moves g' by ~1e-5 of the largest slope, either way.
            tol = _tol(dtype)
            scale = max(1.0, d_ref.abs().max().item())
            tol["atol"] *= scale * (100 if dtype == torch.float32 else 1)
            torch.testing.assert_close(d, d_ref, **tol)
        else:
            assert d is None and d_ref is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("present", [None, [0, 3, 4]])
def test_region_dense_matches_torch_path(monkeypatch, dtype, weighted, present):
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 6, 9000, generator=gen, dtype=dtype), dim=1)
    weight = (torch.rand(2, 9000, generator=gen) > 0.3).to(dtype) if weighted else None
    classes = None if present is None else torch.tensor(present)
    pieces = curve_pieces(_random_curve(2, 3))
    (sums, slopes), (sums_ref, slopes_ref) = _both(
        monkeypatch, lambda: ops.region_dense(probs, weight, pieces, classes, True))
    assert sums.shape == (2, 6 if present is None else 3)
    torch.testing.assert_close(sums, sums_ref, **_tol(dtype))
    torch.testing.assert_close(slopes, slopes_ref, **_tol(dtype))
    sums_only, none = ops.region_dense(probs, weight, pieces, classes, False)
    assert none is None
    torch.testing.assert_close(sums_only, sums, atol=0, rtol=0)


def _tied_probs(shape, seed):
    """Values from a 4-element set: most 3x3 windows hold several equal minima."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    return levels[torch.randint(0, 4, shape, generator=gen)]


# one pixel, one row, one column, 2x2, odd sizes, and 100 x 600 (several bands of rows per plane)
SHAPES = [(1, 1, 1, 1), (1, 2, 1, 7), (2, 3, 5, 1), (1, 1, 2, 2), (2, 3, 13, 17), (1, 2, 100, 600)]


def _bf1_inputs(shape, ties, dtype, seed=2):
    """Probabilities, a random dilated-boundary mask, sparse positions and output gradients."""
    gen = torch.Generator().manual_seed(seed)
    p = _tied_probs(shape, 3) if ties else torch.rand(shape, generator=gen, dtype=torch.float64)
    mask = torch.rand(shape, generator=gen) < 0.3
    picks = torch.nonzero(torch.rand(shape, generator=gen) < 0.05)
    picks = torch.cat([picks, picks[:3], torch.zeros(1, 4, dtype=torch.long)])  # repeats add up
    grads = [torch.randn(shape[1], generator=gen, dtype=dtype),
             torch.randn(shape[1], generator=gen, dtype=dtype),
             torch.randn(picks.shape[0], generator=gen, dtype=dtype)]
    return p.to(dtype), mask, tuple(picks.t().contiguous()), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bf1_terms_match_torch_path(monkeypatch, shape, ties, dtype):
    """_FusedBoundaryTerms (C++) = _BoundaryMatch(_SoftBoundary(p), ...) (torch), values and
    gradient, for several radii of the window maxima (dense and direct window argmax)."""
    p, mask, positions, grads = _bf1_inputs(shape, ties, dtype)
    curves = [curve_pieces(cp) for cp in load_params("voc_bf1").control_points[0]]
    for radius in (0, 1, 3):
        def fused(radius=radius):
            leaf = p.clone().requires_grad_()
            out = boundary._FusedBoundaryTerms.apply(leaf, curves, mask, positions, radius)
            torch.autograd.backward(out, grads)
            return [t.detach() for t in out] + [leaf.grad]

        def composed(radius=radius, dtype=dtype):
            leaf = p.to(dtype, copy=True).requires_grad_()
            soft = boundary._SoftBoundary.apply(leaf, curves)
            index = ops.window_argmax(soft, *positions, radius)
            out = boundary._BoundaryMatch.apply(soft, mask, index)
            torch.autograd.backward(out, grads)
            return [t.detach() for t in out] + [leaf.grad]

        got = fused()
        monkeypatch.setattr(kernels, "ENABLED", False)
        expected = composed()
        # the sums against float64 (the kernel adds in float64, torch's float32 bmm is ~1e-4 off)
        expected[:2] = [t.to(dtype) for t in composed(dtype=torch.float64)[:2]]
        monkeypatch.setattr(kernels, "ENABLED", True)
        for name, a, b in zip(["n_fg", "match_fg", "picked", "grad"], got, expected):
            # equal routing on ties: a wrong window pick moves a whole gradient term (of the size
            # of the largest gradients), far above the round-off of summing terms in another order
            tol = _tol(dtype)
            tol["atol"] *= max(1.0, b.abs().max().item())
            torch.testing.assert_close(a, b, **tol, msg=f"{name}, radius {radius}")


def test_bf1_terms_retained_graph_and_unused_outputs():
    p, mask, positions, _ = _bf1_inputs((2, 3, 20, 30), False, torch.float64)
    curves = [curve_pieces(cp) for cp in load_params("voc_bf1").control_points[0]]

    def terms():
        leaf = p.clone().requires_grad_()
        return leaf, boundary._FusedBoundaryTerms.apply(leaf, curves, mask, positions, 2)

    leaf, (n_fg, match_fg, picked) = terms()
    total = n_fg.sum() + 2 * match_fg.sum() + picked.sum()
    total.backward(retain_graph=True)
    first = leaf.grad.clone()
    leaf.grad = None
    total.backward()  # the partials are recomputed by every backward
    torch.testing.assert_close(leaf.grad, first, atol=0, rtol=0)
    # outputs without a gradient (None in backward) count as zeros
    leaf, (n_fg, _, _) = terms()
    n_fg.sum().backward()
    only_n = leaf.grad
    leaf, (n_fg, match_fg, picked) = terms()
    (n_fg.sum() + 0 * match_fg.sum() + 0 * picked.sum()).backward()
    torch.testing.assert_close(leaf.grad, only_n, atol=0, rtol=0)


@pytest.mark.parametrize("radius", [0, 1, 2, 5, 40])
def test_row_window_max_matches_torch_path(monkeypatch, radius):
    values = _tied_probs((2, 3, 7, 33), 4) + torch.rand(2, 3, 7, 33, dtype=torch.float64) * 0.1
    got, expected = _both(monkeypatch, lambda: ops.row_window_max(values, radius))
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_losses_do_not_depend_on_the_thread_count(preset):
    """Fixed blocks and ordered partial sums: 1 and 2 threads give bit-identical results."""
    labels = blob_labels(n=2, h=40, w=300, cell=7)
    logits = random_logits(labels, dtype=torch.float32)
    loss = SurrogateLoss(load_params(preset), C, tolerance=2)

    def run():
        leaf = logits.clone().requires_grad_()
        value = loss(leaf, labels)
        value.backward()
        return value.detach(), leaf.grad

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, two, atol=0, rtol=0)


def test_cpu_losses_run_on_the_kernels(monkeypatch):
    """With the extension loaded, no surrogate touches the pure-torch curve evaluation on CPU."""
    def forbidden(*args, **kwargs):
        raise AssertionError("pure-torch curve evaluation used on CPU with kernels enabled")

    monkeypatch.setattr(bezier, "evaluate", forbidden)
    monkeypatch.setattr(boundary, "_erode", forbidden)
    labels = blob_labels(n=2, h=12, w=15)
    for preset in sorted(list_presets()):
        leaf = random_logits(labels).requires_grad_()
        SurrogateLoss(load_params(preset), C, tolerance=2)(leaf, labels).backward()
        assert torch.isfinite(leaf.grad).all()


def test_kernels_reject_bad_input():
    lib = torch.ops.segloss_d2
    coeffs = kernels.flat_coefficients(curve_pieces([0.5, 0.5]))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        lib.bezier(torch.zeros(4, dtype=torch.int64), coeffs, True)
    with pytest.raises(RuntimeError, match="contiguous"):
        lib.bezier(torch.zeros(4, 4).t(), coeffs, True)
    with pytest.raises(RuntimeError, match="expected 11 curve coefficients, got 12"):
        lib.bezier(torch.zeros(4), coeffs + [0.0], True)
    with pytest.raises(RuntimeError, match="outside"):
        lib.region_dense(torch.zeros(1, 2, 3), torch.tensor([2]), None, coeffs, True)
    with pytest.raises(RuntimeError, match="4 curves"):
        lib.soft_boundary(torch.zeros(1, 1, 2, 2), coeffs * 3, [1, 1, 1])
    p = torch.zeros(1, 1, 2, 2)
    at = [torch.tensor([0]), torch.tensor([0]), torch.tensor([2]), torch.tensor([0])]
    with pytest.raises(RuntimeError, match=r"position 0 \(0, 0, 2, 0\) outside"):
        lib.window_argmax(p, *at, 1)
    with pytest.raises(RuntimeError, match="one length"):
        lib.window_argmax(p, *at[:3], torch.tensor([0, 1]), 1)
    with pytest.raises(RuntimeError, match="mask must be a contiguous bool"):
        lib.soft_boundary(p, coeffs * 4, [1, 1, 1, 1], torch.zeros(1, 1, 2, 2))
    ones, mask = torch.ones(1), torch.ones(1, 1, 2, 2, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="must be sorted and within p, got 1 at 1"):
        lib.soft_boundary_backward_bf1(p, coeffs * 4, [1, 1, 1, 1], mask, ones, ones,
                                       torch.tensor([2, 1]), torch.ones(2))
    with pytest.raises(RuntimeError, match="mask must be a contiguous bool"):
        lib.soft_boundary_backward_bf1(p, coeffs * 4, [1, 1, 1, 1], mask[..., :1], ones, ones,
                                       torch.tensor([0]), ones)
    with pytest.raises(RuntimeError, match="4 curves"):
        lib.soft_boundary_backward_bf1(p, coeffs * 3, [1, 1, 1], mask, ones, ones,
                                       torch.tensor([0]), ones)


def test_missing_extension_warns_once_and_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_LOAD_ERROR", ImportError("no _C here"))
    monkeypatch.setattr(kernels, "ENABLED", False)
    monkeypatch.setattr(kernels, "_warned", False)
    x = torch.zeros(3)
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        assert not kernels.use_kernels(x)
        assert not kernels.use_kernels(x)
    warnings = [r for r in caplog.records if "segloss_d2._C is not available" in r.message]
    assert len(warnings) == 1 and "no _C here" in warnings[0].message
    # other devices and dtypes never use the kernels, and never warn
    assert not kernels.use_kernels(torch.zeros(3, device="meta"))
    monkeypatch.setattr(kernels, "ENABLED", True)
    assert not kernels.use_kernels(torch.zeros(3, dtype=torch.float16))
    assert not kernels.use_kernels(torch.zeros(3, device="meta"))
    assert kernels.use_kernels(x, torch.zeros(2, dtype=torch.float64))


def test_extension_reads_the_piece_layout_python_writes():
    """The coefficient layout is declared once per side and the two must agree."""
    import segloss_d2._C as ext

    from segloss_d2.surrogate.bezier import Piece

    assert tuple(ext.PIECE_COEFFICIENTS.split(",")) == kernels.COEFFICIENTS == Piece._fields
    cp = _random_curve(3, 5)
    pieces = curve_pieces(cp)
    assert all(isinstance(piece, Piece) for piece in pieces)
    flat = kernels.flat_coefficients(pieces)
    assert len(flat) == 3 * len(kernels.COEFFICIENTS)
    width = len(kernels.COEFFICIENTS)
    assert flat[width + kernels.COEFFICIENTS.index("lo")] == pieces[1].lo == pieces[0].hi
    assert flat[2 * width + kernels.COEFFICIENTS.index("y_lo")] == pieces[2].y_lo


def test_stale_extension_layout_is_refused():
    assert kernels._check_layout(SimpleNamespace(PIECE_COEFFICIENTS=",".join(
        kernels.COEFFICIENTS))) is None
    error = kernels._check_layout(SimpleNamespace(PIECE_COEFFICIENTS="lo,hi,a"))
    assert isinstance(error, ImportError) and "('lo', 'hi', 'a')" in str(error)
    assert "older sources" in str(kernels._check_layout(SimpleNamespace()))


def test_stale_extension_without_an_op_is_refused(monkeypatch):
    if not kernels.available():
        pytest.skip(f"segloss_d2._C did not load: {kernels.load_error()}")
    monkeypatch.setattr(kernels, "OPS", kernels.OPS + ("no_such_op",))
    error = kernels._check_layout(SimpleNamespace(PIECE_COEFFICIENTS=",".join(
        kernels.COEFFICIENTS)))
    assert isinstance(error, ImportError) and "no op no_such_op" in str(error)


def test_flat_coefficients_rejects_anything_but_pieces():
    pieces = curve_pieces([0.5, 0.5])
    with pytest.raises(TypeError, match=r"bezier.Piece .* got \['tuple'\]"):
        kernels.flat_coefficients([tuple(pieces[0])])
    with pytest.raises(TypeError, match=r"got \[\]"):
        kernels.flat_coefficients([])


# --------------------------------------------------------------------------------------------
# the region surrogates' backward through the softmax (region._SoftmaxRegionSums)

def _loss_value_and_grad(loss, logits, labels):
    x = logits.clone().requires_grad_()
    value = loss(x, labels)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("metrics", [["mIoU"], ["fwIoU"], ["BIoU"], ["mACC"], ["pACC"],
                                     ["mIoU", "BF1"], ["mIoU", "mACC"]])
@pytest.mark.parametrize("labels_kind", ["void", "absent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_region_backward_equals_the_softmax_chain(metrics, labels_kind, dtype,
                                                          monkeypatch):
    """SurrogateLoss hands the logits to the region surrogates: the kernel's backward writes
    dL/dlogits in one pass (the softmax's backward fused in; absent classes, void pixels' zero
    weights, several metrics sharing the logits). It must equal the same kernels' gradient
    through torch's softmax backward, and the fused kernel must have run."""
    presets = {load_params(p).metrics[0]: p for p in list_presets()}
    params = [load_params(presets[m]) for m in metrics]
    loss = SurrogateLoss(SurrogateParams(
        metrics=metrics, weights=[1.0 + i for i in range(len(metrics))],
        num_pieces=[p.num_pieces[0] for p in params], thetas=[None] * len(metrics),
        control_points=[p.control_points[0] for p in params]), C, tolerance=2)
    labels = (blob_labels(n=2, h=17, w=23, cell=4) if labels_kind == "void"
              else blob_labels(n=2, h=17, w=23, c=3, cell=4, ignore=False))
    logits = random_logits(labels, dtype=dtype)

    calls = []
    real = ops.region_backward
    monkeypatch.setattr(ops, "region_backward",
                        lambda *args, **kw: calls.append(kw["softmax"]) or real(*args, **kw))
    fused_value, fused_grad = _loss_value_and_grad(loss, logits, labels)
    assert calls == [True] * sum(m != "BF1" for m in metrics)

    monkeypatch.setattr(ops, "softmax_region_backward", lambda probs: False)
    value, grad = _loss_value_and_grad(loss, logits, labels)
    assert len(calls) == sum(m != "BF1" for m in metrics)  # not called again
    torch.testing.assert_close(fused_value, value, rtol=0, atol=0)  # the same forward
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(fused_grad, grad, rtol=tol, atol=tol * grad.abs().max().item())


def test_softmax_region_backward_without_softmax_is_dl_dp():
    """``region_backward(..., softmax=False)`` is the gradient of the region sums with respect to
    the probabilities (the torch formula of region._RegionSums)."""
    labels = blob_labels(n=2, h=9, w=11, cell=3)
    probs = torch.softmax(random_logits(labels, dtype=torch.float64), 1).reshape(2, C, -1)
    valid = labels.reshape(2, -1) < C
    safe = torch.where(valid, labels.reshape(2, -1), 0)
    weight = valid.double()
    cps = load_params("voc_miou").control_points[0]
    and_pieces, or_pieces = curve_pieces(cps[0]), curve_pieces(cps[1])
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(C, generator=gen, dtype=torch.float64) for _ in range(3)]
    got = ops.region_backward(probs, safe, weight, grads, and_pieces, or_pieces, softmax=False)

    p = probs.clone().requires_grad_()
    g_or, g_and = bezier_curve(p, cps[1]), bezier_curve(p, cps[0])
    one_hot = torch.nn.functional.one_hot(safe, C).permute(0, 2, 1).double()
    w = weight.unsqueeze(1)
    sums = [(w * g_or).sum((0, 2)), (w * g_and * one_hot).sum((0, 2)),
            (w * g_or * one_hot).sum((0, 2))]
    expected, = torch.autograd.grad(sum((s * g).sum() for s, g in zip(sums, grads)), p)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_region_backward_refuses_labels_out_of_range():
    cps = load_params("voc_miou").control_points[0]
    probs = torch.softmax(torch.randn(1, 3, 10), 1)
    labels = torch.tensor([[0, 1, 2, 3, 0, 0, 0, 0, 0, 0]])
    grads = [torch.zeros(3)] * 3
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 3\)"):
        ops.region_backward(probs, labels, None, grads, curve_pieces(cps[0]),
                            curve_pieces(cps[1]), softmax=True)
