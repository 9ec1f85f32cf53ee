"""Straightforward re-implementation of the reference formulas (docs/method.md §3.1, §2.3),
for tests only.

Deliberately naive and independent of segloss_d2: one-hot products, one pass per Bézier piece on a
clamped copy of x selected with torch.where, the (a - sqrt(.)) / (2a - 1) root, explicit 1.0
padding for the erosion and full 2-D max pooling for dilations.

One deliberate difference from the reference code: where a metric counts no pixel of the batch
(mIoU/FWIoU/mAcc/gAcc without a valid pixel, BIoU without a valid pixel in the trimap, BF1 without
a ground-truth boundary) the value is NaN, "undefined", as segloss_d2 defines it (docs/method.md
§2.3; the reference code gives 0 there, i.e. a loss of w with zero gradient).
"""
import torch
import torch.nn.functional as F

EPS = 1e-8


def bezier(x, cp):
    """g(x) for flat control points cp = [x1, y1, ..., x_{2n-1}, y_{2n-1}] (Python floats), or
    ``[x1, y1, ..., x_{2n-1}, y_{2n-1}, y_0, y_{2n}]`` (length 4n: free end heights)."""
    cp = list(cp)
    if len(cp) % 4 == 0:
        inner = cp[:-2]
        xs = [0.0] + inner[0::2] + [1.0]
        ys = [cp[-2]] + inner[1::2] + [cp[-1]]
    else:
        xs = [0.0] + cp[0::2] + [1.0]
        ys = [0.0] + cp[1::2] + [1.0]
    out = None
    for k in range((len(xs) - 1) // 2):
        x0, x1, x2 = xs[2 * k : 2 * k + 3]
        y0, y1, y2 = ys[2 * k : 2 * k + 3]
        inside = (x <= x2) if k == 0 else (x > x0) & (x <= x2)
        xk = torch.where(inside, x, torch.full_like(x, x2))
        a = (x1 - x0) / (x2 - x0)
        u = (xk - x0) / (x2 - x0)
        if a == 0.5:
            t = u
        else:
            t = (a - torch.sqrt(a * a + (1 - 2 * a) * u)) / (2 * a - 1)
        y = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * y1 + t**2 * y2
        out = y if out is None else torch.where(inside, y, out)
    return out


def one_hot(labels, c):
    valid = (labels >= 0) & (labels < c)
    safe = torch.where(valid, labels, torch.full_like(labels, c))
    return F.one_hot(safe, c + 1)[..., :c].permute(0, 3, 1, 2).double(), valid


def _erode(x):
    return -F.max_pool2d(-F.pad(x, (1, 1, 1, 1), value=1.0), 3, stride=1)


def _edge(y):
    return (_erode(y) != y).to(y.dtype)


def _dilate(x, tol):
    return F.max_pool2d(x, 2 * tol + 1, stride=1, padding=tol) if tol > 0 else x


def _iou_terms(p, y, mask, cps):
    gi, go = bezier(p, cps[0]), bezier(p, cps[1])
    m = mask.unsqueeze(1).to(p.dtype)
    inter = (gi * y * m).sum(dim=(0, 2, 3))
    union = ((go + y - go * y) * m).sum(dim=(0, 2, 3)) + EPS
    return inter, union


def surrogate(metric, logits, labels, cps, tol=5, drop_bg=False):
    """Reference surrogate value (0-dim tensor) of one metric (the paper's names: mIoU, FWIoU,
    BIoU, BF1, mAcc, gAcc; segloss_d2's fwIoU, mACC, pACC map to them)."""
    metric = {"fwIoU": "FWIoU", "mACC": "mAcc", "pACC": "gAcc"}.get(metric, metric)
    c = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    y, valid = one_hot(labels, c)
    y = y.to(p.dtype)
    nan = torch.full((), float("nan"), dtype=p.dtype)
    if metric != "BF1" and not bool(valid.any()):
        return nan
    if metric in ("mIoU", "FWIoU"):
        inter, union = _iou_terms(p, y, valid, cps)
        if metric == "mIoU":
            return (inter / union).mean()
        freq = y.sum(dim=(0, 2, 3))
        sel = freq > 0
        return ((inter / union)[sel] * freq[sel]).sum() / freq[sel].sum()
    if metric == "BIoU":
        dil = _dilate(_edge(y), tol)
        trimap = (dil[:, 1:] if drop_bg else dil).max(dim=1).values > 0.5
        if not bool((valid & trimap).any()):
            return nan
        inter, union = _iou_terms(p, y, valid & trimap, cps)
        return (inter / union).mean()
    if metric in ("mAcc", "gAcc"):
        inter = (bezier(p, cps[0]) * y).sum(dim=(0, 2, 3))
        freq = y.sum(dim=(0, 2, 3))
        if metric == "mAcc":
            return (inter / (freq + EPS)).mean()
        return inter.sum() / (freq.sum() + EPS)
    assert metric == "BF1"
    gt_edge = _edge(y)
    e = _erode(p)
    inter = bezier(p, cps[0]) * bezier(e, cps[1])
    union = bezier(p, cps[2]) + bezier(e, cps[3]) - bezier(p, cps[2]) * bezier(e, cps[3])
    soft_edge = union - inter
    n_gt = gt_edge.sum(dim=(0, 2, 3))
    prec = (soft_edge * _dilate(gt_edge, tol)).sum(dim=(0, 2, 3)) / (
        soft_edge.sum(dim=(0, 2, 3)) + EPS)
    rec = (_dilate(soft_edge, tol) * gt_edge).sum(dim=(0, 2, 3)) / (n_gt + EPS)
    f1 = 2 * prec * rec / (prec + rec + EPS)
    if drop_bg:
        return f1[1:][n_gt[1:] != 0].mean()
    return f1[n_gt != 0].mean()
