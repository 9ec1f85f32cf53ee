"""The guarded reward (pure: parsing, arithmetic, application to trial results)."""
import math

import pytest

from segloss_d2.search.guard import RewardGuard


@pytest.mark.parametrize("text,metric,fraction", [
    ("mIoU>=0.98", "mIoU", 0.98), (" miou >= 0.9 ", "mIoU", 0.9), ("gAcc>=1", "pACC", 1.0),
    ("BF1>=1.5", "BF1", 1.5), ("fwIoU>=.95", "fwIoU", 0.95), ("mIoU>=9.5e-1", "mIoU", 0.95),
])
def test_parse(text, metric, fraction):
    guard = RewardGuard.parse(text)
    assert (guard.metric, guard.fraction, guard.reference) == (metric, fraction, None)
    assert guard.expression == text.strip()


@pytest.mark.parametrize("text,match", [
    ("", "is not a guard"), ("mIoU>0.98", "is not a guard"), ("mIoU<=0.98", "is not a guard"),
    ("mIoU>=", "is not a guard"), ("mIoU>=-0.5", "is not a guard"),
    ("mIoU>=0.9,BF1>=0.9", "is not a guard"), ("Dice>=0.9", "unknown metric 'Dice'"),
    ("mIoU+BF1>=0.9", "is not a guard"), ("mIoU>=0", r"outside \(0, 2\]"),
    ("mIoU>=2.5", r"outside \(0, 2\]"),
])
def test_bad_expressions_are_refused_naming_the_value_and_the_form(text, match):
    with pytest.raises(ValueError, match=match) as e:
        RewardGuard.parse(text)
    assert repr(text) in str(e.value) and "e.g. 'mIoU>=0.98'" in str(e.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="penalty"):
        RewardGuard("mIoU", 0.9, penalty=-1)
    with pytest.raises(ValueError, match="not percent"):
        RewardGuard("mIoU", 0.9, reference=41.0)
    with pytest.raises(RuntimeError, match="no reference"):
        RewardGuard("mIoU", 0.9).apply(0.5, {"mIoU": 40.0})


def test_reward_arithmetic():
    guard = RewardGuard.parse("mIoU>=0.98", penalty=2.0).with_reference(0.40)
    assert guard.threshold == pytest.approx(0.392)
    # above the threshold: unchanged
    assert guard.apply(0.45, {"mIoU": 39.2}) == (0.45, {"metric": "mIoU", "value": 0.392,
                                                        "threshold": 0.392, "penalty": 0.0})
    # below: penalty x relative shortfall
    reward, info = guard.apply(0.45, {"mIoU": 19.6})
    assert info["penalty"] == pytest.approx(2.0 * 0.5) and reward == pytest.approx(-0.55)
    # a penalty of 0 records the guard without acting on it
    assert RewardGuard("mIoU", 0.98, 0.0, 0.4).apply(0.45, {"mIoU": 1.0})[0] == 0.45


def test_apply_to_a_trial_result():
    guard = RewardGuard("mIoU", 1.0, 1.0, 0.5)
    result = {"reward": 0.6, "metrics": {"mIoU": 25.0, "BF1": 60.0}, "status": "ok"}
    guarded = guard.apply_to(result)
    assert guarded["reward"] == pytest.approx(0.1) and guarded["unguarded_reward"] == 0.6
    assert guarded["guard"]["value"] == 0.25 and result["reward"] == 0.6  # a copy
    # a diverged proxy (no metrics, non-finite reward) is left as it is
    for diverged in ({"reward": 0.0, "metrics": {}, "status": "diverged"},
                     {"reward": math.nan, "metrics": {"mIoU": 1.0}}):
        assert guard.apply_to(diverged) == diverged or math.isnan(
            guard.apply_to(diverged)["reward"])
