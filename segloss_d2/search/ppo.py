"""PPO2 controller over the mean of a truncated normal (docs/method.md §4.2, §4.3).

The controller owns the search distribution ``theta_d ~ TruncNormal(mu_d, sigma_d; 0, 1)`` with
``mu = sigmoid(mu_x)``; only ``mu_x`` is optimized (Adam), ``sigma`` is fixed. One iteration::

    thetas = controller.sample(32)           # (32, D) in [0, 1]; row 0 is mu with baseline="mu"
    rewards = [evaluate(t) for t in thetas]  # hold-out metric of a proxy trained with theta
    stats = controller.update(thetas, rewards)

The controller always lives on the CPU in float32: it is tiny, and this keeps sampling and updates
bit-reproducible across machines and independent of the device the proxy models train on.
"""
import copy
import math
from numbers import Real
from typing import Dict, Optional, Sequence, Union

import torch

from .distributions import TruncatedNormal

__all__ = ["PPOController", "RandomSearchController", "CONTROLLERS"]

_RATIOS = ("per_dim", "joint")
_BASELINES = ("mu", "mean")
ADVANTAGES = ("raw", "normalized", "rank")
"""``SEARCH.ADVANTAGE``: how rewards become PPO advantages (:meth:`PPOController.advantages`)."""
# Hyper-parameters added after the first release, with the value that reproduces a checkpoint
# written before them (the paper's settings), so such a search still resumes.
_LATER_DEFAULTS = {"advantage": "raw", "mirrored": False, "sigma_end": None,
                   "iterations": None, "max_mu_step": 0.0}


def _check_positive(name, value, integer=False):
    kind = int if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} > 0, got {value!r}")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


# Bounds of the trust-region box of mu: the open interval sigmoid(mu_x) can represent in float32.
_MU_MIN, _MU_MAX = 1e-6, 1.0 - 1e-6


def _centered_ranks(keys: Sequence) -> torch.Tensor:
    """``(rank - 1) / (n - 1) - 1/2`` of each of ``n`` sortable keys (ranks 1..n, ties share their
    mean rank): float64 ``(n,)`` in ``[-1/2, 1/2]``, 0 for ``n = 1``."""
    n = len(keys)
    order = sorted(range(n), key=lambda i: keys[i])
    ranks = [0.0] * n
    start = 0
    while start < n:
        stop = start
        while stop + 1 < n and keys[order[stop + 1]] == keys[order[start]]:
            stop += 1
        for j in range(start, stop + 1):
            ranks[order[j]] = (start + stop) / 2  # 0-based mean rank of the tie
        start = stop + 1
    return torch.tensor(ranks, dtype=torch.float64) / max(n - 1, 1) - 0.5


class PPOController:
    """PPO2 over ``mu`` of a per-dimension truncated normal on ``[0, 1]``.

    ``method = "ppo"``; see :class:`RandomSearchController` for the random-search baseline.

    Args:
        dim (int): number of search variables ``D``.
        mu_init (float or sequence of D floats): initial ``mu``, each in the open interval (0, 1);
            ``mu_x`` starts at ``logit(mu_init)``; docs/method.md §3.4 gives the identity curves.
        sigma (float or sequence of D floats): fixed scale of every dimension, > 0.
        mu_lr (float): Adam learning rate on ``mu_x`` (constant, no schedule).
        ppo_steps (int): Adam steps per :meth:`update` (the reference's ``update_per_sample``).
        clip_eps (float): PPO clip range ``eps`` in (0, 1): ratios are clipped to
            ``[1 - eps, 1 + eps]``.
        ratio (str): ``"per_dim"`` (reference code, default): one ratio per sample and dimension,
            each clipped separately, loss summed over dimensions; ``"joint"``: the ratio of the
            joint densities (product over dimensions), clipped once per sample (paper formula).
        baseline (str): ``"mu"`` (default): row 0 of every :meth:`sample` is ``mu`` itself and the
            advantage is ``R_i - R_0``; ``"mean"``: all rows are random draws and the advantage is
            ``R_i - mean(R)``.
        seed (int): seed of the controller's own ``torch.Generator``; the global RNG is never used.
        advantage (str): ``"raw"`` (reference code, default): ``A = R - b``, never divided by the
            reward std; ``"normalized"``: ``(R - b) / std(R)``; ``"rank"``: rewards replaced by
            centered ranks in ``[-1/2, 1/2]`` before the baseline (fitness shaping: one outlier
            proxy cannot dominate the step). See :meth:`advantages`.
        mirrored (bool): antithetic sampling: the random rows come in pairs drawn from the
            uniforms ``u`` and ``1 - u`` (mirror images around ``mu`` in probability), so the
            pair's noise cancels to first order in the update; an odd count leaves the last row
            unpaired.
        sigma_end (float or None): None (default): ``sigma`` is fixed (paper). Otherwise every
            dimension's scale decays linearly from ``sigma`` at the first iteration to
            ``sigma_end`` at iteration ``iterations - 1`` (and stays there).
        iterations (int or None): the search's number of iterations; needed with ``sigma_end``.
        max_mu_step (float): 0 (default): unbounded. Otherwise a trust region: after every Adam
            step each coordinate of ``mu`` is projected back into ``[mu_t - s, mu_t + s]``
            (``mu_t``: the mean before the update), so one update moves no coordinate by more
            than ``s``.
    """

    method = "ppo"

    def __init__(
        self,
        dim: int,
        mu_init: Union[float, Sequence[float]],
        sigma: Union[float, Sequence[float]] = 0.2,
        mu_lr: float = 0.2,
        ppo_steps: int = 60,
        clip_eps: float = 0.2,
        ratio: str = "per_dim",
        baseline: str = "mu",
        seed: int = 0,
        advantage: str = "raw",
        mirrored: bool = False,
        sigma_end: Optional[float] = None,
        iterations: Optional[int] = None,
        max_mu_step: float = 0.0,
    ):
        _check_positive("dim", dim, integer=True)
        _check_positive("mu_lr", mu_lr)
        _check_positive("ppo_steps", ppo_steps, integer=True)
        _check_positive("clip_eps", clip_eps)
        if clip_eps >= 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps!r}")
        if ratio not in _RATIOS:
            raise ValueError(f"ratio must be one of {_RATIOS}, got {ratio!r}")
        if baseline not in _BASELINES:
            raise ValueError(f"baseline must be one of {_BASELINES}, got {baseline!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, got {advantage!r}")
        if not isinstance(mirrored, bool):
            raise ValueError(f"mirrored must be a bool, got {mirrored!r}")
        if sigma_end is not None:
            _check_positive("sigma_end", sigma_end)
            _check_positive("iterations (needed with sigma_end)", iterations, integer=True)
        elif iterations is not None:
            _check_positive("iterations", iterations, integer=True)
        if isinstance(max_mu_step, bool) or not isinstance(max_mu_step, Real) or not (
                0 <= max_mu_step <= 1):
            raise ValueError(f"max_mu_step must be a number in [0, 1] (0 = unbounded), got "
                             f"{max_mu_step!r}")
        mu0 = self._per_dim("mu_init", mu_init, dim)
        if not ((mu0 > 0) & (mu0 < 1)).all():
            raise ValueError(f"mu_init must lie in the open interval (0, 1), got {mu0.tolist()}")
        sigma_t = self._per_dim("sigma", sigma, dim)
        if not (sigma_t > 0).all():
            raise ValueError(f"sigma must be > 0, got {sigma_t.tolist()}")

        self.dim = dim
        self.sigma = sigma_t
        self.mu_lr = float(mu_lr)
        self.ppo_steps = ppo_steps
        self.clip_eps = float(clip_eps)
        self.ratio = ratio
        self.baseline = baseline
        self.seed = seed
        self.advantage = advantage
        self.mirrored = mirrored
        self.sigma_end = None if sigma_end is None else float(sigma_end)
        self.iterations = iterations
        self.max_mu_step = float(max_mu_step)
        self.iteration = 0
        self.mu_x = torch.nn.Parameter(torch.logit(mu0))
        self.optimizer = torch.optim.Adam([self.mu_x], lr=self.mu_lr)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    @staticmethod
    def _per_dim(name, value, dim) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(dim)
        if t.shape != (dim,):
            raise ValueError(
                f"{name} must be a number or a sequence of {dim} numbers, got {value!r}"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite, got {value!r}")
        return t.clone()

    @property
    def mu(self) -> torch.Tensor:
        """Current mean ``sigmoid(mu_x)``: float32 tensor of shape ``(D,)`` in (0, 1), no grad."""
        return torch.sigmoid(self.mu_x.detach())

    def sigma_at(self, iteration: int) -> torch.Tensor:
        """The scale ``(D,)`` of iteration ``iteration`` (``sigma``, or the linear schedule
        towards ``sigma_end``)."""
        if self.sigma_end is None:
            return self.sigma
        frac = min(iteration, self.iterations - 1) / max(self.iterations - 1, 1)
        return self.sigma + (self.sigma_end - self.sigma) * frac

    @property
    def current_sigma(self) -> torch.Tensor:
        """The scale of the iteration about to be sampled / updated."""
        return self.sigma_at(self.iteration)

    def distribution(self) -> TruncatedNormal:
        """The current search distribution (differentiable in ``mu_x``)."""
        return TruncatedNormal(torch.sigmoid(self.mu_x), self.current_sigma)

    def _draw(self, dist: TruncatedNormal, n: int) -> torch.Tensor:
        return dist.sample(n, self.generator, antithetic=self.mirrored)

    def sample(self, num_samples: int) -> torch.Tensor:
        """Draw the candidates of one iteration from the controller's generator.

        Args:
            num_samples (int): ``M >= 1``.

        Returns:
            Tensor: float32 ``(M, D)`` in ``[0, 1]``. With ``baseline="mu"`` row 0 equals
            :attr:`mu` exactly and rows ``1..M-1`` are random; with ``"mean"`` all rows are random.
        """
        _check_positive("num_samples", num_samples, integer=True)
        dist = TruncatedNormal(self.mu, self.current_sigma)
        if self.baseline == "mu":
            return torch.cat([self.mu[None], self._draw(dist, num_samples - 1)])
        return self._draw(dist, num_samples)

    def _check_batch(self, thetas, rewards, trained=None):
        thetas = torch.as_tensor(thetas, dtype=torch.float32)
        if thetas.dim() != 2 or thetas.shape[1] != self.dim or thetas.shape[0] < 1:
            raise ValueError(f"thetas must have shape (M, {self.dim}), got {tuple(thetas.shape)}")
        if not torch.isfinite(thetas).all() or (thetas < 0).any() or (thetas > 1).any():
            raise ValueError("thetas must be finite and lie in [0, 1]")
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
        if rewards.shape != (thetas.shape[0],):
            raise ValueError(
                f"rewards must have shape ({thetas.shape[0]},) to match thetas, "
                f"got {tuple(rewards.shape)}"
            )
        if not torch.isfinite(rewards).all():
            raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
        if trained is not None:
            trained = torch.as_tensor(trained, dtype=torch.float64)
            if trained.shape != rewards.shape or not torch.isfinite(trained).all():
                raise ValueError(f"trained must hold {rewards.shape[0]} finite numbers (how "
                                 f"long each proxy trained), got {trained.tolist()}")
            if self.advantage != "rank" and bool((trained != trained.max()).any()):
                raise ValueError(
                    "candidates trained for different lengths (successive halving) have rewards "
                    "on different scales; they can only be compared by rank: use advantage "
                    f"'rank' (SEARCH.ADVANTAGE), got {self.advantage!r}")
        if (self.method == "ppo" and self.baseline == "mu"
                and not torch.allclose(thetas[0], self.mu, rtol=0, atol=1e-6)):
            raise ValueError(
                "baseline='mu' needs thetas[0] == mu (the first row of sample()), got "
                f"thetas[0]={thetas[0].tolist()} and mu={self.mu.tolist()}"
            )
        return thetas, rewards, trained

    def advantages(self, rewards: torch.Tensor, trained: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
        """``(M,)`` advantages of ``(M,)`` rewards under ``advantage`` and ``baseline``.

        - "raw": ``A_i = R_i - b``, ``b = R_0`` (baseline "mu") or ``mean(R)`` ("mean");
        - "normalized": the same divided by ``std(R)`` (population std; 0 if all rewards tie);
        - "rank": ``R`` replaced by its centered ranks ``(rank - 1) / (M - 1) - 1/2`` (ties share
          their mean rank) before the baseline. With ``trained`` (how long each proxy trained,
          successive halving) candidates are ranked by ``(trained, R)``: a proxy stopped early
          ranks below every proxy trained longer.
        """
        if self.advantage == "rank":
            r = rewards.tolist()
            t = [0.0] * len(r) if trained is None else trained.tolist()
            values = _centered_ranks(list(zip(t, r)))
        else:
            values = rewards
        baseline = values[0] if self.baseline == "mu" else values.mean()
        adv = (values - baseline).float()
        if self.advantage == "normalized":
            std = rewards.std(unbiased=False)
            adv = adv / std if float(std) > 0 else torch.zeros_like(adv)
        return adv

    def _project(self, low: torch.Tensor, high: torch.Tensor) -> None:
        with torch.no_grad():
            self.mu_x.copy_(torch.logit(torch.sigmoid(self.mu_x).clamp(low, high)))

    def update(self, thetas, rewards, trained=None) -> Dict[str, object]:
        """One PPO2 update of ``mu`` from the rewards of the candidates of :meth:`sample`.

        ``A`` = :meth:`advantages`; ``r = p_mu(theta) / p_mu_t(theta)`` per dimension
        (``(M, D)``, "per_dim") or for the joint density (``(M,)``, "joint"), both with this
        iteration's scale; the loss ``-sum_d mean_i min(r A, clip(r, 1 - eps, 1 + eps) A)`` is
        minimized with ``ppo_steps`` Adam steps on ``mu_x`` (each followed by the trust-region
        projection when ``max_mu_step`` > 0).

        Args:
            thetas (Tensor or array): ``(M, D)`` candidates in ``[0, 1]`` (from :meth:`sample`).
            rewards (sequence or Tensor): ``(M,)`` finite rewards, aligned with ``thetas``.
            trained (sequence, optional): ``(M,)`` proxy training lengths; unequal lengths
                (successive halving) need ``advantage="rank"``.

        Returns:
            dict: ``loss`` (float, loss at the last step), ``reward_mean``, ``reward_max``,
            ``baseline`` (reward of mu or mean reward), ``sigma`` (mean scale of this iteration),
            ``mu`` (list of D floats after the update), ``mu_step`` (largest change of one
            coordinate of mu) and ``iteration`` (updates done so far, this one included).
        """
        thetas, rewards, trained = self._check_batch(thetas, rewards, trained)
        adv = self.advantages(rewards, trained)
        sigma = self.current_sigma
        mu_before = self.mu
        with torch.no_grad():
            old_log_p = TruncatedNormal(mu_before, sigma).log_prob(thetas)
        low, high = 1.0 - self.clip_eps, 1.0 + self.clip_eps
        if self.max_mu_step:
            box = ((mu_before - self.max_mu_step).clamp(min=_MU_MIN),
                   (mu_before + self.max_mu_step).clamp(max=_MU_MAX))
        for _ in range(self.ppo_steps):
            log_ratio = TruncatedNormal(torch.sigmoid(self.mu_x), sigma).log_prob(
                thetas) - old_log_p  # (M, D)
            if self.ratio == "per_dim":
                r, a = torch.exp(log_ratio), adv[:, None]
            else:
                r, a = torch.exp(log_ratio.sum(dim=1)), adv
            surrogate = torch.minimum(r * a, r.clamp(low, high) * a)
            loss = -surrogate.mean(dim=0).sum()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            if self.max_mu_step:
                self._project(*box)
        self.iteration += 1
        return self._stats(rewards, float(loss.detach()), sigma, mu_before)

    def _stats(self, rewards, loss, sigma, mu_before) -> Dict[str, object]:
        return {
            "loss": loss,
            "reward_mean": float(rewards.mean()),
            "reward_max": float(rewards.max()),
            "baseline": float(rewards[0] if self.baseline == "mu" and self.method == "ppo"
                              else rewards.mean()),
            "sigma": float(sigma.mean()),
            "mu": self.mu.tolist(),
            "mu_step": float((self.mu - mu_before).abs().max()),
            "iteration": self.iteration,
        }

    def _config(self) -> Dict[str, object]:
        return {
            "dim": self.dim,
            "sigma": self.sigma.tolist(),
            "mu_lr": self.mu_lr,
            "ppo_steps": self.ppo_steps,
            "clip_eps": self.clip_eps,
            "ratio": self.ratio,
            "baseline": self.baseline,
            "method": self.method,
            "advantage": self.advantage,
            "mirrored": self.mirrored,
            "sigma_end": self.sigma_end,
            "iterations": self.iterations,
            "max_mu_step": self.max_mu_step,
        }

    def state_dict(self) -> Dict[str, object]:
        """Everything needed to continue bit-identically: ``mu_x``, Adam state, generator state,
        iteration counter, and the hyper-parameters (checked on load). A deep copy: later updates
        do not change it. Loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "mu_x": self.mu_x.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "iteration": self.iteration,
            "config": self._config(),
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore a :meth:`state_dict`. Raises ValueError if it was made by a controller with other
        hyper-parameters (dim, sigma, mu_lr, ppo_steps, clip_eps, ratio, baseline, advantage,
        mirrored, sigma schedule, max_mu_step); a checkpoint older than the later ones is read
        with their paper values."""
        missing = {"mu_x", "optimizer", "generator", "iteration", "config"} - set(state)
        if missing:
            raise ValueError(f"controller state lacks keys {sorted(missing)}")
        saved = {**_LATER_DEFAULTS, **state["config"]}
        diff = {k: (saved.get(k), v) for k, v in self._config().items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                "controller state was saved with other hyper-parameters "
                f"(key: (saved, current)): {diff}"
            )
        with torch.no_grad():
            self.mu_x.copy_(state["mu_x"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.generator.set_state(state["generator"].clone())
        self.iteration = int(state["iteration"])


class RandomSearchController(PPOController):
    """Random search at the budget of the PPO search: the baseline that shows what PPO adds.

    Every iteration draws all ``M`` candidates at random from the *initial* distribution
    (``TruncNormal(mu_init, sigma)``; no row is spent on ``mu``, which never moves), and
    :meth:`update` only reports statistics. Same arguments, state and reproducibility as
    :class:`PPOController` (``mu_lr``, ``ppo_steps``, ``clip_eps``, ``ratio``, ``baseline``,
    ``advantage`` and ``max_mu_step`` are unused; ``mirrored`` and the ``sigma`` schedule apply to
    the draws; the reported "baseline" is the mean reward).
    """

    method = "random"

    def sample(self, num_samples: int) -> torch.Tensor:
        """``(M, D)`` float32 draws from the initial distribution, all random."""
        _check_positive("num_samples", num_samples, integer=True)
        return self._draw(TruncatedNormal(self.mu, self.current_sigma), num_samples)

    def update(self, thetas, rewards, trained=None) -> Dict[str, object]:
        """Record one iteration (mean, max and mean-as-baseline reward); ``mu`` stays."""
        _, rewards, _ = self._check_batch(thetas, rewards, trained)
        sigma = self.current_sigma
        self.iteration += 1
        return self._stats(rewards, 0.0, sigma, self.mu)


CONTROLLERS = {"ppo": PPOController, "random": RandomSearchController}
"""``SEARCH.METHOD`` -> controller class."""
