import json
import logging

import pytest
import torch

from segloss_d2.search.loop import run_search
from segloss_d2.search.ppo import PPOController, RandomSearchController
from segloss_d2.search.selection import Selection
from segloss_d2.search.state import SearchState

CONFIG = {"target_metric": "synthetic", "iterations": 3, "samples_per_iter": 4, "seed": 0}
ITERS, M, DIM = 3, 4, 3
OPTIMUM = torch.tensor([0.8, 0.2, 0.65])


class Killed(Exception):
    """Stands in for SIGKILL / KeyboardInterrupt at an arbitrary point."""


def _controller():
    return PPOController(DIM, 0.5, ppo_steps=20, seed=0)


def _result(theta):
    reward = 1.0 - float(((theta - OPTIMUM) ** 2).sum()) / DIM
    return {"reward": reward, "metrics": {"synthetic": reward}, "seconds": float(theta[0]),
            "control_points": theta.tolist()}


def _evaluate(budget=None, report=True):
    """A backend that finishes ``budget`` trials in this 'process' and then gets killed."""
    done = [0]

    def evaluate(iteration, indices, thetas, on_trial_done, **kwargs):
        assert thetas.shape == (len(indices), DIM)
        results = []
        for index, theta in zip(indices, thetas):
            if budget is not None and done[0] >= budget:
                raise Killed
            results.append(_result(theta))
            if report:
                on_trial_done(index, results[-1])
            done[0] += 1
        return None if report else results

    return evaluate


def _open(directory, fresh):
    if fresh:
        return SearchState.create(str(directory), CONFIG)
    return SearchState.resume(str(directory), CONFIG)


def _finish(directory, fresh=False, **kwargs):
    return run_search(_controller(), _open(directory, fresh), _evaluate(**kwargs), ITERS, M,
                      log=lambda line: None)


def _outcome(directory, result):
    trials = [json.loads(line) for line in (directory / "trials.jsonl").read_text().splitlines()]
    ckpt = torch.load(str(directory / "controller.pt"), weights_only=True)
    return trials, result, ckpt


def _assert_same(a, b, method="ppo"):
    trials_a, result_a, ckpt_a = a
    trials_b, result_b, ckpt_b = b
    assert trials_a == trials_b
    assert result_a == result_b
    assert ckpt_a["iteration"] == ckpt_b["iteration"] == ITERS
    ca, cb = ckpt_a["controller"], ckpt_b["controller"]
    assert torch.equal(ca["mu_x"], cb["mu_x"])
    assert torch.equal(ca["generator"], cb["generator"])
    assert ca["config"] == cb["config"] and ca["config"]["method"] == method
    if method == "ppo":  # random search never steps its optimizer
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ca["optimizer"]["state"][0][key],
                               cb["optimizer"]["state"][0][key])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    return _outcome(directory, _finish(directory, fresh=True))


def test_uninterrupted_run(reference, tmp_path):
    trials, result, _ = reference
    assert [(r["iteration"], r["index"]) for r in trials] == [(t, i) for t in range(ITERS)
                                                               for i in range(M)]
    assert all(r["status"] == "ok" for r in trials)
    # baseline "mu": sample 0 of every iteration is the mean of that iteration
    assert trials[0]["theta"] == pytest.approx([0.5] * DIM)
    best = max(trials, key=lambda r: r["reward"])
    assert result.best_trial == best
    # the search made progress toward the optimum
    start = float(((torch.full((DIM,), 0.5) - OPTIMUM) ** 2).sum())
    assert float(((torch.tensor(result.final_mu) - OPTIMUM) ** 2).sum()) < start
    # the returned-list reporting path gives the same search
    _assert_same(reference, _outcome(tmp_path, _finish(tmp_path, fresh=True, report=False)))


@pytest.mark.parametrize("budgets", [[0], [1], [4], [5, 3], [3, 0, 2], [11]])
def test_kill_in_evaluate_then_resume_equals_uninterrupted(reference, tmp_path, budgets):
    for n, budget in enumerate(budgets):
        with pytest.raises(Killed):
            _finish(tmp_path, fresh=(n == 0), budget=budget)
    _assert_same(reference, _outcome(tmp_path, _finish(tmp_path)))


@pytest.mark.parametrize("call", range(2 * ITERS))
@pytest.mark.parametrize("after_write", [False, True])
def test_kill_around_checkpoint_then_resume_equals_uninterrupted(
    reference, tmp_path, monkeypatch, call, after_write
):
    # save_controller calls alternate: samples of iteration t, then the update of iteration t.
    # Killing before the update's write is the gap between the last trial and the checkpoint.
    original = SearchState.save_controller
    calls = [0]

    def dying_save(self, *args, **kwargs):
        if calls[0] == call and not after_write:
            raise Killed
        original(self, *args, **kwargs)
        if calls[0] == call:
            raise Killed
        calls[0] += 1

    with monkeypatch.context() as patch:
        patch.setattr(SearchState, "save_controller", dying_save)
        with pytest.raises(Killed):
            _finish(tmp_path, fresh=True)
    _assert_same(reference, _outcome(tmp_path, _finish(tmp_path)))


def test_kill_during_trial_append_then_resume_equals_uninterrupted(reference, tmp_path):
    with pytest.raises(Killed):
        _finish(tmp_path, fresh=True, budget=6)
    with open(tmp_path / "trials.jsonl", "ab") as f:  # the torn write of trial 7
        f.write(b'{"control_points": [0.51, 0.2')
    _assert_same(reference, _outcome(tmp_path, _finish(tmp_path)))


def test_finished_search_resumes_to_the_same_result(reference, tmp_path):
    first = _finish(tmp_path, fresh=True)
    before = (tmp_path / "trials.jsonl").read_bytes()
    calls = []
    again = run_search(_controller(), _open(tmp_path, False), lambda *a: calls.append(a), ITERS, M,
                       log=lambda line: None)
    assert again == first and calls == []
    assert (tmp_path / "trials.jsonl").read_bytes() == before


def test_log_line_per_trial_and_iteration_hook(tmp_path):
    lines, hooks = [], []
    run_search(_controller(), _open(tmp_path, True), _evaluate(), ITERS, M, log=lines.append,
               on_iteration_end=lambda t, stats, records: hooks.append((t, stats, records)))
    trial_lines = [line for line in lines if " trial " in line]
    assert len(trial_lines) == ITERS * M and all("ETA" in line for line in trial_lines)
    assert "12/12 trials" in trial_lines[-1]
    assert [h[0] for h in hooks] == list(range(ITERS))
    assert [r["index"] for r in hooks[0][2]] == list(range(M))
    assert hooks[-1][1]["iteration"] == ITERS


def test_default_log_is_the_module_logger(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="segloss_d2.search.loop")
    run_search(_controller(), _open(tmp_path, True), _evaluate(), 1, M)
    lines = [r.getMessage() for r in caplog.records if r.name == "segloss_d2.search.loop"]
    assert sum(" trial " in line for line in lines) == M
    assert any("iteration 1/1 done" in line for line in lines)
    assert capsys.readouterr().out == ""


def test_non_finite_reward_is_logged_as_diverged(tmp_path):
    def evaluate(iteration, indices, thetas, on_trial_done, **kwargs):
        return [dict(_result(t), reward=float("nan") if i == 2 else _result(t)["reward"])
                for i, t in zip(indices, thetas)]

    run_search(_controller(), _open(tmp_path, True), evaluate, 1, M, log=lambda line: None)
    record = SearchState.resume(str(tmp_path), CONFIG).finished_trials(0)[2]
    assert record["reward"] == 0.0 and record["status"] == "diverged"


@pytest.mark.parametrize(
    "evaluate,err,match",
    [
        (lambda t, idx, th, done, **kw: None, RuntimeError, "without finishing"),
        (lambda t, idx, th, done, **kw: done(7, {"reward": 0.1}), ValueError, "not requested"),
        (lambda t, idx, th, done, **kw: [done(0, {"reward": 0.1}), done(0, {"reward": 0.1})],
         ValueError, "already reported"),
        (lambda t, idx, th, done, **kw: [{"reward": 0.1}], ValueError, "returned 1 results"),
        (lambda t, idx, th, done, **kw: [{"reward": 0.1, "index": 3}] * len(idx), ValueError,
         "must not set"),
        (lambda t, idx, th, done, **kw: [{"reward": 0.1, "status": "weird"}] * len(idx), ValueError,
         "status"),
        (lambda t, idx, th, done, **kw: [{"metrics": {}}] * len(idx), ValueError, "'reward'"),
    ],
)
def test_bad_backend_behaviour_raises(tmp_path, evaluate, err, match):
    with pytest.raises(err, match=match):
        run_search(_controller(), _open(tmp_path, True), evaluate, ITERS, M,
                   log=lambda line: None)


def test_resume_with_other_samples_per_iter_raises(tmp_path):
    with pytest.raises(Killed):
        _finish(tmp_path, fresh=True, budget=2)
    with pytest.raises(ValueError, match="samples_per_iter"):
        run_search(_controller(), _open(tmp_path, False), _evaluate(), ITERS, M + 1,
                   log=lambda line: None)


# ----------------------------------------------------------------------------------------------
# Random search through the same loop

RANDOM_CONFIG = dict(CONFIG, method="random")


def _random_finish(directory, fresh=False, **kwargs):
    state = (SearchState.create(str(directory), RANDOM_CONFIG) if fresh
             else SearchState.resume(str(directory), RANDOM_CONFIG))
    return run_search(RandomSearchController(DIM, 0.5, seed=0), state, _evaluate(**kwargs), ITERS,
                      M, log=lambda line: None)


@pytest.fixture(scope="module")
def random_reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("random_reference")
    return _outcome(directory, _random_finish(directory, fresh=True))


def test_random_search_uninterrupted_run(random_reference, reference):
    trials, result, ckpt = random_reference
    assert [(r["iteration"], r["index"]) for r in trials] == [(t, i) for t in range(ITERS)
                                                               for i in range(M)]
    assert all(r["status"] == "ok" for r in trials)
    # every candidate is random: none is mu (PPO's sample 0 is, see test_uninterrupted_run)
    assert all(r["theta"] != pytest.approx([0.5] * DIM, abs=1e-3) for r in trials)
    assert len({tuple(r["theta"]) for r in trials}) == ITERS * M
    assert result.best_trial == max(trials, key=lambda r: r["reward"])
    # mu never moved, while PPO's did under the same rewards
    assert result.final_mu == [0.5] * DIM
    assert reference[1].final_mu != pytest.approx([0.5] * DIM, abs=1e-3)
    assert ckpt["controller"]["iteration"] == ITERS
    # the draws are the controller's own: a fresh controller with the seed reproduces them
    again = RandomSearchController(DIM, 0.5, seed=0)
    for t in range(ITERS):
        assert again.sample(M).tolist() == [r["theta"] for r in trials[t * M:(t + 1) * M]]


@pytest.mark.parametrize("budgets", [[0], [1], [4], [5, 3], [3, 0, 2], [11]])
def test_random_search_kill_in_evaluate_then_resume_equals_uninterrupted(
    random_reference, tmp_path, budgets
):
    for n, budget in enumerate(budgets):
        with pytest.raises(Killed):
            _random_finish(tmp_path, fresh=(n == 0), budget=budget)
    _assert_same(random_reference, _outcome(tmp_path, _random_finish(tmp_path)), "random")


@pytest.mark.parametrize("call", range(2 * ITERS))
def test_random_search_kill_after_checkpoint_then_resume_equals_uninterrupted(
    random_reference, tmp_path, monkeypatch, call
):
    original = SearchState.save_controller
    calls = [0]

    def dying_save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if calls[0] == call:
            raise Killed
        calls[0] += 1

    with monkeypatch.context() as patch:
        patch.setattr(SearchState, "save_controller", dying_save)
        with pytest.raises(Killed):
            _random_finish(tmp_path, fresh=True)
    _assert_same(random_reference, _outcome(tmp_path, _random_finish(tmp_path)), "random")


def test_resuming_a_ppo_search_with_random_search_is_refused(tmp_path):
    with pytest.raises(Killed):
        _finish(tmp_path, fresh=True, budget=5)
    with pytest.raises(ValueError, match="method"):
        run_search(RandomSearchController(DIM, 0.5, ppo_steps=20, seed=0),
                   SearchState.resume(str(tmp_path), CONFIG), _evaluate(), ITERS, M,
                   log=lambda line: None)


# ----------------------------------------------------------------------------------------------
# Proxy seeds, training lengths and the selection stage

SELECT_CONFIG = dict(CONFIG, selection=True)


def _seeded_evaluate(budget=None, calls=None):
    """A backend whose reward depends on the proxy seed (a noisy proxy), recording every call's
    (iteration, indices, seeds, stage); it gets killed after ``budget`` trials."""
    done = [0]

    def evaluate(iteration, indices, thetas, on_trial_done, seeds=None, stage="search"):
        if calls is not None:
            calls.append((iteration, list(indices), list(seeds), stage))
        for index, theta, seed in zip(indices, thetas, seeds):
            if budget is not None and done[0] >= budget:
                raise Killed
            result = _result(theta)
            result["reward"] += 0.05 * ((seed * 7919) % 13) / 13  # the seed's luck
            on_trial_done(index, result)
            done[0] += 1

    return evaluate


def _select_finish(directory, fresh=False, **kwargs):
    state = (SearchState.create(str(directory), SELECT_CONFIG) if fresh
             else SearchState.resume(str(directory), SELECT_CONFIG))
    return run_search(_controller(), state, _seeded_evaluate(**kwargs), ITERS, M,
                      log=lambda line: None, proxy_seed=lambda t: 100 + t,
                      selection=Selection(top_k=2, seeds=[7, 8]))


@pytest.fixture(scope="module")
def select_reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("select_reference")
    return _outcome(directory, _select_finish(directory, fresh=True))


def test_selection_stage_re_evaluates_and_chooses_by_fresh_seeds(select_reference, tmp_path):
    trials, result, ckpt = select_reference
    search = [r for r in trials if r["stage"] == "search"]
    selection = [r for r in trials if r["stage"] == "selection"]
    assert len(search) == ITERS * M
    assert [r["proxy_seed"] for r in search] == [100 + t for t in range(ITERS) for _ in range(M)]
    # 2 best sampled + the final mean, each with the 2 fresh seeds, logged as iteration ITERS
    assert [(r["iteration"], r["index"], r["proxy_seed"]) for r in selection] == [
        (ITERS, i, 7 if i < 3 else 8) for i in range(6)]
    assert ckpt["iteration"] == ITERS and ckpt["samples"].shape == (6, DIM)
    assert ckpt["samples_per_iter"] == M
    chosen = result.selected
    table = chosen["table"]
    assert [row["source"] for row in table][-1] == "mu"
    assert table[-1]["theta"] == pytest.approx(result.final_mu)
    assert chosen["mean_reward"] == max(row["mean_reward"] for row in table)
    for j, row in enumerate(table):
        assert row["rewards"] == [selection[j]["reward"], selection[3 + j]["reward"]]
    # the best sampled trial is still the best *sampled* one, never a re-evaluation
    assert result.best_trial == max(search, key=lambda r: (r["reward"], r["iteration"],
                                                           r["index"]))


@pytest.mark.parametrize("budget", [ITERS * M, ITERS * M + 2, ITERS * M + 5])
def test_kill_during_selection_then_resume_equals_uninterrupted(select_reference, tmp_path,
                                                                budget):
    with pytest.raises(Killed):
        _select_finish(tmp_path, fresh=True, budget=budget)
    calls = []
    state = SearchState.resume(str(tmp_path), SELECT_CONFIG)
    result = run_search(_controller(), state, _seeded_evaluate(calls=calls), ITERS, M,
                        log=lambda line: None, proxy_seed=lambda t: 100 + t,
                        selection=Selection(top_k=2, seeds=[7, 8]))
    assert all(stage == "selection" for _, _, _, stage in calls)  # only what was missing
    assert sum(len(idx) for _, idx, _, _ in calls) == ITERS * M + 6 - budget
    outcome = _outcome(tmp_path, result)
    assert outcome[0] == select_reference[0] and outcome[1] == select_reference[1]


def test_a_finished_selection_resumes_to_the_same_answer(select_reference, tmp_path):
    first = _select_finish(tmp_path, fresh=True)
    calls = []
    state = SearchState.resume(str(tmp_path), SELECT_CONFIG)
    again = run_search(_controller(), state, _seeded_evaluate(calls=calls), ITERS, M,
                       log=lambda line: None, proxy_seed=lambda t: 100 + t,
                       selection=Selection(top_k=2, seeds=[7, 8]))
    assert calls == [] and again == first


def test_training_lengths_reach_the_controller(tmp_path):
    """Results with ``proxy_iters`` (successive halving) are ranked by it: a controller without
    rank advantages refuses unequal lengths, one with them accepts."""
    def halving(iteration, indices, thetas, on_trial_done, seeds=None, stage="search"):
        for index, theta in zip(indices, thetas):
            on_trial_done(index, dict(_result(theta), proxy_iters=10 if index % 2 else 20))

    with pytest.raises(ValueError, match="rank"):
        run_search(_controller(), _open(tmp_path / "raw", True), halving, ITERS, M,
                   log=lambda line: None)
    rank = PPOController(DIM, 0.5, ppo_steps=20, advantage="rank", seed=0)
    result = run_search(rank, _open(tmp_path / "rank", True), halving, ITERS, M,
                        log=lambda line: None)
    assert result.best_trial["proxy_iters"] == 20  # the best of the fully trained ones
