"""SurrogateLoss on unusual inputs against the reference formulas (``_reference.surrogate``).

Memory layouts (channels-last, transposed and strided views, a channel slice, non-contiguous
labels), batch size 1, a single class, two classes, tiny and odd image sizes (pooling windows
larger than the image), and saturated softmax inputs whose probabilities are subnormal or zero.
"""
import pytest
import torch
import torch.nn.functional as F

from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import list_presets, load_params

from ._reference import surrogate as reference_surrogate
from .test_loss import C, blob_labels, random_logits

PRESETS = sorted(list_presets())
LAYOUTS = ["channels-last", "transposed", "strided", "channel-slice", "labels-transposed"]


def _as_layout(logits, labels, layout):
    """(leaf, logits view in ``layout``, labels, gradient of the leaf -> gradient of the view)."""
    if layout == "channels-last":
        leaf = logits.contiguous(memory_format=torch.channels_last).requires_grad_()
        return leaf, leaf, labels, lambda g: g
    if layout == "transposed":  # (N, C, W, H) storage seen as (N, C, H, W)
        leaf = logits.transpose(2, 3).contiguous().requires_grad_()
        return leaf, leaf.transpose(2, 3), labels, lambda g: g.transpose(2, 3)
    if layout == "strided":  # every other pixel of a larger tensor
        n, c, h, w = logits.shape
        leaf = torch.zeros(n, c, 2 * h, 2 * w, dtype=logits.dtype)
        leaf[..., ::2, ::2] = logits
        leaf.requires_grad_()
        return leaf, leaf[..., ::2, ::2], labels, lambda g: g[..., ::2, ::2]
    if layout == "channel-slice":  # C of C + 2 channels
        leaf = torch.cat([logits[:, :1], logits, logits[:, -1:]], dim=1).requires_grad_()
        return leaf, leaf[:, 1:-1], labels, lambda g: g[:, 1:-1]
    assert layout == "labels-transposed"
    leaf = logits.clone().requires_grad_()
    return leaf, leaf, labels.transpose(1, 2).contiguous().transpose(1, 2), lambda g: g


def loss_value_and_grad(loss, logits, labels, layout=None):
    if layout is None:
        leaf = view = logits.detach().clone().requires_grad_()
        lab, back = labels, lambda g: g
    else:
        leaf, view, lab, back = _as_layout(logits, labels, layout)
        tensor = lab if layout == "labels-transposed" else view
        assert not tensor.is_contiguous(), layout
    value = loss(view, lab)
    value.backward()
    return value.detach(), back(leaf.grad)


def reference_value_and_grad(metric, cps, logits, labels, tol, drop_bg=False):
    leaf = logits.detach().double().clone().requires_grad_()
    value = 1 - reference_surrogate(metric, leaf, labels, cps, tol=tol, drop_bg=drop_bg)
    if torch.isnan(value):  # an empty mean in the reference (e.g. BF1 without GT boundary)
        return value.detach(), None
    value.backward()
    return value.detach(), leaf.grad


def assert_matches_reference(preset, logits, labels, layout=None, tol=5, num_classes=C,
                             grad_atol=1e-12):
    """float64 and float32 SurrogateLoss against the float64 reference on the same logits.

    Where the reference's mean is empty (NaN), the loss must skip the term: 0, zero gradient.
    """
    params = load_params(preset)
    metric, cps = params.metrics[0], params.control_points[0]
    loss = SurrogateLoss(params, num_classes, tolerance=tol)
    for dtype in (torch.float64, torch.float32):
        x = logits.to(dtype)
        value, grad = loss_value_and_grad(loss, x, labels, layout)
        assert value.dtype == dtype
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        expected, expected_grad = reference_value_and_grad(metric, cps, x, labels, tol)
        msg = f"{preset} {layout} {dtype} {tuple(labels.shape)}"
        if expected_grad is None:
            assert value.item() == 0.0 and grad.abs().max() == 0, msg
            continue
        scale = expected_grad.abs().max().item()
        if dtype == torch.float64:
            torch.testing.assert_close(value, expected, atol=1e-12, rtol=0, msg=msg)
            torch.testing.assert_close(grad, expected_grad, atol=grad_atol * scale, rtol=1e-8,
                                       msg=msg)
        else:
            torch.testing.assert_close(value.double(), expected, atol=2e-6, rtol=0, msg=msg)
            torch.testing.assert_close(grad.double(), expected_grad, atol=2e-6 * scale,
                                       rtol=1e-4, msg=msg)


@pytest.mark.parametrize("layout, preset", [(lay, pre) for lay in LAYOUTS for pre in PRESETS])
def test_memory_layouts(preset, layout):
    # regression: BF1 backward with permuted labels once failed on a non-contiguous view
    labels = blob_labels(n=2, h=9, w=11, cell=3)
    assert_matches_reference(preset, random_logits(labels, dtype=torch.float64), labels, layout,
                             tol=2)


def _random_labels(shape, c, seed, void=0.1):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, shape, generator=gen)
    labels[torch.rand(shape, generator=gen) < void] = 255
    return labels


LABEL_CASES = {
    "batch-1": lambda: blob_labels(n=1, h=9, w=11, cell=3),
    "one-class-and-void": lambda: torch.where(blob_labels(n=2, h=9, w=11, cell=3) == 255, 255, 2),
    "one-class": lambda: torch.full((2, 6, 7), 4, dtype=torch.long),  # no BF1 boundary
    "1x1": lambda: torch.tensor([[[3]], [[0]]]),
    "3x5": lambda: _random_labels((2, 3, 5), C, seed=1),
    "7x1": lambda: _random_labels((2, 7, 1), C, seed=2),
    "1x7": lambda: _random_labels((1, 1, 7), C, seed=3),
    "two-classes": lambda: blob_labels(n=2, h=9, w=11, c=2, cell=3),
    "two-classes-7x1": lambda: _random_labels((2, 7, 1), 2, seed=4),
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
@pytest.mark.parametrize("preset", PRESETS)
def test_small_odd_and_degenerate_shapes(preset, case):
    labels = LABEL_CASES[case]()
    c = 2 if case.startswith("two-classes") else C
    n, h, w = labels.shape
    gen = torch.Generator().manual_seed(7)
    logits = 2 * torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    assert_matches_reference(preset, logits, labels, tol=5, num_classes=c)


def saturated_logits(labels, dtype, seed=0):
    """Saturated logits: hot class at 0, the others at ``-gap`` with gaps around the bottom of
    ``dtype``'s exponent range (exp(-gap) normal, subnormal or zero), except a band of moderate
    logits."""
    gen = torch.Generator().manual_seed(seed)
    n, h, w = labels.shape
    pred = torch.where(labels < C, labels, 0)
    pred[:, ::4] = torch.roll(pred[:, ::4], 1, dims=-1)
    low = -torch.log(torch.tensor(torch.finfo(dtype).tiny, dtype=torch.float64)).item()
    gap = low + 60 * (torch.rand(n, C, h, w, generator=gen, dtype=torch.float64) - 0.25)
    logits = -gap * (1 - F.one_hot(pred, C).permute(0, 3, 1, 2).double())
    # an unsaturated band, so the gradient has a scale to compare with (where the softmax
    # saturates, the gradient is at round-off level of 1 - p and B~ is round-off, ill-conditioned)
    logits[:, :, : h // 3] = 2 * torch.randn(n, C, h // 3, w, generator=gen, dtype=torch.float64)
    return logits.to(dtype)


@pytest.mark.parametrize("preset", PRESETS)
def test_subnormal_and_zero_probabilities(preset):
    labels = blob_labels(n=2, h=12, w=13, cell=3)
    for dtype in (torch.float32, torch.float64):
        logits = saturated_logits(labels, dtype)
        probs = torch.softmax(logits, dim=1)
        tiny = torch.finfo(dtype).tiny
        assert ((probs > 0) & (probs < tiny)).any() and (probs == 0).any()  # precondition
        params = load_params(preset)
        loss = SurrogateLoss(params, C)
        value, grad = loss_value_and_grad(loss, logits, labels)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        assert grad.abs().max() > 0
    # the float64 logits of both: equal to the reference
    assert_matches_reference(preset, saturated_logits(labels, torch.float64), labels)
    assert_matches_reference(preset, saturated_logits(labels, torch.float32).double(), labels)
