import io

import pytest
import torch

from segloss_d2.search.distributions import TruncatedNormal
from segloss_d2.search.ppo import CONTROLLERS, PPOController, RandomSearchController

OPTIMUM = torch.tensor([0.85, 0.15, 0.7, 0.3, 0.9, 0.1])


def _reward(thetas):
    dim = thetas.shape[1]
    return 1.0 - ((thetas - OPTIMUM[:dim]) ** 2).sum(dim=1) / dim


def _run(controller, iterations, samples=16):
    for _ in range(iterations):
        thetas = controller.sample(samples)
        controller.update(thetas, _reward(thetas))


@pytest.mark.parametrize("ratio", ["per_dim", "joint"])
@pytest.mark.parametrize("baseline", ["mu", "mean"])
def test_moves_mu_toward_optimum(ratio, baseline):
    controller = PPOController(6, 0.5, ratio=ratio, baseline=baseline, seed=0)
    start = (controller.mu - OPTIMUM).norm().item()
    _run(controller, 6)
    end = (controller.mu - OPTIMUM).norm().item()
    assert end < 0.6 * start, (start, end)
    # every coordinate moved toward its optimum side of 0.5
    assert ((controller.mu > 0.5) == (OPTIMUM > 0.5)).all(), controller.mu


def test_sample_shape_range_and_row0():
    controller = PPOController(4, [0.2, 0.4, 0.6, 0.8], seed=3)
    thetas = controller.sample(9)
    assert thetas.shape == (9, 4) and thetas.dtype == torch.float32
    assert (thetas >= 0).all() and (thetas <= 1).all()
    assert torch.equal(thetas[0], controller.mu)
    assert not torch.equal(thetas[1], controller.mu)
    mean_ctrl = PPOController(4, [0.2, 0.4, 0.6, 0.8], baseline="mean", seed=3)
    assert not torch.equal(mean_ctrl.sample(9)[0], mean_ctrl.mu)


def test_mu_init_maps_through_logit():
    controller = PPOController(6, [0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5])
    torch.testing.assert_close(controller.mu, torch.tensor([0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5]))


def test_seed_controls_samples():
    a, b, c = (PPOController(3, 0.5, seed=s).sample(5) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _reference_loss(mu_x, old_mu, sigma, thetas, adv, eps, ratio):
    """The spec 4.3 objective, written independently of the controller."""
    new = TruncatedNormal(torch.sigmoid(mu_x), sigma).log_prob(thetas)
    old = TruncatedNormal(old_mu, sigma).log_prob(thetas)
    if ratio == "joint":
        r = torch.exp((new - old).sum(1))
        return -torch.minimum(r * adv, r.clamp(1 - eps, 1 + eps) * adv).mean()
    r = torch.exp(new - old)
    a = adv[:, None]
    return -sum(
        torch.minimum(r[:, d] * a[:, 0], r[:, d].clamp(1 - eps, 1 + eps) * a[:, 0]).mean()
        for d in range(thetas.shape[1])
    )


@pytest.mark.parametrize("ratio", ["per_dim", "joint"])
@pytest.mark.parametrize("baseline", ["mu", "mean"])
def test_update_equals_adam_on_reference_objective(ratio, baseline):
    controller = PPOController(3, [0.3, 0.5, 0.6], ppo_steps=7, ratio=ratio, baseline=baseline,
                               seed=5)
    thetas = controller.sample(8)
    rewards = torch.linspace(0.1, 0.9, 8)
    adv = rewards - (rewards[0] if baseline == "mu" else rewards.mean())

    mu_x = torch.nn.Parameter(torch.logit(torch.tensor([0.3, 0.5, 0.6])))
    opt = torch.optim.Adam([mu_x], lr=0.2)
    old_mu = torch.sigmoid(mu_x.detach()).clone()
    for _ in range(7):
        loss = _reference_loss(mu_x, old_mu, torch.full((3,), 0.2), thetas, adv, 0.2, ratio)
        opt.zero_grad()
        loss.backward()
        opt.step()

    stats = controller.update(thetas, rewards)
    torch.testing.assert_close(controller.mu, torch.sigmoid(mu_x.detach()))
    assert stats["iteration"] == 1 and controller.iteration == 1
    assert stats["baseline"] == pytest.approx(float(rewards[0] if baseline == "mu"
                                                    else rewards.mean()))
    assert stats["mu"] == pytest.approx(controller.mu.tolist())


def test_ratio_modes_differ():
    results = []
    for ratio in ("per_dim", "joint"):
        controller = PPOController(4, 0.5, ratio=ratio, seed=2)
        _run(controller, 1, samples=8)
        results.append(controller.mu)
    assert not torch.allclose(results[0], results[1])


def test_zero_advantage_leaves_mu_unchanged():
    controller = PPOController(3, 0.4, seed=0)
    thetas = controller.sample(6)
    controller.update(thetas, [0.5] * 6)
    torch.testing.assert_close(controller.mu, torch.full((3,), 0.4))


def test_state_dict_round_trip_continues_identically():
    a = PPOController(5, 0.5, seed=11)
    _run(a, 2, samples=6)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    b = PPOController(5, 0.3, seed=99)  # different start and seed: all of it must be restored
    b.load_state_dict(saved)
    assert b.iteration == a.iteration == 2
    for _ in range(2):
        ta, tb = a.sample(6), b.sample(6)
        assert torch.equal(ta, tb)
        sa, sb = a.update(ta, _reward(ta)), b.update(tb, _reward(tb))
        assert sa == sb
    assert torch.equal(a.mu_x, b.mu_x)


def test_state_dict_is_a_snapshot():
    controller = PPOController(3, 0.5, seed=0)
    _run(controller, 1, samples=4)
    saved = controller.state_dict()
    mu_x = saved["mu_x"].clone()
    exp_avg = saved["optimizer"]["state"][0]["exp_avg"].clone()
    _run(controller, 1, samples=4)
    assert torch.equal(saved["mu_x"], mu_x)
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], exp_avg)


def test_load_state_dict_rejects_other_hyper_parameters():
    saved = PPOController(3, 0.5, mu_lr=0.2).state_dict()
    with pytest.raises(ValueError, match="mu_lr"):
        PPOController(3, 0.5, mu_lr=0.1).load_state_dict(saved)
    with pytest.raises(ValueError, match="dim"):
        PPOController(4, 0.5).load_state_dict(saved)
    with pytest.raises(ValueError, match="lacks keys"):
        PPOController(3, 0.5).load_state_dict({"mu_x": saved["mu_x"]})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ratio="product"), "ratio"),
        (dict(baseline="median"), "baseline"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-0.2), "sigma"),
        (dict(mu_init=0.0), "mu_init"),
        (dict(mu_init=1.0), "mu_init"),
        (dict(mu_init=[0.5, 0.5]), "mu_init"),
        (dict(dim=0), "dim"),
        (dict(mu_lr=0), "mu_lr"),
        (dict(ppo_steps=0), "ppo_steps"),
        (dict(clip_eps=1.5), "clip_eps"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(dim=3, mu_init=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PPOController(**args)


def test_bad_update_inputs():
    controller = PPOController(3, 0.5, seed=0)
    thetas = controller.sample(4)
    with pytest.raises(ValueError, match="rewards must have shape"):
        controller.update(thetas, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        controller.update(thetas, [0.1, float("nan"), 0.3, 0.4])
    with pytest.raises(ValueError, match="thetas must have shape"):
        controller.update(thetas[:, :2], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        controller.update(thetas + 2, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="thetas\\[0\\] == mu"):
        controller.update(thetas.flip(0), [0.1, 0.2, 0.3, 0.4])
    assert controller.iteration == 0  # nothing happened
    torch.testing.assert_close(controller.mu, torch.full((3,), 0.5))


# ----------------------------------------------------------------------------------------------
# Random search: the same budget, every sample from the initial distribution

MU0 = [0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5]


def test_controllers_by_method():
    assert CONTROLLERS == {"ppo": PPOController, "random": RandomSearchController}
    assert PPOController.method == "ppo" and RandomSearchController.method == "random"


@pytest.mark.parametrize("baseline", ["mu", "mean"])
def test_random_search_mu_never_moves(baseline):
    controller = RandomSearchController(6, MU0, baseline=baseline, seed=0)
    mu_x = controller.mu_x.detach().clone()
    for it in range(1, 5):
        thetas = controller.sample(16)
        rewards = _reward(thetas)
        stats = controller.update(thetas, rewards)
        assert stats["iteration"] == it == controller.iteration
        assert stats["reward_mean"] == pytest.approx(float(rewards.mean()))
        assert stats["reward_max"] == pytest.approx(float(rewards.max()))
        assert stats["baseline"] == pytest.approx(float(rewards.mean()))
        assert stats["mu"] == pytest.approx(MU0)
    assert torch.equal(controller.mu_x, mu_x)
    torch.testing.assert_close(controller.mu, torch.tensor(MU0))
    # the same rewards move PPO's mu (so "never moves" is not an accident of the rewards)
    ppo = PPOController(6, MU0, baseline=baseline, seed=0)
    _run(ppo, 1)
    assert not torch.allclose(ppo.mu, torch.tensor(MU0), atol=1e-3)


def test_random_search_samples_are_all_random_and_seeded():
    a, b, c = (RandomSearchController(6, MU0, seed=s) for s in (4, 4, 5))
    seen = []
    for _ in range(3):
        ta, tb, tc = a.sample(8), b.sample(8), c.sample(8)
        assert ta.shape == (8, 6) and ta.dtype == torch.float32
        assert ((ta >= 0) & (ta <= 1)).all()
        assert torch.equal(ta, tb) and not torch.equal(ta, tc)
        # no row is spent on mu, row 0 included (baseline "mu" is only a statistic here)
        assert not (ta == a.mu).all(dim=1).any()
        assert not torch.allclose(ta[0], a.mu, atol=1e-3)
        seen.append(ta)
        for ctrl, t in ((a, ta), (b, tb), (c, tc)):
            ctrl.update(t, _reward(t))  # no "thetas[0] == mu" check for random search
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_random_search_keeps_sampling_the_initial_distribution():
    """After updates toward OPTIMUM, random search still samples TruncNormal(mu_init, sigma)."""
    mu0 = torch.full((6,), 0.5)
    moved = RandomSearchController(6, 0.5, seed=1)
    _run(moved, 4)
    fresh = RandomSearchController(6, 0.5, seed=2)
    big_moved, big_fresh = moved.sample(4000), fresh.sample(4000)
    # symmetric truncation around 0.5: the mean stays 0.5
    torch.testing.assert_close(big_moved.mean(0), mu0, atol=0.015, rtol=0)
    torch.testing.assert_close(big_moved.std(0), big_fresh.std(0), atol=0.01, rtol=0)
    # whereas PPO's samples follow its mean toward the optimum
    ppo = PPOController(6, 0.5, seed=1)
    _run(ppo, 4)
    assert ((ppo.sample(4000).mean(0) - mu0).abs() > 0.05).any()


def test_random_search_state_dict_round_trip_continues_identically():
    a = RandomSearchController(6, MU0, seed=11)
    _run(a, 2, samples=6)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["config"]["method"] == "random"

    b = RandomSearchController(6, 0.4, seed=99)  # other start and seed: all of it is restored
    b.load_state_dict(saved)
    assert b.iteration == a.iteration == 2
    torch.testing.assert_close(b.mu, torch.tensor(MU0))
    for _ in range(2):
        ta, tb = a.sample(6), b.sample(6)
        assert torch.equal(ta, tb)
        assert a.update(ta, _reward(ta)) == b.update(tb, _reward(tb))
    assert torch.equal(a.mu_x, b.mu_x)


def test_ppo_and_random_states_do_not_mix():
    ppo, rnd = PPOController(3, 0.5, seed=0), RandomSearchController(3, 0.5, seed=0)
    assert ppo.state_dict()["config"]["method"] == "ppo"
    with pytest.raises(ValueError, match=r"'method': \('ppo', 'random'\)"):
        RandomSearchController(3, 0.5, seed=0).load_state_dict(ppo.state_dict())
    with pytest.raises(ValueError, match=r"'method': \('random', 'ppo'\)"):
        PPOController(3, 0.5, seed=0).load_state_dict(rnd.state_dict())
    rnd.load_state_dict(RandomSearchController(3, 0.5, seed=1).state_dict())  # same method: fine


def test_random_search_validates_its_inputs():
    controller = RandomSearchController(3, 0.5, seed=0)
    thetas = controller.sample(4)
    with pytest.raises(ValueError, match="rewards must have shape"):
        controller.update(thetas, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        controller.update(thetas, [0.1, float("nan"), 0.3, 0.4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        controller.update(thetas + 2, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="num_samples"):
        controller.sample(0)
    with pytest.raises(ValueError, match="mu_init"):
        RandomSearchController(3, 1.0)
    assert controller.iteration == 0
    # a single sample per iteration is enough (no row for mu)
    one = controller.sample(1)
    assert controller.update(one, [0.3])["reward_max"] == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------
# Options of docs/method.md §4.6: advantage shaping, mirrored sampling, sigma schedule, trust region

def test_advantages_raw_normalized_rank():
    rewards = torch.tensor([0.5, 0.9, 0.1, 0.7])
    raw = PPOController(2, 0.5, seed=0)
    torch.testing.assert_close(raw.advantages(rewards), rewards - 0.5)
    mean = PPOController(2, 0.5, baseline="mean", seed=0)
    torch.testing.assert_close(mean.advantages(rewards), rewards - rewards.mean())
    norm = PPOController(2, 0.5, advantage="normalized", seed=0)
    torch.testing.assert_close(norm.advantages(rewards),
                               (rewards - 0.5) / rewards.std(unbiased=False))
    assert torch.equal(norm.advantages(torch.full((4,), 0.3)), torch.zeros(4))  # all tie
    rank = PPOController(2, 0.5, advantage="rank", seed=0)
    # ranks 2, 4, 1, 3 -> (rank - 1) / 3 - 1/2, minus the mean's (row 0)
    centered = torch.tensor([1 / 3, 1.0, 0.0, 2 / 3]) - 0.5
    torch.testing.assert_close(rank.advantages(rewards), centered - centered[0])
    # rank shaping ignores the scale and outliers: only the order matters
    torch.testing.assert_close(rank.advantages(torch.tensor([0.5, 90.0, -7.0, 0.7])),
                               rank.advantages(rewards))
    # ties share their mean rank
    tied = rank.advantages(torch.tensor([0.2, 0.2, 0.1, 0.3]))
    assert tied[0] == tied[1] == 0.0 and tied[2] < 0 < tied[3]


def test_rank_advantages_order_by_training_length_first():
    rank = PPOController(2, 0.5, advantage="rank", baseline="mean", seed=0)
    rewards = torch.tensor([0.30, 0.90, 0.40, 0.20])
    trained = torch.tensor([100.0, 50.0, 100.0, 50.0])  # halving stopped rows 1 and 3
    adv = rank.advantages(rewards, trained)
    # fully trained rows rank above stopped ones whatever their reward
    assert adv.argsort().tolist() == [3, 1, 0, 2]
    thetas = rank.sample(4)
    with pytest.raises(ValueError, match="advantage 'rank'"):
        PPOController(2, 0.5, baseline="mean", seed=0).update(thetas, rewards, trained)
    with pytest.raises(ValueError, match="trained must hold"):
        rank.update(thetas, rewards, [1.0, 2.0])
    rank.update(thetas, rewards, trained)  # accepted


def test_mirrored_samples_come_in_reflected_pairs():
    controller = PPOController(3, [0.3, 0.5, 0.8], mirrored=True, baseline="mean", seed=2)
    thetas = controller.sample(7)
    assert thetas.shape == (7, 3)
    dist = TruncatedNormal(controller.mu.double(), controller.sigma.double())

    def cdf(x):  # of the truncated normal
        from torch.special import ndtr

        a, b = dist._alpha_beta
        return (ndtr((x.double() - dist.mu) / dist.sigma) - ndtr(a)) / (ndtr(b) - ndtr(a))

    for k in range(3):  # rows 2k and 2k + 1 are each other's mirror image in probability
        torch.testing.assert_close(cdf(thetas[2 * k]) + cdf(thetas[2 * k + 1]),
                                   torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # the odd last row is a fresh draw; a mirrored controller is reproducible and differs from
    # an unmirrored one with the same seed only in the mirror images
    plain = PPOController(3, [0.3, 0.5, 0.8], baseline="mean", seed=2).sample(7)
    assert torch.equal(PPOController(3, [0.3, 0.5, 0.8], mirrored=True, baseline="mean",
                                     seed=2).sample(7), thetas)
    assert torch.equal(plain[0], thetas[0]) and not torch.equal(plain[1], thetas[1])
    # with baseline "mu", row 0 is mu and the random rows pair up after it
    mu_rows = PPOController(3, 0.5, mirrored=True, seed=2).sample(5)
    torch.testing.assert_close(mu_rows[1] + mu_rows[2], torch.ones(3))  # symmetric at mu 0.5


def test_sigma_schedule_decays_linearly_and_is_used_by_sample_and_update():
    controller = PPOController(4, 0.5, sigma=0.2, sigma_end=0.05, iterations=4, seed=0)
    assert [round(float(controller.sigma_at(t)[0]), 6) for t in range(6)] == [
        0.2, 0.15, 0.1, 0.05, 0.05, 0.05]
    spreads = []
    for _ in range(4):
        thetas = controller.sample(64)
        spreads.append(float((thetas[1:] - controller.mu).std()))
        stats = controller.update(thetas, _reward(thetas[:, :4]))
        assert stats["sigma"] == pytest.approx(float(controller.sigma_at(stats["iteration"] - 1)
                                                     .mean()))
    assert spreads == sorted(spreads, reverse=True) and spreads[-1] < 0.4 * spreads[0]
    # the update's ratio uses the iteration's sigma: equal to a fixed-sigma controller at it
    a = PPOController(2, 0.5, sigma=0.2, sigma_end=0.1, iterations=3, ppo_steps=5, seed=1)
    b = PPOController(2, 0.5, sigma=0.2, ppo_steps=5, seed=1)
    thetas = a.sample(6)
    assert torch.equal(thetas, b.sample(6))  # iteration 0: sigma 0.2 for both
    a.update(thetas, _reward(thetas[:, :2]))
    b.update(thetas, _reward(thetas[:, :2]))
    assert torch.equal(a.mu, b.mu)
    with pytest.raises(ValueError, match="iterations"):
        PPOController(2, 0.5, sigma_end=0.1)
    with pytest.raises(ValueError, match="sigma_end"):
        PPOController(2, 0.5, sigma_end=-0.1, iterations=3)


def test_trust_region_bounds_every_move_of_mu():
    free = PPOController(6, 0.5, seed=0)
    bounded = PPOController(6, 0.5, max_mu_step=0.05, seed=0)
    free_steps, bounded_steps = [], []
    for controller, steps in ((free, free_steps), (bounded, bounded_steps)):
        for _ in range(4):
            thetas = controller.sample(16)
            steps.append(controller.update(thetas, _reward(thetas))["mu_step"])
    assert max(bounded_steps) <= 0.05 + 1e-6
    assert max(free_steps) > 0.1  # the paper's settings move much further
    # the bounded search still heads toward the optimum
    assert ((bounded.mu > 0.5) == (OPTIMUM > 0.5)).all()
    with pytest.raises(ValueError, match="max_mu_step"):
        PPOController(2, 0.5, max_mu_step=1.5)


def test_options_survive_a_state_dict_round_trip_and_are_checked():
    kwargs = dict(advantage="rank", mirrored=True, sigma_end=0.05, iterations=5,
                  max_mu_step=0.1, seed=3)
    a = PPOController(3, 0.5, **kwargs)
    for _ in range(2):
        thetas = a.sample(6)
        a.update(thetas, _reward(thetas[:, :3]))
    b = PPOController(3, 0.5, **kwargs)
    b.load_state_dict(a.state_dict())
    for _ in range(2):
        ta, tb = a.sample(6), b.sample(6)
        assert torch.equal(ta, tb)
        a.update(ta, _reward(ta[:, :3]))
        b.update(tb, _reward(tb[:, :3]))
    assert torch.equal(a.mu, b.mu)
    for key, value in (("advantage", "raw"), ("mirrored", False), ("max_mu_step", 0.2)):
        with pytest.raises(ValueError, match=key):
            PPOController(3, 0.5, **{**kwargs, key: value}).load_state_dict(a.state_dict())


def test_checkpoint_from_before_the_options_loads_with_the_paper_values():
    old = PPOController(3, 0.5, seed=0).state_dict()
    for key in ("advantage", "mirrored", "sigma_end", "iterations", "max_mu_step"):
        del old["config"][key]
    PPOController(3, 0.5, seed=0).load_state_dict(old)  # the paper's settings: accepted
    with pytest.raises(ValueError, match="advantage"):
        PPOController(3, 0.5, advantage="rank", seed=0).load_state_dict(old)


def test_random_search_draws_with_the_schedule_and_mirroring():
    controller = RandomSearchController(3, 0.5, sigma=0.2, sigma_end=0.02, iterations=2,
                                        mirrored=True, seed=0)
    first = controller.sample(6)
    torch.testing.assert_close(first[0] + first[1], torch.ones(3))
    controller.update(first, _reward(first[:, :3]))
    second = controller.sample(6)
    assert float((second - 0.5).abs().max()) < float((first - 0.5).abs().max())
    assert torch.equal(controller.mu, torch.full((3,), 0.5))  # never moves
