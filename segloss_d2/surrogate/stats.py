"""Statistics scope of the surrogates: over whose pixels the per-class soft sums are taken.

docs/method.md §2.5. Three scopes (``SurrogateLoss(..., stats=...)``,
``MODEL.SEM_SEG_HEAD.SURROGATE.STATS``):

- ``local``: per class over the per-process mini-batch (N, H, W), as the reference does.
- ``global``: per class over the global batch of all processes of the default
  ``torch.distributed`` process group. Every label count (which decides the present classes, the
  BF1 classes and the empty means) and every soft sum (intersections, unions, BF1's boundary
  sums) is all-reduced (SUM) inside the forward pass, so every process computes the same loss
  value: the one-process loss of the concatenated batch. Identical to ``local`` when
  ``torch.distributed`` is unavailable, not initialized, or has one process.
- ``image``: per class over each image, the surrogate values then averaged over the images
  (see :class:`~segloss_d2.surrogate.loss.SurrogateLoss`).

Gradient convention of ``global``: the backward of the all-reduce is an all-reduce (SUM) of the
incoming gradient. Since every process's loss L_r equals the one-process loss L of the global
batch, process r's gradient with respect to its own logits z_r is d(Σ_r' L_r')/dz_r = W dL/dz_r
(W = world size). DistributedDataParallel averages the parameter gradients over the W processes,
so the parameters receive exactly dL/dθ, the gradient of one process holding the whole global
batch. (Without DDP's averaging, e.g. when gradients are summed by hand, divide by W.)

Imports torch only. Every process must make the same calls in the same order (collectives): the
relaxed metrics make every data-dependent decision (present classes, skipped terms) on reduced
counts only.
"""
import torch
import torch.distributed as dist

__all__ = ["STATS_SCOPES", "check_stats", "Reducer", "LOCAL", "reducer"]

STATS_SCOPES = ("local", "global", "image")
"""Accepted values of ``SurrogateLoss(stats=...)`` / ``SURROGATE.STATS``."""


def check_stats(value, name="stats"):
    """Return ``value`` if it is a known scope, else raise ValueError naming it."""
    if not isinstance(value, str) or value not in STATS_SCOPES:
        raise ValueError(f"{name} must be one of {list(STATS_SCOPES)}, got {value!r}")
    return value


def _world_size():
    """Processes in the default group; 1 without an initialized torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) over the default group; backward: all_reduce(SUM) of the gradient.

    See the module docstring for why the backward sums (DDP then averages).
    """

    @staticmethod
    def forward(ctx, x):
        out = x.detach().clone().contiguous()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.detach().clone().contiguous()
        dist.all_reduce(grad)
        return grad


class Reducer:
    """How the relaxed metrics reduce their per-class statistics across processes.

    ``Reducer(False)`` (:data:`LOCAL`) returns its inputs unchanged; ``Reducer(True)`` sums them
    over the default ``torch.distributed`` group.
    """

    def __init__(self, distributed):
        self.distributed = bool(distributed)

    def counts(self, counts):
        """Sum of exact label counts (no gradient), any shape; float64 in keeps them exact."""
        if not self.distributed:
            return counts
        out = counts.detach().clone().contiguous()
        dist.all_reduce(out)
        return out

    def sums(self, *tensors):
        """Differentiable sums of soft statistics (same dtype), in one collective.

        Returns a tuple like ``tensors`` (the shapes kept).
        """
        if not self.distributed:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        reduced = _AllReduceSum.apply(flat)
        out, start = [], 0
        for t in tensors:
            out.append(reduced[start:start + t.numel()].view(t.shape))
            start += t.numel()
        return tuple(out)

    def __repr__(self):
        return f"Reducer(distributed={self.distributed})"


LOCAL = Reducer(False)
"""The identity reducer: per-process statistics."""


def reducer(stats):
    """The :class:`Reducer` of scope ``stats`` at call time (``global`` with one process or
    without torch.distributed is :data:`LOCAL`); ``image`` reduces nothing across processes."""
    if check_stats(stats) == "global" and _world_size() > 1:
        return Reducer(True)
    return LOCAL
