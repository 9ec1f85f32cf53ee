"""PNG plots of a search: the reward curve and the searched curves (matplotlib ``Figure``: no
pyplot, so importing this never switches a notebook's backend)."""
import os
from typing import Dict, List, Optional

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..surrogate.params import SurrogateParams
from ..visualize import plot_curves

__all__ = ["plot_reward_curve", "plot_searched_curves"]


def plot_reward_curve(trials: List[Dict], path: str, target: str = "reward",
                      title: Optional[str] = None, noise_std: Optional[float] = None,
                      mu_is_sample_0: bool = True) -> None:
    """Scatter every trial's reward by iteration (diverged in red), with the mean per
    iteration, the reward of mu (sample 0 under ``baseline='mu'``) and the best so far.

    Args:
        trials (list of dict): trial records (``iteration``, ``index``, ``reward``, ``status``).
        path (str): output PNG path (parent directories are created).
        target (str): the target metric's name, for the axis label.
        title (str, optional): default: the target and mu's reward at the first and last
            iteration.
        noise_std (float, optional): the seed-to-seed std of one candidate's reward; drawn as a
            band of ±1 std around mu's first reward, so a rise of mu beyond it reads as learning.
        mu_is_sample_0 (bool): sample 0 is the search mean (PPO with baseline "mu"); False
            (random search, baseline "mean"): no mu curve.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    iterations = sorted({r["iteration"] for r in trials})
    ok = [r for r in trials if r["status"] == "ok"]
    bad = [r for r in trials if r["status"] != "ok"]
    ax.scatter([r["iteration"] + 1 for r in ok], [r["reward"] for r in ok], s=12, alpha=0.5,
               color="tab:gray", label="sampled candidates")
    if bad:
        ax.scatter([r["iteration"] + 1 for r in bad], [r["reward"] for r in bad], s=16,
                   marker="x", color="tab:red", label="diverged")
    mu = []
    if iterations:
        means = [sum(r["reward"] for r in trials if r["iteration"] == t)
                 / sum(1 for r in trials if r["iteration"] == t) for t in iterations]
        ax.plot([t + 1 for t in iterations], means, "-o", color="tab:blue",
                label="mean of the candidates")
        best, running = [], float("-inf")
        for t in iterations:
            running = max([running] + [r["reward"] for r in ok if r["iteration"] == t])
            best.append(running)
        ax.plot([t + 1 for t in iterations], best, "--", color="tab:green", label="best so far")
        mu = [(t + 1, r["reward"]) for t in iterations for r in trials
              if mu_is_sample_0 and r["iteration"] == t and r["index"] == 0]
        if mu:
            ax.plot([m[0] for m in mu], [m[1] for m in mu], "-s", lw=2, ms=5,
                    color="tab:orange", label="reward of the search mean mu (sample 0)")
        if noise_std is not None and mu:
            ax.axhspan(mu[0][1] - noise_std, mu[0][1] + noise_std, color="tab:orange",
                       alpha=0.12, label=f"±1 seed-to-seed std of one θ ({noise_std:.3f})")
    if title is None:
        title = f"search for {target}"
        if len(mu) > 1:
            title += f": reward of mu {mu[0][1]:.3f} (iteration 1) -> {mu[-1][1]:.3f}"
    ax.set(xlabel="search iteration", ylabel=f"reward ({target} on the reward set, 0-1)")
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_searched_curves(params: SurrogateParams, path: str, title: Optional[str] = None) -> None:
    """The g curves of searched parameters (one panel per metric), via
    :func:`segloss_d2.visualize.plot_curves`."""
    plot_curves(params, path, title=title)
