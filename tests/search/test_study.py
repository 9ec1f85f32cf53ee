"""The search-quality study: statistics helpers and a smoke run of the script on a tiny budget."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("detectron2")

from experiments.study import (  # noqa: E402
    METHODS,
    PLANS,
    SearchStudy,
    _screen_gain,
    answer_names,
    best_so_far,
    mean_std,
    method_opts,
    screened_answers,
    search_budget,
    spearman,
    target_value,
)

from ._tiny import REPO, settings_of  # noqa: E402

SCRIPT = os.path.join(REPO, "benchmarks", "study_search.py")
# Seconds-scale plan: one target and seed, proxies of 3 SGD steps, retrainings of 4; every phase
# and the methods with a selection, halving and other curve sizes.
TINY = ["--set", "targets", "BF1", "--set", "search_seeds", "1", "--set", "train_seeds", "1",
        "--set", "iterations", "2", "--set", "samples_per_iter", "4", "--set", "proxy_iters", "3",
        "--set", "retrain_iters", "4", "--set", "noise_seeds", "1,2", "--set", "noise_thetas",
        "2", "--set", "fidelity_candidates", "2", "--set", "holdout_size", "6",
        "--set", "ablation_seeds", "1", "--set", "ablation_target", "BF1",
        "--set", "pretrain_iters", "2", "--set", "screen_seeds", "901",
        "--set", "methods", "ppo,random,ppo_select,ppo_halving,ppo_2piece,ppo_guard",
        "--set", "retrain", "ppo,ppo_select:sampled,best", "--set", "budget_iterations", "2,3",
        "--set", "budget_methods", "best,random", "--set", "scratch_targets", "BF1",
        "--set", "scratch_answers", "ppo", "--set", "transfer_answers", "ppo_guard",
        "--set", "transfer_configs",
        os.path.join(REPO, "configs", "shapes", "Base-Tiny-SemanticFPN.yaml")]


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


def test_screen_gain_over_seeds_with_different_methods():
    # A study resumed with another method list: seed 3 screened fewer answers than seeds 1 and 2.
    screen = {"1": {"901": {"identity": 0.5, "ppo": 0.6, "ppo_joint": 0.52}},
              "2": {"901": {"identity": 0.5, "ppo": 0.54, "ppo_joint": 0.56}},
              "3": {"901": {"identity": 0.4, "ppo": 0.45}, "902": {"identity": 0.4, "ppo": 0.47}}}
    assert screened_answers(screen) == ["ppo", "ppo_joint"]
    gain, sd, per_seed = _screen_gain(screen, "ppo")
    assert per_seed == pytest.approx([0.1, 0.04, 0.06])
    assert gain == pytest.approx(np.mean([0.1, 0.04, 0.06]))
    assert _screen_gain(screen, "ppo_joint")[2] == pytest.approx([0.02, 0.06])
    with pytest.raises(KeyError, match="ppo_halving"):
        _screen_gain(screen, "ppo_halving")


def test_best_so_far():
    trials = [{"iteration": 0, "reward": 0.2, "status": "ok"},
              {"iteration": 0, "reward": 0.9, "status": "diverged"},
              {"iteration": 1, "reward": 0.1, "status": "ok"},
              {"iteration": 2, "reward": 0.5, "status": "ok"},
              {"iteration": 3, "reward": 0.8, "status": "ok", "stage": "selection"}]
    assert best_so_far(trials) == [0.2, 0.2, 0.5]


def _cfg(opts):
    from segloss_d2.engine import get_segloss_cfg

    cfg = get_segloss_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes", "search_tiny_bf1.yaml"))
    cfg.merge_from_list(opts)
    return cfg


@pytest.mark.parametrize("method", ["ppo", "random", "ppo_select", "ppo_halving",
                                    "ppo_select+ppo_trust", "random_select"])
@pytest.mark.parametrize("iterations,samples", [(4, 8), (3, 6), (8, 8)])
def test_every_method_spends_the_same_budget(method, iterations, samples):
    """Selection and halving methods are budget-matched to the paper's settings."""
    cfg = _cfg(method_opts(method, iterations, samples) + ["SEARCH.PROXY.MAX_ITER", 100])
    settings_of(cfg)
    assert search_budget(settings_of(cfg)) == iterations * samples * 100, method


def test_the_tiny_config_with_the_default_selection_spends_the_study_budget():
    """configs/shapes/search_tiny_bf1.yaml (the demo's search) with the library's defaults, i.e.
    the selection on, costs what the study's 4 x 8 searches cost."""
    cfg = _cfg([])
    assert cfg.SEARCH.SELECTION.TOP_K == 3
    assert search_budget(settings_of(cfg)) == 4 * 8 * cfg.SEARCH.PROXY.MAX_ITER
    select = settings_of(_cfg(method_opts("ppo_select", 4, 8)))
    assert search_budget(select) == search_budget(settings_of(cfg))


def test_method_options_and_names():
    opts = method_opts("ppo_select+ppo_trust", 4, 8)
    cfg = _cfg(opts)
    assert (cfg.SEARCH.ITERATIONS, cfg.SEARCH.SELECTION.TOP_K, cfg.SEARCH.SELECTION.SEEDS,
            cfg.SEARCH.MAX_MU_STEP) == (3, 3, 2, 0.1)
    halving = _cfg(method_opts("ppo_halving", 4, 8))
    assert (halving.SEARCH.SAMPLES_PER_ITER, halving.SEARCH.MODELS_PER_WORKER,
            halving.SEARCH.ADVANTAGE, list(halving.SEARCH.PROXY.HALVING)) == (11, 11, "rank",
                                                                              [0.5])
    # the reference method is the paper's whatever the config file says
    assert _cfg(["SEARCH.ADVANTAGE", "rank"] + method_opts("ppo", 4, 8)).SEARCH.ADVANTAGE == "raw"
    with pytest.raises(ValueError, match="unknown study method"):
        method_opts("ppo+annealing", 4, 8)
    with pytest.raises(ValueError, match="even samples_per_iter"):
        method_opts("ppo_select", 4, 7)
    assert answer_names("ppo_select:sampled") == ("ppo_select", "best_sampled_params.json")
    assert answer_names("ppo:mu") == ("ppo", "final_mu_params.json")
    assert answer_names("random") == ("random", "best_params.json")
    assert set(METHODS) >= {"ppo", "random", "ppo_joint", "ppo_rank", "ppo_mirrored",
                            "ppo_sigma", "ppo_trust", "ppo_lr", "ppo_seeds", "ppo_select",
                            "random_select", "ppo_halving", "ppo_2piece"}


def test_combined_target():
    assert target_value({"mIoU": 40.0, "BF1": 60.0}, "mIoU+BF1") == 50.0
    assert target_value({"mIoU": 40.0, "BF1": 60.0}, "BF1") == 60.0
    assert math.isnan(target_value({"diverged": "nan loss"}, "mIoU+BF1"))
    cfg_file = os.path.join(REPO, "configs", "shapes", "search_tiny_bf1.yaml")
    import dataclasses

    plan = dataclasses.replace(PLANS["quick"].with_configs(cfg_file, cfg_file),
                               targets=("mIoU+BF1",))
    plan.validate()
    study = SearchStudy.__new__(SearchStudy)
    study.plan = plan
    assert study.loss_opts("mIoU+BF1", "naive")[-1] == ["mIoU", "BF1"]
    assert study.loss_opts("mIoU+BF1", "preset")[-1] == "voc_miou,voc_bf1"
    with pytest.raises(ValueError, match="joined by"):
        dataclasses.replace(plan, targets=("mIoU+mIoU",)).validate()


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
                                ("methods", ("ppo", "cma"), "unknown study method"),
                                ("retrain", ("ppo_joint",), "not among the searched"),
                                ("retrain", ("ppo:final",), "expected"),
                                ("scratch_targets", ("mIoU+BF1",), "scratch_targets"),
                                ("budget_targets", ("mIoU+BF1",), "budget_targets"),
                                ("transfer_configs", ("nope.yaml",), "transfer_configs"),
                                ("transfer_answers", ("ppo_joint",), "not among the"),
                                ("budget_iterations", (1,), "budget_iterations"),
                                ("search_config", str(tmp_path / "nope.yaml"), "search_config")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(good, **{field: value}).validate()
    with pytest.raises(ValueError, match="screen_seeds"):
        dataclasses.replace(good, screen_seeds=(), retrain=("best",)).validate()
    SearchStudy(good, str(tmp_path / "study"))
    # more work (methods, seeds, retrainings) reuses a study; another budget is refused
    SearchStudy(dataclasses.replace(good, methods=good.methods + ("ppo_rank",)),
                str(tmp_path / "study"))
    with pytest.raises(ValueError, match="another budget"):
        SearchStudy(dataclasses.replace(good, retrain_iters=7), str(tmp_path / "study"))
    with pytest.raises(ValueError, match="jobs"):
        SearchStudy(good, str(tmp_path / "other"), jobs=0)


def _run(out, *extra):
    return subprocess.run([sys.executable, SCRIPT, "--quick", "--output-dir", out, *TINY, *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


@pytest.mark.e2e
def test_study_smoke_run_and_resume(tmp_path):
    out = str(tmp_path / "study")
    first = _run(out, "--jobs", "2", "--report-dir", str(tmp_path / "report"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "estimated time left" in first.stdout and "elapsed" in first.stdout
    report = open(os.path.join(out, "search_study.md")).read()
    for section in ("## Reward noise", "## BF1: screening", "## BF1: final training",
                    "## BF1: budget curve", "PPO, paper settings", "random search",
                    "naive (identity curves)", "cross-entropy", "released VOC preset",
                    "PPO + selection by re-evaluation (the default): best sampled θ",
                    "## BF1: final training from random weights",
                    "## BF1: transfer to another network: tiny Semantic FPN",
                    "PPO, BF1 reward guarded by mIoU",
                    "## Constraint ablation", "## Proxy fidelity", "wall time of this run"):
        assert section in report, section
    for png in ("reward_curves_BF1.png", "ablation_BF1.png", "fidelity_BF1.png",
                "budget_curve_BF1.png"):
        assert os.path.getsize(os.path.join(out, png)) > 0
        assert os.path.exists(os.path.join(tmp_path, "report", png))
    searches = sorted(os.listdir(os.path.join(out, "search")))
    assert {"BF1_ppo_s1", "BF1_random_s1", "BF1_ppo_select_s1", "BF1_ppo_halving_s1",
            "BF1_ppo_2piece_s1", "BF1_ppo_no_monotonic_s1", "BF1_ppo_no_truth_table_s1",
            "BF1_ppo_none_s1", "BF1_random_b3_s1"} <= set(searches)
    budget = 2 * 4 * 3  # every search of the main budget spends 24 proxy iterations
    for name in ("BF1_ppo_s1", "BF1_ppo_select_s1", "BF1_ppo_halving_s1"):
        with open(os.path.join(out, "search", name, "trials.jsonl")) as f:
            trials = [json.loads(line) for line in f]
        assert sum(t.get("proxy_iters", 3) for t in trials) == budget, name
    with open(os.path.join(out, "search", "BF1_random_s1", "final_mu_params.json")) as f:
        random_mu = json.load(f)["terms"][0]["theta"]
    assert random_mu == [[pytest.approx(0.5)] * 2] * 4  # random search never moves mu
    pieces = {}
    for name in ("BF1_ppo_2piece_s1", "BF1_ppo_s1"):
        with open(os.path.join(out, "search", name, "best_params.json")) as f:
            pieces[name] = len(json.load(f)["terms"][0]["theta"][0])
    assert pieces["BF1_ppo_2piece_s1"] > pieces["BF1_ppo_s1"]  # 2-piece curves: more variables
    screens = os.listdir(os.path.join(out, "screen", "BF1"))
    assert screens == ["s1_p901.json"]
    with open(os.path.join(out, "screen", "BF1", screens[0])) as f:
        assert set(json.load(f)) == {"identity", "ppo", "ppo:mu", "random", "ppo_select",
                                     "ppo_select:sampled", "ppo_halving", "ppo_2piece",
                                     "ppo_guard"}
    with open(os.path.join(out, "search", "BF1_ppo_guard_s1", "meta.json")) as f:
        assert json.load(f)["records"]["guard_reference"]["metric"] == "mIoU"
    retrained = os.listdir(os.path.join(out, "retrain", "BF1"))
    for name in ("preset_scratch_t1", "ppo_s1_scratch_t1", "naive_Base-Tiny-SemanticFPN_t1",
                 "ppo_guard_s1_Base-Tiny-SemanticFPN_t1"):
        assert name in retrained, name
    timings = json.load(open(os.path.join(out, "timings.json")))

    # a second run (in-process) reuses everything: no training, same tables
    second = _run(out, "--jobs", "1")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[study] search BF1" not in second.stdout
    assert "[study] retrain BF1" not in second.stdout and "done |" not in second.stdout
    assert json.load(open(os.path.join(out, "timings.json"))) == timings
    again = open(os.path.join(out, "search_study.md")).read()
    assert again.split("## Wall time")[0] == report.split("## Wall time")[0]


@pytest.mark.slow
def test_bad_set_field_is_refused(tmp_path):
    proc = _run(str(tmp_path / "s"), "--set", "no_such_field", "1")
    assert proc.returncode != 0 and "unknown field" in proc.stderr
