import pytest
import torch

from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import (
    SurrogateParams,
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
    for metrics in (["mIoU", "FWIoU", "mAcc", "gAcc"], ["BIoU", "BF1"]):
        params = SurrogateParams(
            metrics=metrics, weights=[1.0 + i for i in range(len(metrics))],
            num_pieces=[load_params(_preset(m)).num_pieces[0] for m in metrics],
            thetas=[None] * len(metrics),
            control_points=[load_params(_preset(m)).control_points[0] for m in metrics])
        loss = SurrogateLoss(params, C, tolerance=2)
        assert torch.autograd.gradcheck(lambda x, lo=loss: lo(x, labels), (logits,), fast_mode=True)


def _preset(metric):
    return {"mIoU": "voc_miou", "FWIoU": "voc_fwiou", "BIoU": "voc_biou", "BF1": "voc_bf1",
            "mAcc": "voc_macc", "gAcc": "voc_gacc"}[metric]
