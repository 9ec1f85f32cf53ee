"""Loading of the fused CPU kernels ``segloss_d2._C`` (``segloss_d2/csrc``) and their switch.

The kernels compute exactly the formulas of the pure-torch code in :mod:`.bezier`, :mod:`.region`
and :mod:`.boundary` in one pass over memory instead of one pass per elementwise op (the
surrogates are memory bound on CPU). The pure-torch code stays the reference, runs on other
devices (CUDA: the Triton kernels of :mod:`.fused`, if Triton is available), and is the fallback
when the extension was not built (e.g. ``SEGLOSS_NO_EXT=1`` at install time, or a torch upgraded
after installing): then a warning says so once.

This module says whether the kernels can run (:func:`use_kernels`); :mod:`.ops` holds one wrapper
per compiled op that asks it and calls the op or its pure-torch fallback.

Environment: ``SEGLOSS_DISABLE_CPU_KERNELS=1`` forces the pure-torch path (for comparisons).
"""
import logging
import os

import torch

from .bezier import Piece

__all__ = ["COEFFICIENTS", "available", "use_kernels", "flat_coefficients", "load_error"]

logger = logging.getLogger(__name__)

# The per-piece coefficient layout shared with the kernels: a curve reaches them as the flat list
# of its pieces' :class:`~.bezier.Piece` fields, in this order (len(COEFFICIENTS) numbers per
# piece). The extension declares the layout it reads (``_C.PIECE_COEFFICIENTS``, from
# ``SEGLOSS_PIECE_COEFFICIENTS`` in csrc); a build that disagrees, or predates the declaration,
# is not used (the pure-torch path runs, with the warning below).
COEFFICIENTS = Piece._fields


# The ops segloss_d2.surrogate.ops calls; a build from older sources may lack some.
OPS = ("bezier", "region_dense", "region_backward", "soft_boundary",
       "soft_boundary_backward_bf1", "row_window_max", "window_argmax")


def _check_layout(module):
    """None if ``module`` (``segloss_d2._C``) reads :data:`COEFFICIENTS` and registered every op
    of :data:`OPS`, else the error."""
    missing = [name for name in OPS if not hasattr(torch.ops.segloss_d2, name)]
    if missing:
        return ImportError(f"segloss_d2._C was built from older sources (it has no op "
                           f"{', '.join(missing)})")
    declared = getattr(module, "PIECE_COEFFICIENTS", None)
    if declared is None:
        return ImportError("segloss_d2._C was built from older sources (it declares no curve "
                           "coefficient layout)")
    declared = tuple(declared.split(","))
    if declared != COEFFICIENTS:
        return ImportError(f"segloss_d2._C reads curve coefficients as {declared}, but "
                           f"segloss_d2 writes {COEFFICIENTS}: stale build")
    return None


try:
    from segloss_d2 import _C  # loading it registers torch.ops.segloss_d2.*
except (ImportError, OSError) as e:  # not built, or built against another torch
    _LOAD_ERROR = e
else:
    _LOAD_ERROR = _check_layout(_C)

# Module switch (tests flip it to compare both paths); read by use_kernels on every call.
ENABLED = _LOAD_ERROR is None and os.environ.get("SEGLOSS_DISABLE_CPU_KERNELS", "0") != "1"
_warned = False


def available():
    """True when ``segloss_d2._C`` loaded (whether or not it is disabled)."""
    return _LOAD_ERROR is None


def load_error():
    """Why ``segloss_d2._C`` did not load (an exception), or None."""
    return _LOAD_ERROR


def use_kernels(*tensors):
    """Whether to run the C++ kernels on ``tensors``: all on CPU, float32/float64, and enabled."""
    global _warned
    if not all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
               for t in tensors):
        return False
    if ENABLED:
        return True
    if _LOAD_ERROR is not None and not _warned:
        _warned = True
        logger.warning(
            "segloss_d2._C is not available (%s): the surrogates run the slower pure-torch CPU "
            "path. Rebuild it with 'pip install --no-build-isolation -e .' "
            "(or 'make install').", _LOAD_ERROR)
    return False


def flat_coefficients(pieces):
    """One curve's pieces as the flat list of floats the kernels read.

    Args:
        pieces: the non-empty list of :class:`~.bezier.Piece` of one curve
            (:func:`.bezier.curve_pieces`).

    Returns:
        ``len(pieces) * len(COEFFICIENTS)`` floats, piece by piece in :data:`COEFFICIENTS` order.
    """
    if not pieces or not all(isinstance(piece, Piece) for piece in pieces):
        got = [type(piece).__name__ for piece in pieces] if isinstance(pieces, (list, tuple)) \
            else type(pieces).__name__
        raise TypeError(f"a curve must be a non-empty list of bezier.Piece (from curve_pieces), "
                        f"got {got}")
    return [float(v) for piece in pieces for v in piece]
