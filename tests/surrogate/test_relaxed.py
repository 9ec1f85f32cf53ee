import numpy as np
import pytest
import torch

from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import identity_params, list_presets, load_params
from segloss_d2.surrogate.relaxed import dilate_bool

from .test_loss import C, blob_labels, random_logits

TOL = 2


# ---- brute-force numpy metrics on hard label maps (no project code) -------------------------
def _inner_boundary(lab, c):
    """Pixels of class c with an in-image 8-neighbour of another value (void counts as other)."""
    n, h, w = lab.shape
    out = np.zeros(lab.shape, bool)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                if lab[b, i, j] != c:
                    continue
                nb = lab[b, max(0, i - 1) : i + 2, max(0, j - 1) : j + 2]
                out[b, i, j] = bool((nb != c).any())
    return out


def _dilate(mask, r):
    n, h, w = mask.shape
    out = np.zeros_like(mask)
    for b in range(n):
        for i in range(h):
            for j in range(w):
                out[b, i, j] = mask[b, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].any()
    return out


def true_metric(metric, pred, gt, c, tol=TOL, drop_bg=False):
    valid = (gt >= 0) & (gt < c)
    if metric == "BIoU":
        band = np.zeros(gt.shape, bool)
        for k in range(1 if drop_bg else 0, c):
            band |= _dilate(_inner_boundary(gt, k), tol)
        valid = valid & band
    if metric in ("mIoU", "FWIoU", "BIoU"):
        ious, freqs = [], []
        for k in range(c):
            inter = ((pred == k) & (gt == k) & valid).sum()
            union = (((pred == k) | (gt == k)) & valid).sum()
            ious.append(inter / union)
            freqs.append(((gt == k) & valid).sum())
        ious, freqs = np.array(ious), np.array(freqs)
        if metric == "FWIoU":
            return float((ious * freqs).sum() / freqs.sum())
        return float(ious.mean())
    if metric == "mAcc":
        return float(np.mean([((pred == k) & (gt == k)).sum() / (gt == k).sum()
                              for k in range(c)]))
    if metric == "gAcc":
        return float(((pred == gt) & valid).sum() / valid.sum())
    f1s = []
    for k in range(1 if drop_bg else 0, c):
        bp, bg = _inner_boundary(pred, k), _inner_boundary(gt, k)
        if bg.sum() == 0:
            continue
        p = (bp & _dilate(bg, tol)).sum() / max(bp.sum(), 1e-12)
        r = (_dilate(bp, tol) & bg).sum() / bg.sum()
        f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return float(np.mean(f1s))


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_confident_logits_give_true_metric_of_argmax(preset):
    labels = blob_labels(n=2, h=16, w=18, cell=4, seed=3)
    gen = torch.Generator().manual_seed(4)
    pred = labels.clone()
    pred[pred == 255] = 1
    flip = torch.rand(pred.shape, generator=gen) < 0.2
    pred[flip] = torch.randint(0, C, (int(flip.sum()),), generator=gen)
    pred[0, 2:6, 2:9] = 2  # a wrong rectangle, so boundaries move
    logits = 60.0 * torch.nn.functional.one_hot(pred, C).permute(0, 3, 1, 2).float()
    params = load_params(preset)
    metric = params.metrics[0]
    for drop_bg in (False, True):
        values, _ = SurrogateLoss(params, C, tolerance=TOL, drop_background=drop_bg).surrogates(
            logits, labels)
        expected = true_metric(metric, pred.numpy(), labels.numpy(), C, TOL, drop_bg)
        assert values[metric].item() == pytest.approx(expected, abs=1e-5), (metric, drop_bg)


def test_identity_curves_reproduce_soft_iou():
    labels = blob_labels()
    logits = random_logits(labels, dtype=torch.float64)
    p = torch.softmax(logits, 1).numpy()
    lab = labels.numpy()
    ious = []
    for k in range(C):
        y = (lab == k).astype(float)
        m = ((lab >= 0) & (lab < C)).astype(float)
        pk = p[:, k]
        ious.append((pk * y * m).sum() / ((pk + y - pk * y) * m).sum())
    values, _ = SurrogateLoss(identity_params(["mIoU"]), C).surrogates(logits, labels)
    assert values["mIoU"].item() == pytest.approx(float(np.mean(ious)), rel=1e-10)


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_truth_tables_at_binary_inputs(preset):
    """h_AND(p, y) = g(p) y and h_OR = g(p) + y - g(p) y reproduce AND/OR on {0, 1}."""
    from segloss_d2.surrogate.bezier import bezier_curve

    for cp in load_params(preset).control_points[0]:
        g = bezier_curve(torch.tensor([0.0, 1.0, 0.0, 1.0]), cp)
        y = torch.tensor([0.0, 0.0, 1.0, 1.0])
        torch.testing.assert_close(g * y, torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
        torch.testing.assert_close(g + y - g * y, torch.tensor([0.0, 1.0, 1.0, 1.0]), atol=1e-6,
                                   rtol=0)


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_ignored_pixels_get_zero_gradient_except_bf1(preset):
    labels = blob_labels()
    logits = random_logits(labels).requires_grad_()
    SurrogateLoss(load_params(preset), C)(logits, labels).backward()
    ignored = (labels == 255).unsqueeze(1).expand_as(logits)
    assert logits.grad[~ignored].abs().max() > 0
    if preset == "voc_bf1":
        # the reference applies no valid mask to the predicted boundaries (docs/method.md §2.3)
        return
    assert logits.grad[ignored].abs().max() == 0


def test_bf1_without_ground_truth_boundary_is_skipped_not_nan():
    labels = torch.full((2, 12, 12), 3, dtype=torch.long)
    labels[1, :, :5] = 255  # void next to class 3 is a boundary ...
    logits = random_logits(labels).requires_grad_()
    loss = SurrogateLoss(load_params("voc_bf1"), C)
    assert torch.isfinite(loss(logits, labels))
    labels[1] = 3  # ... a single class everywhere has none
    value = loss(logits, labels)
    assert value.item() == 0.0
    value.backward()
    assert logits.grad.abs().max() == 0
    # drop_background: only a background boundary in the batch -> skipped as well
    labels[0, :, :4] = 0
    bg_only = SurrogateLoss(load_params("voc_bf1"), C, drop_background=True)
    with torch.no_grad():
        values, _ = bg_only.surrogates(logits, labels)
        assert values["BF1"] is not None  # class 3 borders class 0
        labels[0] = 0
        labels[1] = 0
        values, _ = bg_only.surrogates(logits, labels)
        assert values["BF1"] is None


def test_absent_classes_and_present_classes_only():
    labels = blob_labels(c=3)  # classes 3..5 absent
    logits = random_logits(labels, dtype=torch.float64)
    params = load_params("voc_miou")
    all_c, _ = SurrogateLoss(params, C).surrogates(logits, labels)
    present, _ = SurrogateLoss(params, C, present_classes_only=True).surrogates(logits, labels)
    assert all_c["mIoU"].item() == pytest.approx(present["mIoU"].item() * 3 / C, rel=1e-12)


def test_everything_ignored_gives_finite_loss():
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    logits = torch.randn(1, C, 8, 8, requires_grad=True)
    for preset in list_presets():
        value = SurrogateLoss(load_params(preset), C)(logits, labels)
        assert torch.isfinite(value)


def test_weighted_sum_of_metrics_is_one_loss():
    labels = blob_labels()
    logits = random_logits(labels)
    miou, bf1 = load_params("voc_miou"), load_params("voc_bf1")
    from segloss_d2.surrogate.params import SurrogateParams

    both = SurrogateParams(metrics=["mIoU", "BF1"], weights=[1.0, 0.5], num_pieces=[2, 1],
                           thetas=[None, None],
                           control_points=[miou.control_points[0], bf1.control_points[0]])
    total = SurrogateLoss(both, C, loss_weight=0.4)(logits, labels)
    single = (SurrogateLoss(miou, C)(logits, labels)
              + 0.5 * SurrogateLoss(bf1, C)(logits, labels))
    assert total.item() == pytest.approx(0.4 * single.item(), rel=1e-6)


@pytest.mark.parametrize("radius", [0, 1, 2, 5])
def test_dilate_bool_equals_max_pool(radius):
    mask = torch.rand(2, 3, 17, 23) > 0.93
    expected = torch.nn.functional.max_pool2d(mask.float(), 2 * radius + 1, 1, radius) > 0
    assert torch.equal(dilate_bool(mask, radius), expected)
