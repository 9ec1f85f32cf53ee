"""A whole search from a config: outputs, kill-and-resume, config validation."""
import glob
import json
import os

import pytest
import torch

pytest.importorskip("detectron2")

from segloss_d2.modeling import build_sem_seg_loss  # noqa: E402
from segloss_d2.search import backends  # noqa: E402
from segloss_d2.search.ppo import PPOController, RandomSearchController  # noqa: E402
from segloss_d2.search.runner import (  # noqa: E402
    SearchRunner,
    build_controller,
)
from segloss_d2.search.space import SearchSpace  # noqa: E402
from segloss_d2.surrogate.autograd import bezier_curve  # noqa: E402
from segloss_d2.surrogate.params import load_params  # noqa: E402

from ._tiny import settings_of, strip_timing, tiny_search_cfg  # noqa: E402


def _trials(out):
    with open(os.path.join(out, "trials.jsonl")) as f:
        return sorted((json.loads(line) for line in f),
                      key=lambda r: (r["iteration"], r["index"]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 2-iteration x 3-candidate search run straight through (K = 3)."""
    out = str(tmp_path_factory.mktemp("search"))
    cfg = tiny_search_cfg(out)
    result = SearchRunner(settings_of(cfg), config_file="tiny.yaml", log=lambda s: None).run()
    return out, result


@pytest.mark.slow
def test_search_writes_every_output(uninterrupted):
    out, result = uninterrupted
    trials = _trials(out)
    assert [(r["iteration"], r["index"]) for r in trials] == [(t, i) for t in (0, 1)
                                                              for i in range(3)]
    assert all(r["status"] == "ok" and 0 <= r["reward"] <= 1 for r in trials)
    for name in ("meta.json", "controller.pt", "best_params.json", "final_mu_params.json",
                 "reward_curve.png", "best_curves.png", "final_mu_curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert glob.glob(os.path.join(out, "events.out.tfevents.*"))

    best = load_params(os.path.join(out, "best_params.json"), expected_metrics=["mIoU", "BF1"])
    assert best.reward == result.best_trial["reward"] == max(r["reward"] for r in trials)
    assert best.provenance["config_file"] == "tiny.yaml"
    assert best.provenance["seed"] == 1
    flat = [v for curves in best.thetas for curve in curves for v in curve]
    assert flat == pytest.approx(result.best_trial["theta"])
    mu = load_params(os.path.join(out, "final_mu_params.json"))
    assert [v for c in mu.thetas for curve in c for v in curve] == pytest.approx(result.final_mu)
    assert result.final_mu != pytest.approx(trials[0]["theta"])  # mu moved off the identity

    # best_params.json is what LOSS_TYPE searched loads
    cfg = tiny_search_cfg(opts=["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                                "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS",
                                os.path.join(out, "best_params.json")])
    loss = build_sem_seg_loss(cfg)
    logits = torch.randn(2, 7, 16, 16)
    labels = torch.randint(0, 7, (2, 16, 16))
    assert torch.isfinite(loss(logits, labels))


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
    ref_out, ref_result = uninterrupted
    out = str(tmp_path / "resumed")
    # one candidate per group, so the kill lands between trials of an iteration
    cfg = tiny_search_cfg(out, ["SEARCH.MODELS_PER_WORKER", 1])
    real = backends.train_candidates
    calls = []

    def dies_at_the_fifth_group(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "train_candidates", dies_at_the_fifth_group)
    with pytest.raises(_Killed):
        SearchRunner(settings_of(cfg), log=lambda s: None).run()
    assert len(_trials(out)) == 4
    assert not os.path.exists(os.path.join(out, "best_params.json"))

    monkeypatch.setattr(backends, "train_candidates", real)
    with pytest.raises(FileExistsError):  # a new search must not overwrite it
        SearchRunner(settings_of(cfg), log=lambda s: None)
    lines = []
    result = SearchRunner(settings_of(cfg), resume=True, log=lines.append).run()
    assert sum("trial" in s and "ETA" in s for s in lines) == 2  # only the unfinished ones
    assert [strip_timing(r) for r in _trials(out)] == [strip_timing(r) for r in
                                                       _trials(ref_out)]
    assert result.final_mu == ref_result.final_mu
    with open(os.path.join(out, "best_params.json")) as f, \
            open(os.path.join(ref_out, "best_params.json")) as g:
        assert json.load(f)["terms"] == json.load(g)["terms"]


@pytest.mark.parametrize("key,value,match", [
    ("SEARCH.TARGET_METRIC", "mIoU+Dice", "SEARCH.TARGET_METRIC"),
    ("SEARCH.RATIO", "product", "SEARCH.RATIO"),
    ("SEARCH.BASELINE", "median", "SEARCH.BASELINE"),
    ("SEARCH.BACKEND", "slurm", "SEARCH.BACKEND"),
    ("SEARCH.ITERATIONS", 0, "SEARCH.ITERATIONS"),
    ("SEARCH.SAMPLES_PER_ITER", -1, "SEARCH.SAMPLES_PER_ITER"),
    ("SEARCH.MODELS_PER_WORKER", 0, "SEARCH.MODELS_PER_WORKER"),
    ("SEARCH.PROXY.MAX_ITER", 0, "SEARCH.PROXY.MAX_ITER"),
    ("SEARCH.SIGMA", 0.0, "SEARCH.SIGMA"),
    ("SEARCH.CLIP_EPS", 1.5, "SEARCH.CLIP_EPS"),
    ("SEARCH.NUM_PIECES", -1, "SEARCH.NUM_PIECES"),
    ("SEARCH.HOLDOUT.SIZE", 0, "SEARCH.HOLDOUT.SIZE"),
    ("SEARCH.CONSTRAINTS", "monotone", "SEARCH.CONSTRAINTS: .*got 'monotone'"),
    ("SEARCH.CONSTRAINTS", "", "SEARCH.CONSTRAINTS"),
    ("SEARCH.METHOD", "evolution", "SEARCH.METHOD must be one of .*got 'evolution'"),
    ("SEARCH.METHOD", "PPO", "SEARCH.METHOD"),
    ("SEARCH.ADVANTAGE", "zscore", "SEARCH.ADVANTAGE must be one of .*got 'zscore'"),
    ("SEARCH.SIGMA_END", -0.1, "SEARCH.SIGMA_END"),
    ("SEARCH.MAX_MU_STEP", 1.5, "SEARCH.MAX_MU_STEP"),
    ("SEARCH.PROXY.SEEDS", "random", "SEARCH.PROXY.SEEDS must be one of .*got 'random'"),
    ("SEARCH.PROXY.HALVING", [0.5, 0.25], "SEARCH.PROXY.HALVING must be a list of increasing"),
    ("SEARCH.PROXY.HALVING", [1.0], "SEARCH.PROXY.HALVING"),
    ("SEARCH.PROXY.HALVING", [0.5], "set SEARCH.ADVANTAGE 'rank'"),
    ("SEARCH.SELECTION.TOP_K", -1, "SEARCH.SELECTION.TOP_K"),
    ("SEARCH.SELECTION.SEEDS", 0, "SEARCH.SELECTION.SEEDS"),
])
def test_bad_search_values(key, value, match):
    cfg = tiny_search_cfg(opts=[key, value])
    with pytest.raises(ValueError, match=match):
        settings_of(cfg)


def test_halving_stops_must_fall_inside_the_proxy_training():
    cfg = tiny_search_cfg(opts=["SEARCH.PROXY.HALVING", [0.1, 0.2], "SEARCH.ADVANTAGE", "rank"])
    with pytest.raises(ValueError, match=r"gives the stops \[0, 1\]"):  # MAX_ITER 3
        settings_of(cfg)


def test_options_reach_the_controller_and_the_fingerprint():
    opts = ["SEARCH.ADVANTAGE", "rank", "SEARCH.MIRRORED", True, "SEARCH.SIGMA_END", 0.05,
            "SEARCH.MAX_MU_STEP", 0.1]
    controller = build_controller(settings_of(tiny_search_cfg(opts=opts)))
    assert (controller.advantage, controller.mirrored, controller.sigma_end,
            controller.iterations, controller.max_mu_step) == ("rank", True, 0.05, 2, 0.1)
    paper = build_controller(settings_of(tiny_search_cfg()))
    assert (paper.advantage, paper.mirrored, paper.sigma_end, paper.iterations,
            paper.max_mu_step) == ("raw", False, None, None, 0.0)
    base = settings_of(tiny_search_cfg("a")).fingerprint
    assert "MODELS_PER_WORKER" not in base["SEARCH"]
    for key, value in zip(opts[::2], opts[1::2]):
        assert base != settings_of(tiny_search_cfg("a", [key, value])).fingerprint
    # with halving, the group size decides which proxies compete: part of the fingerprint
    halving = settings_of(tiny_search_cfg(
        "a", ["SEARCH.PROXY.HALVING", [0.5], "SEARCH.ADVANTAGE", "rank"])).fingerprint
    assert halving["SEARCH"]["MODELS_PER_WORKER"] == 3


def test_method_builds_its_controller_at_the_identity():
    for method, cls in (("ppo", PPOController), ("random", RandomSearchController)):
        for constraints in ("all", "none"):
            cfg = tiny_search_cfg(opts=["SEARCH.METHOD", method,
                                        "SEARCH.CONSTRAINTS", constraints])
            settings_of(cfg)
            controller = build_controller(settings_of(cfg))
            space = SearchSpace.from_config(cfg)
            assert type(controller) is cls and controller.dim == space.dim
            torch.testing.assert_close(controller.mu, torch.tensor(space.initial_mu()))
    assert type(build_controller(settings_of(tiny_search_cfg()))) is PPOController  # the default


def test_random_search_needs_no_row_for_mu():
    opts = ["SEARCH.SAMPLES_PER_ITER", 1, "SEARCH.BASELINE", "mu"]
    settings_of(tiny_search_cfg(opts=opts + ["SEARCH.METHOD", "random"]))
    with pytest.raises(ValueError, match="SAMPLES_PER_ITER must be >= 2"):
        settings_of(tiny_search_cfg(opts=opts + ["SEARCH.METHOD", "ppo"]))


def test_fingerprint_covers_method_and_constraints():
    """Resuming with another method or curve parameterization is another search (BF1: "all"
    and "no_monotonic" have the same dimension, so only the fingerprint tells them apart)."""
    base = settings_of(tiny_search_cfg("a")).fingerprint
    assert (base["SEARCH"]["METHOD"], base["SEARCH"]["CONSTRAINTS"]) == ("ppo", "all")
    for key, value in (("SEARCH.METHOD", "random"), ("SEARCH.CONSTRAINTS", "no_monotonic")):
        assert base != settings_of(tiny_search_cfg("a", [key, value])).fingerprint


OPTIONS = ["SEARCH.SELECTION.TOP_K", 1, "SEARCH.SELECTION.SEEDS", 2, "SEARCH.PROXY.SEEDS",
           "per_iteration", "SEARCH.PROXY.HALVING", [0.5], "SEARCH.ADVANTAGE", "rank",
           "SEARCH.PROXY.MAX_ITER", 4, "SEARCH.MIRRORED", True, "SEARCH.SIGMA_END", 0.1,
           "SEARCH.MAX_MU_STEP", 0.2]


@pytest.fixture(scope="module")
def with_options(tmp_path_factory):
    """A tiny search with every option of docs/method.md §4.6 on, run straight through."""
    out = str(tmp_path_factory.mktemp("options"))
    result = SearchRunner(settings_of(tiny_search_cfg(out, OPTIONS)), log=lambda s: None).run()
    return out, result


@pytest.mark.slow
def test_search_with_every_option_writes_the_selected_answer(with_options):
    out, result = with_options
    trials = _trials(out)
    search = [r for r in trials if r["stage"] == "search"]
    selection = [r for r in trials if r["stage"] == "selection"]
    # per-iteration proxy seeds; halving at 2 of 4 proxy iterations keeps 1 of each 3
    assert [r["proxy_seed"] for r in search] == [1, 1, 1, 1001, 1001, 1001]
    assert sorted(r["proxy_iters"] for r in search) == [2, 2, 2, 2, 4, 4]
    # selection: the best sampled candidate and the final mean, 2 fresh seeds each, full length
    assert [(r["iteration"], r["proxy_seed"], r["proxy_iters"]) for r in selection] == [
        (2, 1_000_001, 4), (2, 1_000_001, 4), (2, 2_000_001, 4), (2, 2_000_001, 4)]
    best = load_params(os.path.join(out, "best_params.json"))
    sampled = load_params(os.path.join(out, "best_sampled_params.json"))
    chosen = result.selected
    assert best.reward == pytest.approx(chosen["mean_reward"])
    assert best.provenance["candidate"] == chosen["source"] in ([1, 0], [1, 1], [1, 2], [0, 0],
                                                                [0, 1], [0, 2], "mu")
    assert best.provenance["source"] == "segloss_d2 search"  # not overwritten by the candidate
    assert best.provenance["fresh_rewards"] == chosen["rewards"]
    assert sampled.reward == result.best_trial["reward"]
    assert result.best_trial["proxy_iters"] == 4  # a fully trained proxy
    flat = [v for c in best.thetas for curve in c for v in curve]
    assert flat == pytest.approx(chosen["theta"])


@pytest.mark.slow
def test_kill_and_resume_with_every_option_equals_uninterrupted(with_options, tmp_path,
                                                                monkeypatch):
    ref_out, ref_result = with_options
    out = str(tmp_path)
    real = backends.train_candidates
    def dies_at(kill_at):
        calls = []

        def dies(*args, **kwargs):
            calls.append(1)
            if len(calls) == kill_at:
                raise _Killed
            return real(*args, **kwargs)

        return dies

    for kill_at in (2, 3):  # during iteration 2, then during the selection
        monkeypatch.setattr(backends, "train_candidates", dies_at(kill_at))
        with pytest.raises(_Killed):
            SearchRunner(settings_of(tiny_search_cfg(out, OPTIONS)), resume=kill_at == 3,
                         log=lambda s: None).run()
    monkeypatch.setattr(backends, "train_candidates", real)
    result = SearchRunner(settings_of(tiny_search_cfg(out, OPTIONS)), resume=True,
                          log=lambda s: None).run()
    assert [strip_timing(r) for r in _trials(out)] == [strip_timing(r) for r in
                                                       _trials(ref_out)]
    assert result.selected == ref_result.selected and result.final_mu == ref_result.final_mu
    for name in ("best_params.json", "best_sampled_params.json"):
        with open(os.path.join(out, name)) as f, open(os.path.join(ref_out, name)) as g:
            assert json.load(f)["terms"] == json.load(g)["terms"]


@pytest.mark.slow
def test_random_search_with_free_curves_end_to_end(tmp_path):
    """One real tiny random search (2 x 3) with SEARCH.CONSTRAINTS none, through the runner."""
    out = str(tmp_path)
    cfg = tiny_search_cfg(out, ["SEARCH.METHOD", "random", "SEARCH.CONSTRAINTS", "none"])
    result = SearchRunner(settings_of(cfg), config_file="tiny.yaml", log=lambda s: None).run()
    trials = _trials(out)
    assert [(r["iteration"], r["index"]) for r in trials] == [(t, i) for t in (0, 1)
                                                              for i in range(3)]
    assert all(r["status"] == "ok" and 0 <= r["reward"] <= 1 for r in trials)
    mu0 = SearchSpace.from_config(cfg).initial_mu()
    assert len(mu0) == 32  # mIoU 2 x 8 + BF1 4 x 4: free end heights
    assert all(r["theta"] != pytest.approx(mu0, abs=1e-3) for r in trials)  # all random
    ckpt = torch.load(os.path.join(out, "controller.pt"), weights_only=True)
    assert ckpt["controller"]["config"]["method"] == "random"

    best = load_params(os.path.join(out, "best_params.json"), expected_metrics=["mIoU", "BF1"])
    assert best.constraints == ["none", "none"]
    assert best.reward == result.best_trial["reward"] == max(r["reward"] for r in trials)
    flat = [v for curves in best.thetas for curve in curves for v in curve]
    assert flat == pytest.approx(result.best_trial["theta"])
    # the mean never moved: final_mu_params.json holds the initial identity curves
    assert result.final_mu == pytest.approx(mu0, abs=1e-6)
    mu = load_params(os.path.join(out, "final_mu_params.json"))
    assert mu.constraints == ["none", "none"]
    assert [v for c in mu.thetas for curve in c for v in curve] == pytest.approx(mu0, abs=1e-6)
    x = torch.linspace(0, 1, 501, dtype=torch.float64)
    for curves in mu.control_points:
        for cp in curves:
            assert (bezier_curve(x, cp) - x).abs().max() < 1e-3
    for name in ("best_curves.png", "final_mu_curves.png", "reward_curve.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name

    # best_params.json of the ablation is what LOSS_TYPE searched loads
    loss = build_sem_seg_loss(tiny_search_cfg(opts=[
        "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
        "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", os.path.join(out, "best_params.json")]))
    logits = torch.randn(2, 7, 16, 16)
    labels = torch.randint(0, 7, (2, 16, 16))
    assert torch.isfinite(loss(logits, labels))

@pytest.mark.parametrize("head", ["DeepLabV3PlusHead", "SemSegFPNHead"])
def test_head_that_ignores_loss_fn_is_rejected(head):
    cfg = tiny_search_cfg(opts=["MODEL.SEM_SEG_HEAD.NAME", head])
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NAME") as e:
        settings_of(cfg)
    for name in (head, "loss_fn", "DeepLabV3PlusSegLossHead", "SemSegFPNSegLossHead"):
        assert name in str(e.value)


def test_unregistered_head_is_rejected():
    cfg = tiny_search_cfg(opts=["MODEL.SEM_SEG_HEAD.NAME", "NoSuchHead"])
    with pytest.raises(ValueError, match="'NoSuchHead' is not registered"):
        settings_of(cfg)


def test_user_head_with_loss_fn_is_accepted():
    from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
    from detectron2.projects.deeplab import DeepLabV3PlusHead

    from segloss_d2.modeling import LossFnHead

    class UserLossFnHead(LossFnHead, DeepLabV3PlusHead):  # declares the contract
        def __init__(self, input_shape, loss_fn=None, **kwargs):
            super().__init__(input_shape, **kwargs)
            self.loss_fn = loss_fn

    if "UserLossFnHead" not in SEM_SEG_HEADS_REGISTRY:
        SEM_SEG_HEADS_REGISTRY.register(UserLossFnHead)
    for head in ("UserLossFnHead", "SemSegFPNSegLossHead"):
        settings_of(tiny_search_cfg(opts=["MODEL.SEM_SEG_HEAD.NAME", head]))


def test_fingerprint_ignores_how_and_where_but_not_what():
    base = settings_of(tiny_search_cfg("a")).fingerprint
    same = settings_of(tiny_search_cfg("b", ["SEARCH.BACKEND", "ray",
                                                           "SEARCH.MODELS_PER_WORKER", 1,
                                                           "MODEL.DEVICE", "cuda"])).fingerprint
    assert base == same
    assert base != settings_of(tiny_search_cfg("a", ["SEARCH.SEED", 2])).fingerprint
    assert base != settings_of(tiny_search_cfg("a", ["SOLVER.BASE_LR", 0.1])).fingerprint
    json.dumps(base)


_PAPER_CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), "configs", "*_*.yaml")))


@pytest.mark.parametrize("path", _PAPER_CONFIGS, ids=os.path.basename)
def test_paper_search_configs(path):
    from segloss_d2.engine import get_segloss_cfg
    from segloss_d2.metric_names import canonical_metric

    cfg = get_segloss_cfg()
    cfg.merge_from_file(path)
    settings_of(cfg, check_files=False)  # keys only: no Cityscapes or VOC files here
    dataset, *metrics = os.path.basename(path)[:-5].split("_")
    # file names use the paper's spellings (voc_gacc.yaml: gAcc = pACC); voc_miou_bf1.yaml is
    # the combined target
    space = SearchSpace.from_config(cfg)
    assert space.metrics == [canonical_metric(m) for m in metrics]
    dims = {"miou": 12, "fwiou": 12, "biou": 12, "bf1": 8, "macc": 6, "gacc": 6}
    assert space.dim == sum(dims[m] for m in metrics)
    assert cfg.SEARCH.HOLDOUT.SIZE == {"voc": 1500, "cityscapes": 500}[dataset]
    assert (cfg.SEARCH.ITERATIONS, cfg.SEARCH.SAMPLES_PER_ITER, cfg.SEARCH.PROXY.MAX_ITER) == \
        (12, 32, 1000)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, tuple(cfg.INPUT.CROP.SIZE)) == \
        (32, 0.02, (128, 128))
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.NORM == "BN"
    # the default answer: the 3 best sampled candidates and the mean re-evaluated with 2 fresh
    # seeds each (8 proxy trainings after the paper's 384); TOP_K 0 is the paper's best sampled
    selection = settings_of(cfg, check_files=False).selection
    assert (selection.top_k, len(selection.seeds), selection.max_trainings) == (3, 2, 8)
    cfg.merge_from_list(["SEARCH.SELECTION.TOP_K", 0])
    assert settings_of(cfg, check_files=False).selection is None


@pytest.mark.slow
def test_guarded_search_measures_the_reference_once_and_resume_keeps_it(tmp_path, monkeypatch):
    from segloss_d2.search import trial

    out = str(tmp_path)
    opts = ["SEARCH.REWARD_GUARD", "mIoU>=1.5", "SEARCH.GUARD_PENALTY", 0.5,
            "SEARCH.MODELS_PER_WORKER", 1]
    calls, real_reference = [], trial.train_reference

    def counted(*args, **kwargs):
        calls.append(kwargs.get("seed"))
        return real_reference(*args, **kwargs)

    monkeypatch.setattr(trial, "train_reference", counted)
    real, groups = backends.train_candidates, []

    def dies_at_the_third_group(*args, **kwargs):
        groups.append(1)
        if len(groups) == 3:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "train_candidates", dies_at_the_third_group)
    with pytest.raises(_Killed):
        SearchRunner(settings_of(tiny_search_cfg(out, opts)), log=lambda s: None).run()
    assert calls == [1]  # the cross-entropy proxy, with the search's proxy seed
    with open(os.path.join(out, "meta.json")) as f:
        reference = json.load(f)["records"]["guard_reference"]
    assert reference["metric"] == "mIoU" and 0 < reference["value"] <= 1
    monkeypatch.setattr(backends, "train_candidates", real)
    lines = []
    SearchRunner(settings_of(tiny_search_cfg(out, opts)), resume=True, log=lines.append).run()
    assert calls == [1]  # not measured again
    assert any(f"reference mIoU {reference['value']:.4f}" in line for line in lines)
    trials = _trials(out)
    threshold = 1.5 * reference["value"]  # a guard no candidate can meet: every one is cut
    for r in trials:
        value = r["metrics"]["mIoU"] / 100
        assert r["guard"] == pytest.approx({"metric": "mIoU", "value": value,
                                            "threshold": threshold,
                                            "penalty": 0.5 * (threshold - value) / threshold})
        assert r["reward"] == pytest.approx(r["unguarded_reward"] - r["guard"]["penalty"])
    best = load_params(os.path.join(out, "best_params.json"))
    assert best.reward == max(r["reward"] for r in trials)


@pytest.mark.slow
def test_guard_reference_from_the_config_trains_no_reference(tmp_path, monkeypatch):
    from segloss_d2.search import trial

    monkeypatch.setattr(trial, "train_reference", lambda *a, **k: pytest.fail("measured"))
    out = str(tmp_path)
    SearchRunner(settings_of(tiny_search_cfg(out, ["SEARCH.REWARD_GUARD", "BF1>=0.9",
                                       "SEARCH.GUARD_REFERENCE", 0.5])), log=lambda s: None).run()
    assert all(r["guard"]["threshold"] == pytest.approx(0.45) for r in _trials(out))


@pytest.mark.parametrize("key,value,match", [
    ("SEARCH.REWARD_GUARD", "mIoU>0.9", "SEARCH.REWARD_GUARD 'mIoU>0.9' is not a guard"),
    ("SEARCH.GUARD_REFERENCE", 40.0, "SEARCH.GUARD_REFERENCE"),
    ("SEARCH.GUARD_PENALTY", -1.0, "SEARCH.GUARD_PENALTY"),
])
def test_bad_guard_values(key, value, match):
    with pytest.raises(ValueError, match=match):
        settings_of(tiny_search_cfg(opts=["SEARCH.REWARD_GUARD", "mIoU>=0.9", key,
                                                     value]))
