"""Every surrogate test runs twice: on the fused C++ CPU kernels (``segloss_d2._C``) and on the
pure-torch path (the fallback everywhere, and the reference). With ``SEGLOSS_TEST_FUSED=1`` it also
runs on the fused accelerator path (the Triton kernels of ``segloss_d2.surrogate.fused``, forced
onto CPU tensors in Triton's interpreter: minutes, not seconds).

Triton's interpreter is switched on by tests/conftest.py (``TRITON_INTERPRET=1``, before anything
imports triton.language), so that the fused path's own tests (test_fused.py, test_op_counts.py)
can run its kernels on CPU. It changes nothing else: the fused
path only runs on the device types of ``fused.DEVICES`` (CUDA), unless a test adds ``"cpu"``.
"""
import os

import pytest

from segloss_d2.surrogate import fused, kernels

PATHS = ["cpu_kernels", "torch"] + (["fused"] if os.environ.get("SEGLOSS_TEST_FUSED") == "1"
                                    else [])


def use_fused_on_cpu(monkeypatch):
    """Run the fused accelerator path on CPU tensors (Triton's interpreter), or skip."""
    if not fused.available():
        pytest.skip(f"Triton is not available: {fused.load_error()}")
    if not fused.load().INTERPRETED:
        pytest.skip("segloss_d2's Triton kernels were imported for a GPU (TRITON_INTERPRET=0)")
    monkeypatch.setattr(fused, "ENABLED", True)
    monkeypatch.setattr(fused, "DEVICES", ("cuda", "cpu"))


def use_torch_path(monkeypatch):
    """Run the pure-torch path (compiled CPU kernels and fused path off)."""
    monkeypatch.setattr(kernels, "ENABLED", False)
    monkeypatch.setattr(fused, "ENABLED", False)


@pytest.fixture(autouse=True, params=PATHS)
def compute_path(request, monkeypatch):
    """The implementation under test; ``kernels.ENABLED`` / ``fused.ENABLED`` and
    ``fused.DEVICES`` are the switches the code reads."""
    if request.param == "cpu_kernels":
        if not kernels.available():
            pytest.skip(f"segloss_d2._C not built: {kernels.load_error()}")
        monkeypatch.setattr(kernels, "ENABLED", True)
    elif request.param == "torch":
        use_torch_path(monkeypatch)
    else:
        use_fused_on_cpu(monkeypatch)
    return request.param
