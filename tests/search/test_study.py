"""The search-quality study: statistics helpers and a smoke run of the script on a tiny budget."""
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

from segloss_d2.search.study import (  # noqa: E402
    PLANS,
    SearchStudy,
    best_so_far,
    mean_std,
    spearman,
)

from ._tiny import REPO  # noqa: E402

SCRIPT = os.path.join(REPO, "benchmarks", "study_search.py")
# Seconds-scale plan: one target and seed, proxies of 3 SGD steps, retrainings of 4.
TINY = ["--set", "targets", "BF1", "--set", "search_seeds", "1", "--set", "train_seeds", "1",
        "--set", "iterations", "2", "--set", "samples_per_iter", "3", "--set", "proxy_iters", "3",
        "--set", "retrain_iters", "4", "--set", "noise_seeds", "1,2", "--set", "noise_thetas",
        "2", "--set", "fidelity_candidates", "3", "--set", "holdout_size", "6",
        "--set", "ablation_seeds", "1", "--set", "ablation_target", "BF1",
        "--set", "pretrain_iters", "2"]


def test_spearman_and_mean_std():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2], [1, 2, 3])
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_best_so_far():
    trials = [{"iteration": 0, "reward": 0.2, "status": "ok"},
              {"iteration": 0, "reward": 0.9, "status": "diverged"},
              {"iteration": 1, "reward": 0.1, "status": "ok"},
              {"iteration": 2, "reward": 0.5, "status": "ok"}]
    assert best_so_far(trials) == [0.2, 0.2, 0.5]


def test_plans_are_valid_and_bad_plans_are_refused(tmp_path):
    cfg_file = os.path.join(REPO, "configs", "shapes", "search_tiny_bf1.yaml")
    for plan in PLANS.values():
        plan.with_configs(cfg_file, cfg_file).validate()
    assert PLANS["full"].search_seeds == (1, 2, 3) and PLANS["full"].train_seeds == (1, 2, 3)
    good = PLANS["quick"].with_configs(cfg_file, cfg_file)
    import dataclasses

    for field, value, match in (("targets", ("Dice",), "targets"),
                                ("ablation_target", "mACC", "ablation_target"),
                                ("retrain_iters", 0, "retrain_iters"),
                                ("samples_per_iter", 1, "samples_per_iter"),
                                ("train_seeds", (), "train_seeds"),
                                ("search_config", str(tmp_path / "nope.yaml"), "search_config")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(good, **{field: value}).validate()
    SearchStudy(good, str(tmp_path / "study"))
    other = dataclasses.replace(good, retrain_iters=7)
    with pytest.raises(ValueError, match="another plan"):
        SearchStudy(other, str(tmp_path / "study"))


def _run(out, *extra):
    return subprocess.run([sys.executable, SCRIPT, "--quick", "--output-dir", out, *TINY, *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


def test_study_smoke_run_and_resume(tmp_path):
    out = str(tmp_path / "study")
    first = _run(out, "--report-dir", str(tmp_path / "report"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = open(os.path.join(out, "search_study.md")).read()
    for section in ("## Reward noise", "## BF1: final training", "PPO search (reference",
                    "random search", "naive (identity curves)", "cross-entropy",
                    "released VOC preset", "## Constraint ablation", "## Proxy fidelity"):
        assert section in report, section
    for png in ("reward_curves_BF1.png", "ablation_BF1.png", "fidelity_BF1.png"):
        assert os.path.getsize(os.path.join(out, png)) > 0
        assert os.path.exists(os.path.join(tmp_path, "report", png))
    searches = sorted(os.listdir(os.path.join(out, "search")))
    assert searches == ["BF1_ppo_all_s1", "BF1_ppo_no_monotonic_s1", "BF1_ppo_no_truth_table_s1",
                        "BF1_ppo_none_s1", "BF1_random_all_s1"]
    for name in searches:  # every search has its full budget of trials
        with open(os.path.join(out, "search", name, "trials.jsonl")) as f:
            assert len(f.read().splitlines()) == 2 * 3, name
    with open(os.path.join(out, "search", "BF1_random_all_s1", "final_mu_params.json")) as f:
        random_mu = json.load(f)["terms"][0]["theta"]
    assert random_mu == [[pytest.approx(0.5)] * 2] * 4  # random search never moves mu
    with open(os.path.join(out, "search", "BF1_ppo_no_truth_table_s1", "best_params.json")) as f:
        term = json.load(f)["terms"][0]
    assert term["constraints"] == "no_truth_table" and len(term["control_points"][0]) == 4
    timings = json.load(open(os.path.join(out, "timings.json")))

    # a second run reuses everything: no training, same report
    second = _run(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[study] search" not in second.stdout and "[study] retrain" not in second.stdout
    assert json.load(open(os.path.join(out, "timings.json"))) == timings
    again = open(os.path.join(out, "search_study.md")).read()
    assert again == report


def test_bad_set_field_is_refused(tmp_path):
    proc = _run(str(tmp_path / "s"), "--set", "no_such_field", "1")
    assert proc.returncode != 0 and "unknown field" in proc.stderr

