import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segloss_d2.losses import (
    LOSSES,
    HardPixelMiningLoss,
    LovaszSoftmaxLoss,
    WeightedCrossEntropyLoss,
)

C = 5


def _inputs(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C - 1, (2, 9, 11), generator=gen)  # class 4 absent
    labels[0, :2] = 255
    logits = torch.randn(2, C, 9, 11, generator=gen, dtype=dtype)
    return logits, labels


def test_registry_names():
    assert set(LOSSES) == {"cross_entropy", "wce", "dice", "lovasz", "hard_pixel_mining"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_ignore_and_weight(name):
    logits, labels = _inputs()
    x = logits.clone().requires_grad_()
    loss = LOSSES[name](C, loss_weight=2.0)
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (x,), fast_mode=True)
    loss(x, labels).backward()
    ignored = (labels == 255).unsqueeze(1).expand_as(x)
    assert x.grad[ignored].abs().max() == 0
    half = LOSSES[name](C, loss_weight=1.0)(logits, labels)
    assert loss(logits, labels).item() == pytest.approx(2 * half.item())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_ignored_is_zero_and_bad_input_raises(name):
    loss = LOSSES[name](C)
    x = torch.randn(1, C, 4, 4, requires_grad=True)
    value = loss(x, torch.full((1, 4, 4), 255, dtype=torch.long))
    assert value.item() == 0.0
    value.backward()
    with pytest.raises(ValueError, match="outside"):
        loss(x, torch.full((1, 4, 4), 7, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        loss(torch.randn(1, C + 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def _pixels(logits, labels):
    p = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, C).numpy()
    lab = labels.reshape(-1).numpy()
    keep = lab != 255
    return p[keep], lab[keep]


def test_cross_entropy_and_wce_by_hand():
    logits, labels = _inputs()
    p, lab = _pixels(logits, labels)
    nll = -np.log(p[np.arange(len(lab)), lab])
    assert LOSSES["cross_entropy"](C)(logits, labels).item() == pytest.approx(nll.mean())
    per_class = [nll[lab == c].mean() for c in range(C) if (lab == c).any()]
    assert WeightedCrossEntropyLoss(C)(logits, labels).item() == pytest.approx(np.mean(per_class))
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    fixed = WeightedCrossEntropyLoss(C, class_weights=w)(logits, labels).item()
    assert fixed == pytest.approx((w[lab] * nll).sum() / w[lab].sum())
    with pytest.raises(ValueError, match="class_weights"):
        WeightedCrossEntropyLoss(C, class_weights=[1.0, 2.0])


def test_dice_by_hand():
    logits, labels = _inputs()
    p, lab = _pixels(logits, labels)
    dice = []
    for c in range(C):
        y = (lab == c).astype(float)
        dice.append((2 * (p[:, c] * y).sum() + 1) / ((p[:, c] ** 2).sum() + y.sum() + 1))
    assert LOSSES["dice"](C)(logits, labels).item() == pytest.approx(1 - np.mean(dice))


def _lovasz_by_enumeration(errors, fg):
    """Lovász extension of the Jaccard loss evaluated via its definition on sorted errors."""
    order = np.argsort(-errors, kind="stable")
    total, prev = 0.0, 0.0
    for k in range(1, len(order) + 1):
        top = np.zeros(len(errors), bool)
        top[order[:k]] = True
        inter = (fg & ~top).sum()
        union = (fg | top).sum()
        jac = 1 - inter / union
        total += errors[order[k - 1]] * (jac - prev)
        prev = jac
    return total


def test_lovasz_matches_definition():
    logits, labels = _inputs(dtype=torch.float64)
    logits, labels = logits[:, :, :4, :5], labels[:, :4, :5].contiguous()
    p, lab = _pixels(logits, labels)
    per_class = []
    for c in range(C):
        fg = lab == c
        if fg.any():
            per_class.append(_lovasz_by_enumeration(np.abs(fg - p[:, c]), fg))
    assert LovaszSoftmaxLoss(C)(logits, labels).item() == pytest.approx(np.mean(per_class))


def test_hard_pixel_mining_top_k():
    logits, labels = _inputs()
    safe = torch.where(labels == 255, -100, labels)
    per_pixel = F.cross_entropy(logits, safe, ignore_index=-100, reduction="none").reshape(-1)
    k = int(0.2 * per_pixel.numel())
    expected = per_pixel.sort(descending=True).values[:k].mean()
    assert HardPixelMiningLoss(C)(logits, labels).item() == pytest.approx(expected.item())
    full = HardPixelMiningLoss(C, top_k_percent_pixels=1.0)(logits, labels)
    assert full.item() == pytest.approx(per_pixel.mean().item())
    with pytest.raises(ValueError, match="top_k_percent_pixels"):
        HardPixelMiningLoss(C, top_k_percent_pixels=0.0)
