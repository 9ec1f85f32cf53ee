"""Label statistics shared by the relaxed metrics of one batch (:class:`LabelInfo`)."""
from functools import cached_property

import torch

from .morphology import dilate_bool
from .stats import LOCAL

__all__ = ["EPS", "LabelInfo"]

EPS = 1e-8  # the relaxed metrics' eps (docs/method.md §2.3)


class LabelInfo:
    """Label statistics shared by the relaxed metrics of one batch (each computed once, lazily).

    Args:
        labels (Tensor): (N, H, W) int64.
        num_classes (int): C.
        reducer (Reducer): the statistics scope across processes (:mod:`.stats`, docs/method.md
            §2.5): :meth:`counts` and the relaxed metrics' soft sums go through it; default
            :data:`~.stats.LOCAL` (this process's batch).
    """

    def __init__(self, labels, num_classes, reducer=LOCAL):
        self.labels = labels = labels.contiguous()  # flat views in the backward passes
        self.num_classes = num_classes
        self.reducer = reducer
        self.valid = (labels >= 0) & (labels < num_classes)
        self.safe = torch.where(self.valid, labels, 0)

    @cached_property
    def boundary(self):
        """(N, H, W) bool: valid pixels with an in-image 8-neighbour of another label (§1.3)."""
        lab = self.labels
        differs = torch.zeros_like(self.valid)
        h, w = lab.shape[-2:]
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            x0, x1 = max(0, -dx), w - max(0, dx)
            a = lab[:, : h - dy, x0:x1]
            b = lab[:, dy:, x0 + dx : x1 + dx]
            neq = a != b
            differs[:, : h - dy, x0:x1] |= neq
            differs[:, dy:, x0 + dx : x1 + dx] |= neq
        return differs & self.valid

    def counts(self, mask):
        """(C,) float per-class number of ground-truth pixels inside ``mask`` (N, H, W) bool,
        summed by :attr:`reducer` (over all processes under ``global`` statistics)."""
        weights = mask.reshape(-1).to(torch.float64)  # exact integer counts
        counts = torch.bincount(self.safe.reshape(-1), weights, minlength=self.num_classes)
        return self.reducer.counts(counts).float()

    def trimap(self, tolerance, drop_background):
        """(N, H, W) bool BIoU band: dilated ground-truth boundaries (without class 0 if asked)."""
        edges = self.boundary
        if drop_background:
            edges = edges & (self.labels != 0)
        return dilate_bool(edges, tolerance)
