"""Test-session guards shared by the whole suite.

detectron2 is a prerequisite of segloss_d2's adapters. Tests of adapters import it directly or with
``pytest.importorskip("detectron2")`` for users who only want the pure-torch core; CI sets
``SEGLOSS_REQUIRE_D2=1`` so that a missing detectron2 fails the run instead of skipping tests, and
``SEGLOSS_REQUIRE_RAY=1`` likewise for Ray (the search's optional backend), and
``SEGLOSS_REQUIRE_EXT=1`` for the compiled CPU kernels ``segloss_d2._C`` (without them the
surrogate tests of the kernel path would skip).
"""
import os

import pytest

# Triton's interpreter runs the fused accelerator path's kernels on CPU (tests/surrogate). Triton
# reads TRITON_INTERPRET when triton.language is first imported, and importing torch's or
# detectron2's modules imports it: it must be set here, before any test module imports them.
os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionstart(session):
    if os.environ.get("SEGLOSS_REQUIRE_D2") == "1":
        try:
            import detectron2.engine  # noqa: F401
            import detectron2.projects.deeplab  # noqa: F401
        except Exception as e:  # any import failure is a broken install
            raise pytest.UsageError(
                f"SEGLOSS_REQUIRE_D2=1 but detectron2 does not import ({type(e).__name__}: {e}); "
                "run 'make install' (tools/install.sh)"
            ) from e
    if os.environ.get("SEGLOSS_REQUIRE_RAY") == "1":
        try:
            import ray  # noqa: F401
        except Exception as e:
            raise pytest.UsageError(
                f"SEGLOSS_REQUIRE_RAY=1 but ray does not import ({type(e).__name__}: {e}); "
                "run 'make install' (installs the 'ray' extra)"
            ) from e
    if os.environ.get("SEGLOSS_REQUIRE_EXT") == "1":
        from segloss_d2.surrogate import kernels

        if not kernels.available():
            raise pytest.UsageError(
                f"SEGLOSS_REQUIRE_EXT=1 but segloss_d2._C does not load ({kernels.load_error()}); "
                "run 'make install' (compiles it; needs g++)"
            )


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so results never depend on test order."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# Directories whose every test runs a tool end to end (a subprocess, a training of minutes).
_E2E_DIRS = ("e2e", "benchmarks")


def pytest_collection_modifyitems(config, items):
    """Mark the end-to-end tests ``e2e``: ``make test`` (CI) runs everything, ``make test-fast``
    (``-m "not e2e and not slow"``) the unit tests only (tests that run a whole search, a
    subprocess, a Ray cluster or Triton's interpreter are marked ``slow`` where they are)."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        parts = os.path.relpath(str(item.path), tests_dir).split(os.sep)
        if parts[0] in _E2E_DIRS:
            item.add_marker(pytest.mark.e2e)

