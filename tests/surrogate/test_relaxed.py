import numpy as np
import pytest
import torch

from segloss_d2.surrogate.boundary import relaxed_bf1
from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.morphology import check_radius, dilate_bool, effective_radius
from segloss_d2.surrogate.params import identity_params, list_presets, load_params
from segloss_d2.surrogate.region import relaxed_biou

from .test_loss import C, _value_and_grad, blob_labels, random_logits

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
    if metric in ("mIoU", "fwIoU", "BIoU"):
        ious, freqs = [], []
        for k in range(c):
            inter = ((pred == k) & (gt == k) & valid).sum()
            union = (((pred == k) | (gt == k)) & valid).sum()
            ious.append(inter / union)
            freqs.append(((gt == k) & valid).sum())
        ious, freqs = np.array(ious), np.array(freqs)
        if metric == "fwIoU":
            return float((ious * freqs).sum() / freqs.sum())
        return float(ious.mean())
    if metric == "mACC":
        return float(np.mean([((pred == k) & (gt == k)).sum() / (gt == k).sum()
                              for k in range(c)]))
    if metric == "pACC":
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
    from segloss_d2.surrogate.autograd import bezier_curve

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


def _all_metrics_params():
    """One SurrogateParams with all six metrics (their presets' curves), weights 1..6."""
    from segloss_d2.surrogate.params import SurrogateParams

    presets = [load_params(p) for p in sorted(list_presets())]
    return SurrogateParams(
        metrics=[p.metrics[0] for p in presets],
        weights=[float(i + 1) for i in range(len(presets))],
        num_pieces=[p.num_pieces[0] for p in presets], thetas=[None] * len(presets),
        control_points=[p.control_points[0] for p in presets])


@pytest.mark.parametrize("drop_bg", [False, True])
@pytest.mark.parametrize("preset", sorted(list_presets()) + ["all_six"])
def test_everything_ignored_gives_zero_loss_and_zero_gradient(preset, drop_bg):
    """docs/method.md §2.3: a batch without a valid pixel has no metric value; every term is
    skipped, so the loss is exactly 0 with zero gradient, for every metric, on both paths."""
    params = _all_metrics_params() if preset == "all_six" else load_params(preset)
    loss = SurrogateLoss(params, C, drop_background=drop_bg, present_classes_only=drop_bg,
                         loss_weight=0.7)
    labels = torch.full((2, 9, 8), 255, dtype=torch.long)
    for dtype in (torch.float32, torch.float64):
        logits = (3 * torch.randn(2, C, 9, 8, dtype=dtype)).requires_grad_()
        values, _ = loss.surrogates(logits, labels)
        assert all(v is None for v in values.values()), values
        value = loss(logits, labels)
        value.backward()
        assert value.dtype == dtype and value.item() == 0.0
        assert logits.grad is not None and not logits.grad.any()
    # one valid pixel is enough for every metric to be defined again (next to void, the pixel is
    # a ground-truth boundary pixel, docs/method.md §1.3)
    labels[0, 4, 4] = 2
    values, _ = loss.surrogates(torch.randn(2, C, 9, 8), labels)
    assert all(v is not None for v in values.values()), values


def test_biou_without_valid_pixel_in_the_band_is_skipped():
    labels = torch.full((2, 7, 6), 3, dtype=torch.long)  # one class: no boundary, empty band
    loss = SurrogateLoss(load_params("voc_biou"), C)
    logits = torch.randn(2, C, 7, 6, requires_grad=True)
    value = loss(logits, labels)
    value.backward()
    assert value.item() == 0.0 and not logits.grad.any()
    labels[1, :, :2] = 1  # a boundary: the band has valid pixels, BIoU~ is defined
    assert loss.surrogates(logits, labels)[0]["BIoU"] is not None


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


def _window_or(mask, radius):
    """Brute force: OR over the (2r+1)^2 window cut at the border, for (N, H, W) bool."""
    n, h, w = mask.shape
    out = torch.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            block = mask[:, max(0, i - radius): i + radius + 1, max(0, j - radius): j + radius + 1]
            out[:, i, j] = block.flatten(1).any(1)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (3, 5), (9, 11), (16, 16)])
def test_dilate_bool_for_every_radius_up_to_past_the_image(shape):
    # regression: radii 4, 7, 8 (and any radius >= the side) once lost pixels near the border
    gen = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand((3,) + shape, generator=gen) < 0.1
    mask[0, 0, 0] = mask[1, -1, -1] = True
    for radius in list(range(0, max(shape) + 3)) + [31, 10**6]:
        assert torch.equal(dilate_bool(mask, radius), _window_or(mask, radius)), radius


def test_radius_helpers():
    assert effective_radius(5, 16, 16) == 5
    assert effective_radius(15, 16, 16) == 15
    assert effective_radius(10**6, 16, 9) == 15
    assert effective_radius(10**6, 1, 1) == 0
    assert effective_radius(np.int64(3), 16) == 3
    assert check_radius(np.int32(4)) == 4 and type(check_radius(np.int32(4))) is int
    for bad in (2.0, "5", None, True):
        with pytest.raises(TypeError, match=r"tolerance must be an int >= 0 \(pixels\)"):
            check_radius(bad)
    with pytest.raises(ValueError, match="tolerance must be an int >= 0 .*got -1"):
        check_radius(-1)
    with pytest.raises(ValueError, match="radius must be an int >= 0 .*got -2"):
        dilate_bool(torch.zeros(1, 3, 3, dtype=torch.bool), -2)


def test_relaxed_functions_validate_the_tolerance():
    probs = torch.softmax(torch.randn(1, C, 6, 6), 1)
    labels = blob_labels(n=1, h=6, w=6, cell=2)
    bf1, biou = load_params("voc_bf1").control_points[0], load_params("voc_biou").control_points[0]
    with pytest.raises(ValueError, match="tolerance must be an int >= 0 .*got -1"):
        relaxed_bf1(probs, labels, bf1, tolerance=-1)
    with pytest.raises(TypeError, match="tolerance must be an int"):
        relaxed_biou(probs, labels, *biou, tolerance=2.5)


def _corner_labels(n=2, h=9, w=11):
    """Class 1 on the top-left pixel only, class 0 elsewhere: class 1's boundary is that pixel, so
    its dilation reaches the opposite corner at radius max(H, W) - 1 and not before."""
    labels = torch.zeros(n, h, w, dtype=torch.long)
    labels[:, 0, 0] = 1
    labels[1, 4:, 6:] = 2
    return labels


@pytest.mark.parametrize("preset, drop_bg", [("voc_bf1", False), ("voc_bf1", True),
                                             ("voc_biou", True)])
def test_huge_tolerance_equals_the_image_bound(preset, drop_bg):
    """Every tolerance from max(H, W) - 1 on gives the same value and gradient (the window
    operations clamp it there), and max(H, W) - 2 does not: the bound is exact."""
    labels = _corner_labels()
    h, w = labels.shape[-2:]
    bound = max(h, w) - 1
    logits = random_logits(labels, dtype=torch.float64)
    results = {}
    for tol in (bound - 1, bound, bound + 1, 10**6, 10**12):
        loss = SurrogateLoss(load_params(preset), C, tolerance=tol, drop_background=drop_bg)
        results[tol] = _value_and_grad(lambda x, loss=loss: loss(x, labels), logits)
    for tol in (bound + 1, 10**6, 10**12):
        assert torch.equal(results[tol][0], results[bound][0]), tol
        assert torch.equal(results[tol][1], results[bound][1]), tol
    assert not torch.equal(results[bound - 1][0], results[bound][0])
