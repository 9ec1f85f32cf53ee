import io

import pytest
import torch
from torch import nn

from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import (
    SurrogateParams,
    identity_params,
    list_presets,
    load_params,
)

from ._reference import surrogate as reference_surrogate

C = 6


def blob_labels(n=2, h=30, w=34, c=C, seed=0, ignore=True, cell=6):
    """Piecewise-constant labels (upsampled random cells) with void bands, all classes present."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, c, (n, -(-h // cell), -(-w // cell)), generator=gen)
    cells.view(-1)[:c] = torch.arange(c)
    labels = cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :h, :w].contiguous()
    if ignore:
        labels[0, h // 3 : h // 3 + 2, :] = 255
        labels[-1, :, 3] = 255
    return labels


def random_logits(labels, scale=2.0, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n, h, w = labels.shape
    return (torch.randn(n, C, h, w, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _value_and_grad(fn, logits):
    x = logits.clone().requires_grad_()
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("preset", sorted(list_presets()))
@pytest.mark.parametrize("drop_bg", [False, True])
def test_matches_reference_formulas_value_and_gradient(preset, drop_bg):
    params = load_params(preset)
    metric, cps = params.metrics[0], params.control_points[0]
    labels = blob_labels()
    loss = SurrogateLoss(params, C, drop_background=drop_bg)

    def ref(x):
        return 1 - reference_surrogate(metric, x, labels, cps, tol=5, drop_bg=drop_bg)

    # float64: identical up to summation order
    logits = random_logits(labels, dtype=torch.float64)
    v, g = _value_and_grad(lambda x: loss(x, labels), logits)
    rv, rg = _value_and_grad(ref, logits)
    torch.testing.assert_close(v, rv, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g, rg, atol=1e-12, rtol=1e-8)
    # float32 against the float64 reference: float32 round-off
    v32, g32 = _value_and_grad(lambda x: loss(x, labels), logits.float())
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), rv, atol=2e-6, rtol=0)
    torch.testing.assert_close(g32.double(), rg, atol=2e-6 * rg.abs().max().item(), rtol=1e-4)


def test_gradcheck_float64_all_metrics_and_sum():
    labels = blob_labels(n=1, h=12, w=13, cell=4)
    logits = random_logits(labels, dtype=torch.float64).requires_grad_()
    for metrics in (["mIoU", "fwIoU", "mACC", "pACC"], ["BIoU", "BF1"]):
        params = SurrogateParams(
            metrics=metrics, weights=[1.0 + i for i in range(len(metrics))],
            num_pieces=[load_params(_preset(m)).num_pieces[0] for m in metrics],
            thetas=[None] * len(metrics),
            control_points=[load_params(_preset(m)).control_points[0] for m in metrics])
        loss = SurrogateLoss(params, C, tolerance=2)
        assert torch.autograd.gradcheck(lambda x, lo=loss: lo(x, labels), (logits,), fast_mode=True)


def _preset(metric):
    return {"mIoU": "voc_miou", "fwIoU": "voc_fwiou", "BIoU": "voc_biou", "BF1": "voc_bf1",
            "mACC": "voc_macc", "pACC": "voc_gacc"}[metric]


@pytest.mark.parametrize(
    "logits, labels, error, match",
    [
        (torch.randn(2, C, 8, 8), torch.zeros(2, 8, 8, dtype=torch.int32), TypeError, "int64"),
        (torch.zeros(2, C, 8, 8, dtype=torch.long), torch.zeros(2, 8, 8, dtype=torch.long),
         TypeError, "floating point"),
        (torch.randn(C, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long), ValueError,
         r"\(N, C, H, W\)"),
        (torch.randn(2, C, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long), ValueError,
         r"\(N, H, W\)"),
        (torch.randn(2, C + 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long), ValueError,
         "7 channels but num_classes is 6"),
        (torch.randn(2, C, 8, 8), torch.zeros(2, 4, 4, dtype=torch.long), ValueError,
         "resize the logits"),
        (torch.full((2, C, 8, 8), float("nan")), torch.zeros(2, 8, 8, dtype=torch.long),
         ValueError, "NaN"),
        (torch.full((2, C, 8, 8), float("inf")), torch.zeros(2, 8, 8, dtype=torch.long),
         ValueError, "inf"),
        (torch.randn(2, C, 8, 8), torch.full((2, 8, 8), C, dtype=torch.long), ValueError,
         r"values \[6\] outside \[0, 6\)"),
        (torch.randn(2, C, 8, 8), torch.full((2, 8, 8), -1, dtype=torch.long), ValueError,
         "not the ignore value 255"),
    ],
)
def test_bad_inputs_raise(logits, labels, error, match):
    loss = SurrogateLoss(load_params("voc_miou"), C)
    with pytest.raises(error, match=match):
        loss(logits, labels)


def test_bad_construction_raises():
    params = load_params("voc_miou")
    with pytest.raises(TypeError, match="SurrogateParams"):
        SurrogateLoss({"metrics": ["mIoU"]}, C)
    with pytest.raises(ValueError, match="num_classes"):
        SurrogateLoss(params, 0)
    with pytest.raises(ValueError, match="tolerance"):
        SurrogateLoss(params, C, tolerance=-1)
    with pytest.raises(ValueError, match="collides"):
        SurrogateLoss(params, C, ignore_value=3)
    params.num_pieces[0] = 1  # hand-edited in memory: control points no longer fit
    with pytest.raises(ValueError, match=r"SurrogateLoss params: control_points\[0\]\[0\] "
                                         r"\(mIoU\): a curve with 1 piece\(s\) needs 2 numbers"):
        SurrogateLoss(params, C)
    params = load_params("voc_miou")
    params.metrics[0] = "Dice"
    with pytest.raises(ValueError, match="unknown metric 'Dice'"):
        SurrogateLoss(params, C)


def test_control_points_are_configuration_not_state():
    params = load_params("voc_bf1")
    loss = SurrogateLoss(params, C).to(torch.float16)
    assert loss.state_dict() == {} and list(loss.buffers()) == []
    # not rounded by a dtype cast, and a copy: later edits of params do not leak in
    assert loss.control_points == params.control_points
    params.control_points[0][0][0] = 0.5
    assert loss.control_points[0][0][0] != 0.5
    labels = blob_labels()
    logits = random_logits(labels).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits, labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)


class _Head(nn.Module):
    """A stand-in for a semantic-segmentation head that owns its loss, like the detectron2 heads."""

    def __init__(self, params):
        super().__init__()
        self.predictor = nn.Conv2d(3, C, 1)
        self.loss_fn = SurrogateLoss(params, C)

    def forward(self, images, labels):
        return self.loss_fn(self.predictor(images), labels)


def test_checkpoint_does_not_carry_or_restore_the_curves():
    """Weights saved with preset A, loaded into a head configured with B: B's curves are used."""
    searched, naive = load_params("voc_miou"), identity_params(["mIoU"])
    assert searched.control_points != naive.control_points
    torch.manual_seed(0)
    head_a = _Head(searched)
    buffer = io.BytesIO()
    torch.save(head_a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    assert sorted(state) == ["predictor.bias", "predictor.weight"]

    head_b = _Head(naive)
    head_b.load_state_dict(state, strict=True)
    assert head_b.loss_fn.control_points == naive.control_points
    labels = blob_labels()
    images = torch.randn(labels.shape[0], 3, *labels.shape[1:], generator=torch.Generator()
                         .manual_seed(2))
    with torch.no_grad():
        got = head_b(images, labels)
        logits = head_a.predictor(images)  # the same weights in both heads
        expected = SurrogateLoss(naive, C)(logits, labels)
        stale = SurrogateLoss(searched, C)(logits, labels)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert not torch.allclose(got, stale)


def test_public_api():
    import segloss_d2

    loss_fn = segloss_d2.SurrogateLoss(segloss_d2.load_params("voc_miou"), num_classes=21,
                                       ignore_value=255, tolerance=5, drop_background=False,
                                       loss_weight=1.0)
    labels = torch.randint(0, 21, (1, 8, 8))
    assert 0 < loss_fn(torch.randn(1, 21, 8, 8), labels).item() < 1


@pytest.mark.parametrize("constraints", ["all", "no_truth_table", "no_monotonic", "none"])
def test_every_curve_constraint_gives_a_valid_loss(constraints):
    """Random curves of every constraint setting: finite value and gradient, equal to the
    reference formulas (whose curves take the free end heights, too)."""
    from segloss_d2.surrogate.params import theta_dim

    c = 5
    gen = torch.Generator().manual_seed(7)
    metrics = ["mIoU", "BF1", "mACC"]
    thetas = [torch.rand(theta_dim(m, None, constraints), generator=gen).tolist() for m in metrics]
    params = SurrogateParams.from_theta(metrics, thetas, constraints=constraints)
    loss = SurrogateLoss(params, c, tolerance=2)
    labels = blob_labels(n=2, h=16, w=16, c=c, cell=4)
    logits = torch.randn(2, c, 16, 16, generator=gen, dtype=torch.float64) * 2

    def ref(x):
        return sum(1 - reference_surrogate(m, x, labels, cps, tol=2)
                   for m, cps in zip(metrics, params.control_points))

    v, g = _value_and_grad(lambda x: loss(x, labels), logits)
    rv, rg = _value_and_grad(ref, logits)
    assert torch.isfinite(v) and torch.isfinite(g).all() and g.abs().max() > 0
    torch.testing.assert_close(v, rv, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g, rg, atol=1e-12, rtol=1e-8)
    v32, g32 = _value_and_grad(lambda x: loss(x, labels), logits.float())
    assert torch.isfinite(v32) and torch.isfinite(g32).all()
    torch.testing.assert_close(v32.double(), rv, atol=1e-4, rtol=0)
    # the setting matters: the same numbers read under the paper's constraints give another loss
    if constraints == "no_monotonic":
        other = SurrogateParams.from_theta(metrics, thetas, constraints="all")
        assert not torch.allclose(SurrogateLoss(other, c, tolerance=2)(logits, labels), v)
