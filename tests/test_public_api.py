"""The public API of segloss_d2 resolves, and the math core never imports detectron2."""
import subprocess
import sys

import pytest

import segloss_d2

CORE_MODULES = (
    "segloss_d2.surrogate",
    "segloss_d2.losses",
    "segloss_d2.evaluation.metrics",
    "segloss_d2.search.distributions",
    "segloss_d2.search.ppo",
    "segloss_d2.search.state",
    "segloss_d2.search.loop",
    "segloss_d2.visualize",
    "segloss_d2.metric_names",
    "segloss_d2.search.space",
    "segloss_d2.search.lock",
    "segloss_d2.search.reaper",
    "segloss_d2.search.selection",
    "segloss_d2.search.seeds",
    "segloss_d2.search.guard",
    "segloss_d2.search.plots",
)


@pytest.mark.parametrize("name", segloss_d2.__all__)
def test_every_public_name_resolves(name):
    pytest.importorskip("detectron2")
    assert getattr(segloss_d2, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        segloss_d2.nope  # noqa: B018


@pytest.mark.slow
def test_core_does_not_import_detectron2():
    code = (
        "import sys\n"
        "import segloss_d2\n"
        "from segloss_d2 import SurrogateLoss, load_params, save_params, SegMetrics\n"
        f"for m in {CORE_MODULES!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'detectron2')\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_importing_never_switches_the_matplotlib_backend():
    """A notebook user's backend survives ``import segloss_d2.*`` (no matplotlib.use at import)."""
    pytest.importorskip("detectron2")
    modules = ("segloss_d2.visualize", "segloss_d2.search.plots", "experiments.compare",
               "experiments.study_report", "segloss_d2.engine")
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        f"for m in {modules!r}: __import__(m)\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
