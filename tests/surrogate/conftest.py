"""Every surrogate test runs twice: on the fused C++ CPU kernels (``segloss_d2._C``) and on the
pure-torch path (what other devices run, and the fallback without the extension)."""
import pytest

from segloss_d2.surrogate import kernels


@pytest.fixture(autouse=True, params=["cpu_kernels", "torch"])
def compute_path(request, monkeypatch):
    """The implementation under test; ``kernels.ENABLED`` is the switch the code reads."""
    if request.param == "cpu_kernels":
        if not kernels.available():
            pytest.skip(f"segloss_d2._C not built: {kernels.load_error()}")
        monkeypatch.setattr(kernels, "ENABLED", True)
    else:
        monkeypatch.setattr(kernels, "ENABLED", False)
    return request.param
