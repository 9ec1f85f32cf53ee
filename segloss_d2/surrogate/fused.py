"""The fused accelerator path: the surrogates' full-size work in a few Triton kernels on GPUs.

On CUDA tensors (float32/float64) the curve evaluations, their derivatives and the per-class soft
sums of the region surrogates, and BF1's erosion, soft boundary, sums, window argmax and backward,
run in the kernels of :mod:`.triton_kernels`: a fixed number of launches per loss call, whatever
the image size (docs/method.md §2.6). :mod:`.ops` asks :func:`use_fused` and picks this path, the
compiled CPU kernels (:mod:`.kernels`) or the pure-torch reference; the autograd Functions that
call the launchers below are ``region._AcceleratedRegionSums`` and
``boundary._AcceleratedBoundaryTerms``.

Switch: ``SEGLOSS_DISABLE_FUSED=1`` in the environment, or ``fused.ENABLED = False`` (read on
every call). :data:`DEVICES` lists the device types the path runs on; tests add ``"cpu"`` with
``TRITON_INTERPRET=1`` set before the first use (:func:`load`), so that Triton's interpreter runs
the same kernels on CPU tensors. Triton is optional: where it does not import, the pure-torch
path runs (with one warning on a GPU).

Every launcher takes contiguous tensors on one device and returns new tensors; none has autograd.
:data:`LAUNCHES` counts the kernel launches per kernel name, and each launch is a
``torch.profiler`` range named :data:`PROFILER_PREFIX` + the kernel's name (tests, benchmarks).
"""
import collections
import functools
import logging
import os

import torch

from .bezier import coefficient_table

__all__ = [
    "DEVICES",
    "ENABLED",
    "LAUNCHES",
    "PROFILER_PREFIX",
    "available",
    "bezier",
    "load",
    "load_error",
    "region_grad",
    "region_sums",
    "soft_boundary",
    "soft_boundary_grad",
    "use_fused",
    "window_argmax",
]

logger = logging.getLogger(__name__)

# Module switches, read on every call (tests flip them).
ENABLED = os.environ.get("SEGLOSS_DISABLE_FUSED", "0") != "1"
DEVICES = ("cuda",)
LAUNCHES = collections.Counter()
# Each launch runs inside ``torch.profiler.record_function(PROFILER_PREFIX + kernel name)``.
PROFILER_PREFIX = "segloss_d2.fused::"

BLOCK = 1024  # pixels per program of the per-pixel kernels
ARGMAX_BLOCK = 128  # positions per program of the window argmax
NUM_WARPS = 4

_kernels = None
_error = None
_warned = False


def load():
    """The kernels module (:mod:`.triton_kernels`, importing Triton on first use), or None."""
    global _kernels, _error
    if _kernels is None and _error is None:
        try:
            from . import triton_kernels
        except Exception as e:  # Triton missing or broken: the pure-torch path runs
            _error = e
        else:
            _kernels = triton_kernels
    return _kernels


def available():
    """Whether the Triton kernels import (Triton installed and working)."""
    return load() is not None


def load_error():
    """Why the Triton kernels did not import (an exception), or None."""
    load()
    return _error


def use_fused(*tensors):
    """Whether to run the fused kernels on ``tensors``: all float32/float64 on a device type of
    :data:`DEVICES` (a CUDA GPU of compute capability :data:`MIN_CAPABILITY` or more), the path
    enabled and Triton available."""
    global _warned
    if not ENABLED or not all(t.device.type in DEVICES and t.dtype in (torch.float32,
                                                                       torch.float64)
                              for t in tensors):
        return False
    if load() is None:
        reason = f"Triton is not available ({_error})"
    elif not all(_supported(t.device) for t in tensors):
        reason = (f"{tensors[0].device} has compute capability "
                  f"{torch.cuda.get_device_capability(tensors[0].device)} < {MIN_CAPABILITY}")
    else:
        return True
    if not _warned:
        _warned = True
        logger.warning("%s: the surrogates run the slower pure-torch path on %s", reason,
                       tensors[0].device)
    return False


# Triton targets NVIDIA GPUs of compute capability 7.0 (Volta) and newer, and AMD GPUs (ROCm).
MIN_CAPABILITY = (7, 0)


@functools.lru_cache(maxsize=None)
def _supported_cuda(index):
    return (torch.version.hip is not None
            or torch.cuda.get_device_capability(index) >= MIN_CAPABILITY)


def _supported(device):
    return device.type != "cuda" or _supported_cuda(device.index)


def _cdiv(a, b):
    return -(-a // b)


def _launch(name, grid, device, *args, **meta):
    """Run kernel ``name`` of :mod:`.triton_kernels` on ``grid`` on ``device``'s GPU."""
    kernels = load()
    if device.type != "cuda" and not kernels.INTERPRETED:
        raise RuntimeError(
            f"the fused accelerator path got {device} tensors, but its Triton kernels were built "
            f"for a GPU: set TRITON_INTERPRET=1 before segloss_d2 first uses them to run them "
            f"in Triton's interpreter")
    kernel = getattr(kernels, name)
    with torch.profiler.record_function(f"{PROFILER_PREFIX}{name}"):
        try:
            if device.type == "cuda":
                with torch.cuda.device(device):
                    kernel[grid](*args, num_warps=NUM_WARPS, **meta)
            else:
                kernel[grid](*args, **meta)
        except Exception as e:
            raise RuntimeError(
                f"segloss_d2's fused Triton kernel {name} failed on {device} "
                f"({type(e).__name__}: {e}); set SEGLOSS_DISABLE_FUSED=1 to run the surrogates "
                f"on the pure-torch path instead") from e
    LAUNCHES[name] += 1


def bezier(x, pieces, need_grad):
    """g(x) and (if ``need_grad``, else None) dg/dx of one curve, elementwise, like ``x``."""
    x = x.contiguous()
    g = torch.empty_like(x)
    d = torch.empty_like(x) if need_grad else None
    if x.numel():
        _launch("bezier_kernel", (_cdiv(x.numel(), BLOCK),), x.device, x, g,
                g if d is None else d, coefficient_table(pieces, x), len(pieces), x.numel(),
                NEED_GRAD=need_grad, BLOCK=BLOCK)
    return g, d


def region_sums(probs, labels, weight, classes, and_pieces, or_pieces):
    """The region surrogates' soft sums over the listed classes, in one kernel launch.

    Args:
        probs (Tensor): (N, C, L) contiguous.
        labels (Tensor): (N, L) int64 in [0, C) (void pixels: any class, weight 0).
        weight (Tensor or None): (N, L) like ``probs`` (None: all ones).
        classes (Tensor): (K,) int64 class indices.
        and_pieces, or_pieces: the curves g_A and g_O (or None).

    Returns:
        (K, 3) ``[Σ w g_A(p_c) [l = c], Σ w g_O(p_c), Σ w g_O(p_c) [l = c]]`` per listed class c,
        or (K, 1) with the first column only when ``or_pieces`` is None; dtype of ``probs``.
    """
    n, c, length = probs.shape
    k, columns = classes.numel(), 1 if or_pieces is None else 3
    blocks = _cdiv(length, BLOCK)
    partial = probs.new_empty(n, blocks, k, columns)
    if partial.numel() == 0:
        return probs.new_zeros(k, columns)
    and_coef = coefficient_table(and_pieces, probs)
    or_coef = and_coef if or_pieces is None else coefficient_table(or_pieces, probs)
    _launch("region_forward_kernel", (blocks, n), probs.device, probs, labels,
            probs if weight is None else weight, classes, and_coef, len(and_pieces), or_coef,
            len(or_pieces or and_pieces), partial, c, length, k, blocks,
            HAS_WEIGHT=weight is not None, HAS_OR=or_pieces is not None, S=columns, BLOCK=BLOCK)
    return partial.sum(dim=(0, 1))


def region_grad(probs, labels, weight, grad_inter, grad_sum, grad_lab, and_pieces, or_pieces):
    """dL/dp (N, C, L) of :func:`region_sums` over all C classes, for the upstream gradients
    (C,) of its three sums (``grad_sum`` zero where a class's dense sum was not taken;
    ``grad_sum`` and ``grad_lab`` unused without ``or_pieces``). Curves re-evaluated from p."""
    n, c, length = probs.shape
    grad = torch.empty_like(probs)
    if grad.numel() == 0:
        return grad
    and_coef = coefficient_table(and_pieces, probs)
    or_coef = and_coef if or_pieces is None else coefficient_table(or_pieces, probs)
    has_or = or_pieces is not None
    _launch("region_backward_kernel", (_cdiv(length, BLOCK), n), probs.device, probs, labels,
            probs if weight is None else weight, grad, grad_inter,
            grad_sum if has_or else grad_inter, grad_lab if has_or else grad_inter, and_coef,
            len(and_pieces), or_coef, len(or_pieces or and_pieces), c, length,
            HAS_WEIGHT=weight is not None, HAS_OR=has_or, BLOCK=BLOCK)
    return grad


def _curve_args(curves, like):
    args = []
    for pieces in curves:
        args += [coefficient_table(pieces, like), len(pieces)]
    return args


def soft_boundary(probs, classes, curves, dilated):
    """BF1's soft boundary of the listed classes and its sums, in one kernel launch.

    Args:
        probs (Tensor): (N, C, H, W) contiguous.
        classes (Tensor): (K,) int64, the kept classes.
        curves: ``[g1, g2, g3, g4]`` (:func:`.bezier.curve_pieces` each).
        dilated (Tensor): (N, K, H, W) contiguous bool, the dilated ground-truth boundaries.

    Returns:
        B (N, K, H, W) like ``probs``, and (K, 2) ``[Σ B, Σ B [dilated]]`` per kept class.
    """
    n, c, h, w = probs.shape
    k = classes.numel()
    soft = probs.new_empty(n, k, h, w)
    blocks = _cdiv(h * w, BLOCK)
    partial = probs.new_empty(n, k, blocks, 2)
    if partial.numel() == 0:
        return soft, probs.new_zeros(k, 2)
    _launch("bf1_forward_kernel", (blocks, n * k), probs.device, probs, classes,
            dilated.view(torch.uint8), soft, partial, *_curve_args(curves, probs), c, k, h, w,
            blocks, BLOCK=BLOCK)
    return soft, partial.sum(dim=(0, 2))


def soft_boundary_grad(probs, classes, curves, dilated, index, grad_picked, grad_n, grad_match):
    """dL/dp (N, C, H, W) of BF1's soft boundary sums (zero outside the kept classes), in three
    kernel launches.

    Args:
        probs, classes, curves, dilated: as for :func:`soft_boundary`.
        index (Tensor): (M,) int64 flat indices into B (N, K, H, W) of the picked window maxima.
        grad_picked (Tensor): (M,) like ``probs``, dL/d(picked values) (or None: zero).
        grad_n, grad_match (Tensor): (K,) dL/dΣB and dL/dΣB[dilated].
    """
    n, c, h, w = probs.shape
    k = classes.numel()
    grad = torch.zeros_like(probs) if k < c else torch.empty_like(probs)
    picks = probs.new_zeros(n, k, h, w)  # dL/dB of the picked maxima, then scratch
    if picks.numel() == 0:
        return grad
    m = index.numel()
    if grad_picked is not None and m:
        _launch("scatter_add_kernel", (_cdiv(m, BLOCK),), probs.device, picks, index,
                grad_picked.contiguous(), m, BLOCK=BLOCK)
    code = torch.empty(picks.shape, dtype=torch.int8, device=probs.device)
    grid = (_cdiv(h * w, BLOCK), n * k)
    dilated = dilated.view(torch.uint8)
    _launch("bf1_backward_kernel", grid, probs.device, probs, classes, dilated, picks, grad, code,
            grad_n, grad_match, *_curve_args(curves, probs), c, k, h, w, BLOCK=BLOCK)
    _launch("bf1_route_kernel", grid, probs.device, classes, picks, code, grad, c, k, h, w,
            BLOCK=BLOCK)
    return grad


def window_argmax(values, n_idx, c_idx, h_idx, w_idx, radius):
    """Flat index into ``values`` (N, K, H, W) contiguous of the first maximum (row-major window
    order) of the (2 radius + 1)^2 window cut at the border around each of M positions, by a
    direct scan of each window; (M,) int64."""
    _, k, h, w = values.shape
    m = n_idx.numel()
    out = torch.empty(m, dtype=torch.int64, device=values.device)
    if m:
        _launch("window_argmax_kernel", (_cdiv(m, ARGMAX_BLOCK),), values.device, values,
                n_idx.contiguous(), c_idx.contiguous(), h_idx.contiguous(), w_idx.contiguous(),
                out, m, k, h, w, radius, BLOCK=ARGMAX_BLOCK)
    return out
