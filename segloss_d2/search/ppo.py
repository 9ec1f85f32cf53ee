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
from typing import Dict, Sequence, Union

import torch

from .distributions import TruncatedNormal

__all__ = ["PPOController", "RandomSearchController", "CONTROLLERS"]

_RATIOS = ("per_dim", "joint")
_BASELINES = ("mu", "mean")


def _check_positive(name, value, integer=False):
    kind = int if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} > 0, got {value!r}")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


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
            ``R_i - mean(R)``. Advantages are never divided by the reward std (reference code).
        seed (int): seed of the controller's own ``torch.Generator``; the global RNG is never used.
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

    def distribution(self) -> TruncatedNormal:
        """The current search distribution (differentiable in ``mu_x``)."""
        return TruncatedNormal(torch.sigmoid(self.mu_x), self.sigma)

    def sample(self, num_samples: int) -> torch.Tensor:
        """Draw the candidates of one iteration from the controller's generator.

        Args:
            num_samples (int): ``M >= 1``.

        Returns:
            Tensor: float32 ``(M, D)`` in ``[0, 1]``. With ``baseline="mu"`` row 0 equals
            :attr:`mu` exactly and rows ``1..M-1`` are random; with ``"mean"`` all rows are random.
        """
        _check_positive("num_samples", num_samples, integer=True)
        dist = TruncatedNormal(self.mu, self.sigma)
        if self.baseline == "mu":
            return torch.cat([self.mu[None], dist.sample(num_samples - 1, self.generator)])
        return dist.sample(num_samples, self.generator)

    def _check_batch(self, thetas, rewards):
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
        if (self.method == "ppo" and self.baseline == "mu"
                and not torch.allclose(thetas[0], self.mu, rtol=0, atol=1e-6)):
            raise ValueError(
                "baseline='mu' needs thetas[0] == mu (the first row of sample()), got "
                f"thetas[0]={thetas[0].tolist()} and mu={self.mu.tolist()}"
            )
        return thetas, rewards

    def update(self, thetas, rewards) -> Dict[str, object]:
        """One PPO2 update of ``mu`` from the rewards of the candidates of :meth:`sample`.

        ``A_i = R_i - b`` with ``b = R_0`` (baseline "mu") or ``mean(R)`` (baseline "mean");
        ``r = p_mu(theta) / p_mu_t(theta)`` per dimension (``(M, D)``, "per_dim") or for the joint
        density (``(M,)``, "joint"); the loss
        ``-sum_d mean_i min(r A, clip(r, 1 - eps, 1 + eps) A)`` is minimized with ``ppo_steps``
        Adam steps on ``mu_x``.

        Args:
            thetas (Tensor or array): ``(M, D)`` candidates in ``[0, 1]`` (from :meth:`sample`).
            rewards (sequence or Tensor): ``(M,)`` finite rewards, aligned with ``thetas``.

        Returns:
            dict: ``loss`` (float, loss at the last step), ``reward_mean``, ``reward_max``,
            ``baseline`` (floats), ``mu`` (list of D floats after the update) and ``iteration``
            (number of updates done so far, this one included).
        """
        thetas, rewards = self._check_batch(thetas, rewards)
        baseline = rewards[0] if self.baseline == "mu" else rewards.mean()
        adv = rewards - baseline
        with torch.no_grad():
            old_log_p = TruncatedNormal(self.mu, self.sigma).log_prob(thetas)
        low, high = 1.0 - self.clip_eps, 1.0 + self.clip_eps
        for _ in range(self.ppo_steps):
            log_ratio = self.distribution().log_prob(thetas) - old_log_p  # (M, D)
            if self.ratio == "per_dim":
                r, a = torch.exp(log_ratio), adv[:, None]
            else:
                r, a = torch.exp(log_ratio.sum(dim=1)), adv
            surrogate = torch.minimum(r * a, r.clamp(low, high) * a)
            loss = -surrogate.mean(dim=0).sum()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.iteration += 1
        return {
            "loss": float(loss.detach()),
            "reward_mean": float(rewards.mean()),
            "reward_max": float(rewards.max()),
            "baseline": float(baseline),
            "mu": self.mu.tolist(),
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
        hyper-parameters (dim, sigma, mu_lr, ppo_steps, clip_eps, ratio, baseline)."""
        missing = {"mu_x", "optimizer", "generator", "iteration", "config"} - set(state)
        if missing:
            raise ValueError(f"controller state lacks keys {sorted(missing)}")
        saved = state["config"]
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
    :class:`PPOController` (``mu_lr``, ``ppo_steps``, ``clip_eps``, ``ratio`` and ``baseline``
    are unused; the reported "baseline" is the mean reward).
    """

    method = "random"

    def sample(self, num_samples: int) -> torch.Tensor:
        """``(M, D)`` float32 draws from the initial distribution, all random."""
        _check_positive("num_samples", num_samples, integer=True)
        return TruncatedNormal(self.mu, self.sigma).sample(num_samples, self.generator)

    def update(self, thetas, rewards) -> Dict[str, object]:
        """Record one iteration (mean, max and baseline reward); ``mu`` stays where it is."""
        _, rewards = self._check_batch(thetas, rewards)
        self.iteration += 1
        return {
            "loss": 0.0,
            "reward_mean": float(rewards.mean()),
            "reward_max": float(rewards.max()),
            "baseline": float(rewards.mean()),
            "mu": self.mu.tolist(),
            "iteration": self.iteration,
        }


CONTROLLERS = {"ppo": PPOController, "random": RandomSearchController}
"""``SEARCH.METHOD`` -> controller class."""
