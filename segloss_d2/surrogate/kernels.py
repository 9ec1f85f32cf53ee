"""Loading of the fused CPU kernels ``segloss_d2._C`` (``segloss_d2/csrc``) and their switch.

The kernels compute exactly the formulas of the pure-torch code in :mod:`.bezier`, :mod:`.region`
and :mod:`.boundary` in one pass over memory instead of one pass per elementwise op (the
surrogates are memory bound on CPU). The pure-torch code stays the reference, runs on every other
device, and is the fallback when the extension was not built (e.g. ``SEGLOSS_NO_EXT=1`` at install
time, or a torch upgraded after installing): then a warning says so once.

This module says whether the kernels can run (:func:`use_kernels`); :mod:`.ops` holds one wrapper
per compiled op that asks it and calls the op or its pure-torch fallback.

Environment: ``SEGLOSS_DISABLE_CPU_KERNELS=1`` forces the pure-torch path (for comparisons).
"""
import logging
import os

import torch

__all__ = ["available", "use_kernels", "flat_coefficients", "load_error"]

logger = logging.getLogger(__name__)

try:
    from segloss_d2 import _C  # noqa: F401  (loading it registers torch.ops.segloss_d2.*)
except (ImportError, OSError) as e:  # not built, or built against another torch
    _LOAD_ERROR = e
else:
    _LOAD_ERROR = None

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
            "path (about 2x). Rebuild it with 'pip install --no-build-isolation -e .' "
            "(or 'make install').", _LOAD_ERROR)
    return False


def flat_coefficients(pieces):
    """One curve's per-piece coefficients (from :func:`.bezier.curve_pieces`) as a flat list."""
    return [float(v) for piece in pieces for v in piece]
