"""Tables and plots of a search-quality study (:class:`~segloss_d2.search.study.SearchStudy`).

``write_report(results, out_dir)`` writes ``search_study.md`` (markdown tables) and PNGs into
``out_dir``; plots use ``matplotlib.figure.Figure`` (no pyplot, no backend switch).
"""
import math
import os
from typing import Dict, List

import numpy as np

from .study import EVAL_KEY, UNSEARCHED, best_so_far, mean_std, spearman

__all__ = ["write_report", "iteration_curves"]

_TABLE_METRICS = ("mIoU", "fwIoU", "BIoU", "BF1", "mACC", "pACC")
_LABELS = {"ppo": "PPO search (reference: per-dim ratio)", "ppo_joint":
           "PPO, joint ratio (paper formula)", "random": "random search", "cross_entropy":
           "cross-entropy", "naive": "naive (identity curves)", "preset": "released VOC preset"}
_COLORS = {"ppo": "tab:blue", "ppo_joint": "tab:green", "random": "tab:orange", "all": "tab:blue",
           "no_truth_table": "tab:red", "no_monotonic": "tab:purple", "none": "tab:gray"}


def _color(method, i):
    return _COLORS.get(method, f"C{i + 2}")


def _fmt(mean, std, digits=2):
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def iteration_curves(trials: List[Dict], iterations: int) -> Dict[str, List[float]]:
    """Per iteration of one search: ``mean`` (batch mean reward), ``mu`` (reward of sample 0: the
    mean itself under PPO's baseline "mu", meaningless for random search), ``best`` so far and
    ``mu_step`` (largest change of one coordinate of mu from the previous iteration; nan at 0)."""
    mean, mu, thetas = [], [], []
    for it in range(iterations):
        batch = [t for t in trials if t["iteration"] == it]
        mean.append(float(np.mean([t["reward"] for t in batch])) if batch else math.nan)
        first = [t for t in batch if t["index"] == 0]
        mu.append(first[0]["reward"] if first else math.nan)
        thetas.append(np.asarray(first[0]["theta"]) if first else None)
    steps = [math.nan] + [float(np.abs(b - a).max()) if a is not None and b is not None
                          else math.nan for a, b in zip(thetas[:-1], thetas[1:])]
    return {"mean": mean, "mu": mu, "best": best_so_far(trials, iterations), "mu_step": steps}


def _curves(searches: Dict[str, List[Dict]], prefix: str, iterations: int):
    """{key: [curves per seed]} for the searches whose key starts with ``prefix``."""
    return [iteration_curves(trials, iterations) for key, trials in sorted(searches.items())
            if key.startswith(prefix)]


def _band(ax, x, runs, key, color, label, style="-"):
    values = np.array([r[key] for r in runs], dtype=np.float64)
    if np.isnan(values).all():
        return
    m = np.nanmean(values, axis=0)
    ax.plot(x, m, style, color=color, marker="o", ms=4, label=label)
    if len(runs) > 1:
        s = np.nanstd(values, axis=0, ddof=1)
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_reward_curves(results, target, path, noise_std):
    from matplotlib.figure import Figure

    plan = results["plan"]
    x = np.arange(1, plan["iterations"] + 1)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((axes[0], "mean", "batch mean reward (all candidates)"),
                           (axes[1], "best", "best reward so far")):
        for i, method in enumerate(plan["methods"]):
            runs = _curves(results["searches"], f"{target}/{method}/", plan["iterations"])
            _band(ax, x, runs, key, _color(method, i), _LABELS.get(method, method))
            if key == "mean" and method != "random":
                _band(ax, x, runs, "mu", _color(method, i),
                      f"{_LABELS.get(method, method)}: reward of the mean mu", "--")
        ax.set(title=title, xlabel="search iteration", xticks=x)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"hold-out {target} of the proxy (0-1)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{target}: PPO vs random search, {len(plan['search_seeds'])} search seeds "
                 f"(band: ±1 std); seed-to-seed std of one θ's reward: {noise_std:.3f}",
                 fontsize=10)
    _save(fig, path)


def _plot_ablation(results, target, path):
    from matplotlib.figure import Figure

    plan = results["plan"]
    x = np.arange(1, plan["iterations"] + 1)
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for constraints in ("all", "no_truth_table", "no_monotonic", "none"):
        runs = _curves(results["ablation"], f"{constraints}/", plan["iterations"])
        label = "both constraints (paper)" if constraints == "all" else constraints
        _band(axes[0], x, runs, "mu", _COLORS[constraints], label)
        _band(axes[1], x, runs, "best", _COLORS[constraints], label)
    axes[0].set(title="reward of the mean mu", xlabel="search iteration",
                ylabel=f"hold-out {target} of the proxy (0-1)")
    axes[1].set(title="best reward so far", xlabel="search iteration")
    for ax in axes:
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{target}: constraint ablation (PPO), {len(plan['ablation_seeds'])} seed(s)",
                 fontsize=10)
    _save(fig, path)


def _plot_fidelity(pairs, target, rho, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.scatter([p["reward"] for p in pairs], [p["retrained"] for p in pairs])
    ax.set(xlabel=f"proxy reward (hold-out {target}, 0-1)",
           ylabel=f"retrained {EVAL_KEY[target]} on val (%)",
           title=f"proxy fidelity: Spearman rho = {rho:.2f} ({len(pairs)} candidates)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _noise_stats(noise: Dict) -> Dict[str, float]:
    """Seed-to-seed std of the identity's reward, spread across θ at one seed, and the std over
    seeds of a candidate's reward difference to the identity (what common seeds leave)."""
    rewards = np.array([noise["rewards"][s] for s in sorted(noise["rewards"], key=int)])
    identity = rewards[:, 0]
    diffs = rewards[:, 1:] - identity[:, None]
    return {
        "identity_mean": float(identity.mean()),
        "identity_std": float(identity.std(ddof=1)) if len(identity) > 1 else 0.0,
        "across_theta_std": float(rewards.std(axis=1, ddof=1).mean()),
        "paired_diff_std": float(diffs.std(axis=0, ddof=1).mean()) if len(identity) > 1 else 0.0,
        "seeds": len(identity),
        "thetas": rewards.shape[1],
    }


def write_report(results: Dict, out_dir: str) -> str:
    """Write ``search_study.md`` and the PNGs into ``out_dir``; returns the markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    plan = results["plan"]
    lines = [f"# Search-quality study, `{plan['name']}` mode (generated)", "",
             f"Budget per search: {plan['iterations']} iterations x {plan['samples_per_iter']} "
             f"candidates = {plan['iterations'] * plan['samples_per_iter']} proxy trainings of "
             f"{plan['proxy_iters']} iterations, reward = {plan['holdout_size']}-image hold-out "
             f"of segloss_shapes_train. Search seeds {list(plan['search_seeds'])}, training "
             f"seeds {list(plan['train_seeds'])}, retraining {plan['retrain_iters']} iterations, "
             "evaluated on segloss_shapes_val (percent).", ""]

    proxy = (f"fine-tuned from the weights pretrained on segloss_shapes_pretrain "
             f"({plan['pretrain_iters']} iterations)" if plan.get("pretrain_iters")
             else "from random weights")
    lines += ["## Reward noise", "",
              "Proxy reward of the identity curves and of random candidates, trained with several "
              "proxy seeds on one reward set. A search can only rank candidates whose reward "
              "differences exceed the last column.", "",
              "| target | proxy | identity θ reward (mean ± std over proxy seeds) | std across θ "
              "at one seed | std over seeds of (θ − identity) | seeds x θ |",
              "|---|---|---|---|---|---|"]
    noise = {}
    for key, label in (("noise", proxy), ("noise_scratch", "from random weights (search "
                                                              "config as it is)")):
        for target, data in results.get(key, {}).items():
            n = _noise_stats(data)
            if key == "noise":
                noise[target] = n
            lines.append(f"| {target} | {label} | {_fmt(n['identity_mean'], n['identity_std'], 4)}"
                         f" | {n['across_theta_std']:.4f} | {n['paired_diff_std']:.4f} | "
                         f"{n['seeds']} x {n['thetas']} |")
    lines.append("")

    for target, rows in results["retrain"].items():
        key = EVAL_KEY[target]
        start = "the pretrained weights" if plan.get("pretrain_iters") else "random weights"
        lines += [f"## {target}: final training (target {key})", "",
                  f"Each loss trains the model for {plan['retrain_iters']} iterations from "
                  f"{start} with every training seed; mean ± std over all its runs (searched "
                  "losses: search seeds x training seeds), on segloss_shapes_val.", "",
                  f"| loss | {key} (target, mean ± std) | n | "
                  + " | ".join(m for m in _TABLE_METRICS) + " |",
                  "|---|---|---|" + "---|" * len(_TABLE_METRICS)]
        for loss in tuple(plan["methods"]) + UNSEARCHED:
            runs = [r for r in rows.get(loss, []) if "diverged" not in r]
            m, s = mean_std([r[key] for r in runs])
            means = [mean_std([r[k] for r in runs])[0] for k in _TABLE_METRICS]
            lines.append(f"| {_LABELS.get(loss, loss)} | {_fmt(m, s)} | {len(runs)}"
                         f"{'' if len(runs) == len(rows.get(loss, [])) else ' (+diverged)'} | "
                         + " | ".join(f"{v:.2f}" for v in means) + " |")
        lines.append("")
        lines += [f"Search side ({target}, proxy reward 0-1, mean ± std over search seeds):", "",
                  "| method | best sampled reward | batch mean, first iteration | batch mean, "
                  "last iteration | reward of mu, first → last | largest step of one coordinate "
                  "of mu per iteration |", "|---|---|---|---|---|---|"]
        for method in plan["methods"]:
            runs = _curves(results["searches"], f"{target}/{method}/", plan["iterations"])
            best = mean_std([r["best"][-1] for r in runs])
            first = mean_std([r["mean"][0] for r in runs])
            last = mean_std([r["mean"][-1] for r in runs])
            mu = ("—" if method == "random" else
                  f"{_fmt(*mean_std([r['mu'][0] for r in runs]), 4)} → "
                  f"{_fmt(*mean_std([r['mu'][-1] for r in runs]), 4)}")
            step = ("—" if method == "random" else
                    _fmt(*mean_std([s for r in runs for s in r["mu_step"][1:]]), 3))
            lines.append(f"| {_LABELS.get(method, method)} | {_fmt(*best, 4)} | "
                         f"{_fmt(*first, 4)} | {_fmt(*last, 4)} | {mu} | {step} |")
        lines.append("")
        png = f"reward_curves_{target}.png"
        _plot_reward_curves(results, target, os.path.join(out_dir, png),
                            noise.get(target, {}).get("identity_std", math.nan))
        lines += [f"![{target} reward curves]({png})", ""]

    if results["ablation"]:
        target = plan["ablation_target"]
        lines += [f"## Constraint ablation ({target}, PPO)", "",
                  "| constraints | reward of mu, last iteration | batch mean, last iteration | "
                  "best sampled reward |", "|---|---|---|---|"]
        for constraints in ("all", "no_truth_table", "no_monotonic", "none"):
            runs = _curves(results["ablation"], f"{constraints}/", plan["iterations"])
            lines.append(f"| {constraints} | {_fmt(*mean_std([r['mu'][-1] for r in runs]), 4)} | "
                         f"{_fmt(*mean_std([r['mean'][-1] for r in runs]), 4)} | "
                         f"{_fmt(*mean_std([r['best'][-1] for r in runs]), 4)} |")
        _plot_ablation(results, target, os.path.join(out_dir, f"ablation_{target}.png"))
        lines += ["", f"![constraint ablation](ablation_{target}.png)", ""]

    for target, pairs in results["fidelity"].items():
        pairs = [p for p in pairs if p["retrained"] is not None]
        rho = spearman([p["reward"] for p in pairs], [p["retrained"] for p in pairs]) if len(
            pairs) > 1 else math.nan
        lines += [f"## Proxy fidelity ({target})", "",
                  f"Spearman rank correlation between the proxy reward and the retrained "
                  f"{EVAL_KEY[target]} of {len(pairs)} candidates of one PPO search: "
                  f"**{rho:.2f}**.", "",
                  "| proxy reward | retrained |", "|---|---|"]
        lines += [f"| {p['reward']:.4f} | {p['retrained']:.2f} |" for p in pairs]
        _plot_fidelity(pairs, target, rho, os.path.join(out_dir, f"fidelity_{target}.png"))
        lines += ["", f"![proxy fidelity](fidelity_{target}.png)", ""]

    lines += ["## Wall time (2-core CPU)", "", "| phase | minutes |", "|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in results["timings"].items()]
    lines.append(f"| total | {sum(results['timings'].values()) / 60:.1f} |")
    path = os.path.join(out_dir, "search_study.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
