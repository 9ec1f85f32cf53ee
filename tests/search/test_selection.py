"""Answer selection by re-evaluation with fresh proxy seeds (pure, no detectron2)."""
import pytest
import torch

from segloss_d2.search.seeds import iteration_seed, selection_seeds
from segloss_d2.search.selection import Selection
from segloss_d2.search.state import search_stage_trials, trial_order_key


def _trial(it, index, reward, theta, status="ok", **extra):
    return {"iteration": it, "index": index, "reward": reward, "theta": theta, "status": status,
            **extra}


TRIALS = [
    _trial(0, 0, 0.40, [0.5, 0.5]),
    _trial(0, 1, 0.45, [0.1, 0.2]),
    _trial(0, 2, 0.90, [0.3, 0.3], status="diverged"),  # never a candidate
    _trial(1, 0, 0.45, [0.6, 0.4]),                      # ties with (0, 1): the later wins
    _trial(1, 1, 0.42, [0.1, 0.2]),                      # a repeated theta counts once
    _trial(1, 2, 0.30, [0.9, 0.9]),
    _trial(2, 0, 0.99, [0.7, 0.7], stage="selection"),   # a re-evaluation, not a sample
]


def test_order_key_prefers_longer_training_then_reward_then_later():
    assert max(search_stage_trials(TRIALS), key=trial_order_key)["theta"] == [0.6, 0.4]
    halved = [_trial(0, 0, 0.9, [0.1], proxy_iters=50), _trial(0, 1, 0.4, [0.2], proxy_iters=100)]
    assert max(halved, key=trial_order_key)["index"] == 1
    assert [r["index"] for r in search_stage_trials(TRIALS, ok_only=False)] == [0, 1, 2, 0, 1, 2]


def test_candidates_are_the_top_k_distinct_and_the_mean():
    sel = Selection(top_k=3, seeds=[11, 12])
    cands = sel.candidates(TRIALS, [0.55, 0.5])
    assert [c["source"] for c in cands] == [[1, 0], [0, 1], [0, 0], "mu"]
    assert [c["search_reward"] for c in cands] == [0.45, 0.45, 0.40, None]
    # the mean is not re-evaluated twice when it equals a sampled candidate
    assert [c["source"] for c in sel.candidates(TRIALS, [0.6, 0.4])] == [[1, 0], [0, 1], [0, 0]]
    assert sel.max_trainings == 8


def test_plan_is_seed_major_and_choose_takes_the_best_mean():
    sel = Selection(top_k=2, seeds=[11, 12])
    cands = sel.candidates(TRIALS, [0.55, 0.5])  # 3 candidates
    thetas, seeds = sel.plan(cands)
    assert seeds == [11, 11, 11, 12, 12, 12]
    assert torch.equal(thetas[:3], thetas[3:]) and thetas.shape == (6, 2)
    assert thetas[2].tolist() == pytest.approx([0.55, 0.5])
    # the best sampled one (row 0) was lucky: on fresh seeds the mean (row 2) is better
    rewards = [0.40, 0.41, 0.44, 0.39, 0.42, 0.43]
    chosen = sel.choose(cands, [{"reward": r} for r in rewards])
    assert chosen["source"] == "mu" and chosen["mean_reward"] == pytest.approx(0.435)
    assert [row["rewards"] for row in chosen["table"]] == [[0.40, 0.39], [0.41, 0.42],
                                                           [0.44, 0.43]]
    # ties go to the earlier (better sampled) candidate
    tie = sel.choose(cands, [{"reward": 0.5}] * 6)
    assert tie["source"] == [1, 0]
    with pytest.raises(ValueError, match="expected 6"):
        sel.choose(cands, [{"reward": 0.5}] * 5)


def test_bad_selection_arguments():
    for kwargs, match in ((dict(top_k=0, seeds=[1]), "top_k"),
                          (dict(top_k=True, seeds=[1]), "top_k"),
                          (dict(top_k=2, seeds=[]), "seeds"),
                          (dict(top_k=2, seeds=[1, 1]), "seeds"),
                          (dict(top_k=2, seeds=[-1]), "seeds")):
        with pytest.raises(ValueError, match=match):
            Selection(**kwargs)
    with pytest.raises(ValueError, match="nothing to re-evaluate"):
        Selection(1, [1], include_mu=False).plan([])


def test_proxy_seeds():
    assert [iteration_seed(3, "fixed", t) for t in range(3)] == [3, 3, 3]
    assert [iteration_seed(3, "per_iteration", t) for t in range(3)] == [3, 1003, 2003]
    fresh = selection_seeds(3, 2)
    assert fresh == [1_000_003, 2_000_003]
    assert not set(fresh) & {iteration_seed(3, "per_iteration", t) for t in range(999)}
    with pytest.raises(ValueError, match="SEARCH.PROXY.SEEDS"):
        iteration_seed(3, "random", 0)
