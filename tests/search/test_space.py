"""segloss_d2.search.space: the search space from the config, θ -> params, reward."""
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from segloss_d2.search.space import SearchSpace
from segloss_d2.surrogate.bezier import CONSTRAINTS
from segloss_d2.surrogate.params import METRICS, theta_dim


def _cfg(target="mIoU+BF1", pieces=0, constraints="all"):
    return SimpleNamespace(SEARCH=SimpleNamespace(TARGET_METRIC=target, NUM_PIECES=pieces,
                                                  CONSTRAINTS=constraints))


def test_space_of_the_paper_targets():
    space = SearchSpace.from_config(_cfg())
    assert space.metrics == ["mIoU", "BF1"] and space.num_pieces == [2, 1]
    assert space.dims == [theta_dim("mIoU", 2), theta_dim("BF1", 1)] and space.dim == 12 + 8
    assert space.target == "mIoU+BF1"
    assert len(space.initial_mu()) == space.dim


@pytest.mark.parametrize("constraints", CONSTRAINTS)
@pytest.mark.parametrize("metric", METRICS)
def test_initial_mu_is_the_identity(metric, constraints):
    space = SearchSpace([metric], 0, constraints)
    params = space.to_params(space.initial_mu())
    x = torch.linspace(0, 1, 11, dtype=torch.float64)
    from segloss_d2.surrogate.autograd import bezier_curve

    for curve in params.control_points[0]:
        assert torch.allclose(bezier_curve(x, curve), x, atol=2e-4)


def test_to_params_round_trips_theta():
    space = SearchSpace.from_config(_cfg("mACC+BIoU", 3, "no_truth_table"))
    theta = torch.rand(space.dim)
    params = space.to_params(theta, reward=0.5, provenance={"x": 1})
    flat = [v for curves in params.thetas for curve in curves for v in curve]
    assert flat == pytest.approx(theta.clamp(1e-4, 1 - 1e-4).tolist(), abs=1e-6)
    assert params.reward == 0.5 and params.provenance == {"x": 1}
    assert params.metrics == ["mACC", "BIoU"] and params.num_pieces == [3, 3]
    with pytest.raises(ValueError, match=f"theta has 3 values.*needs {space.dim}"):
        space.to_params([0.5] * 3)


def test_reward_is_the_mean_of_the_target_metrics():
    space = SearchSpace(["mIoU", "pACC"])
    results = {"mIoU": 40.0, "pACC": 80.0, "fwIoU": 1.0}
    assert space.reward(results) == pytest.approx(0.6)
    assert math.isnan(space.reward({"mIoU": float("nan"), "pACC": 80.0}))
    metrics = {"mIoU": 60.0, "fwIoU": 70.0, "mACC": 80.0, "pACC": 90.0, "BIoU": 40.0, "BF1": 20.0}
    assert SearchSpace(["BF1"]).reward(metrics) == pytest.approx(0.2)
    assert SearchSpace(["mIoU", "BF1"]).reward(metrics) == pytest.approx(0.4)
    # the paper's spellings score the SegMetrics key of the same metric (canonical_metric)
    assert SearchSpace(["FWIoU"]).reward(metrics) == pytest.approx(0.7)
    assert SearchSpace(["mAcc", "gAcc"]).reward(metrics) == pytest.approx(0.85)


def test_parse_target():
    assert SearchSpace.parse_target("BF1") == ["BF1"]
    assert SearchSpace.parse_target("mIoU + BF1") == ["mIoU", "BF1"]
    assert SearchSpace.parse_target("miou+gAcc") == ["mIoU", "pACC"]  # aliases, any case
    for bad in ("Dice", "mIoU+mIoU", "mIoU+miou", "mIoU+", "IoU"):
        with pytest.raises(ValueError, match="SEARCH.TARGET_METRIC"):
            SearchSpace.parse_target(bad)


@pytest.mark.parametrize("cfg,match", [
    (_cfg("Dice"), "SEARCH.TARGET_METRIC 'Dice'"),
    (_cfg("mIoU+mIoU"), "SEARCH.TARGET_METRIC"),
    (_cfg(""), "SEARCH.TARGET_METRIC"),
    (_cfg(pieces=-1), "SEARCH.NUM_PIECES must be an int >= 0.*-1"),
    (_cfg(pieces=1.5), "SEARCH.NUM_PIECES"),
    (_cfg(constraints="monotone"), "SEARCH.CONSTRAINTS: .*'monotone'"),
])
def test_bad_config_values_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        SearchSpace.from_config(cfg)


def test_bad_constructor_values():
    with pytest.raises(ValueError, match="target metrics"):
        SearchSpace([])
    with pytest.raises(ValueError, match="num_pieces"):
        SearchSpace(["mIoU", "BF1"], [1, 2, 3])


@pytest.mark.slow
def test_space_does_not_import_detectron2():
    code = ("import sys; import segloss_d2.search.space; "
            "assert not [m for m in sys.modules if m.startswith('detectron2')]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
