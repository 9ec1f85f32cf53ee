"""Tables and plots of a search-quality study (:class:`~experiments.study.SearchStudy`).

``write_report(results, out_dir)`` writes ``search_study.md`` (markdown tables) and PNGs into
``out_dir``; plots use ``matplotlib.figure.Figure`` (no pyplot, no backend switch).
"""
import math
import os
import re
from typing import Dict, List

import numpy as np

from .study import (
    ABLATION,
    METHODS,
    UNSEARCHED,
    _method,
    _screen_gain,
    best_so_far,
    mean_std,
    screened_answers,
    screened_seeds,
    spearman,
    target_value,
)

__all__ = ["write_report", "iteration_curves"]

_TABLE_METRICS = ("mIoU", "fwIoU", "BIoU", "BF1", "mACC", "pACC")
_UNSEARCHED_LABELS = {"cross_entropy": "cross-entropy", "naive": "naive (identity curves)",
                      "preset": "released VOC preset"}


def _label(name: str) -> str:
    """Table label of a method, an answer ("ppo:mu") or an unsearched loss."""
    if name in _UNSEARCHED_LABELS:
        return _UNSEARCHED_LABELS[name]
    method, _, kind = name.partition(":")
    label = _method(method).label if all(p in METHODS for p in method.split("+")) else method
    return label + {"": "", "mu": ": final mean μ", "sampled": ": best sampled θ"}[kind]


def _fmt(mean, std, digits=2):
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def iteration_curves(trials: List[Dict], iterations: int) -> Dict[str, List[float]]:
    """Per iteration of one search: ``mean`` (batch mean reward), ``mu`` (reward of sample 0: the
    mean itself under PPO's baseline "mu", meaningless for random search), ``best`` so far and
    ``mu_step`` (largest change of one coordinate of mu from the previous iteration; nan at 0)."""
    trials = [t for t in trials if t.get("stage", "search") == "search"]
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


def _iterations(trials: List[Dict]) -> int:
    return 1 + max((t["iteration"] for t in trials if t.get("stage", "search") == "search"),
                   default=-1)


def _runs(searches: Dict[str, List[Dict]], prefix: str):
    """Iteration curves of the searches whose key starts with ``prefix``, one per seed."""
    return [iteration_curves(trials, _iterations(trials))
            for key, trials in sorted(searches.items()) if key.startswith(prefix)]


def _band(ax, runs, key, color, label, style="-"):
    values = [r[key] for r in runs]
    n = min((len(v) for v in values), default=0)
    if not n:
        return
    values = np.array([v[:n] for v in values], dtype=np.float64)
    if np.isnan(values).all():
        return
    x = np.arange(1, n + 1)
    m = np.nanmean(values, axis=0)
    ax.plot(x, m, style, color=color, marker="o", ms=4, label=label)
    if len(runs) > 1:
        s = np.nanstd(values, axis=0, ddof=1)
        ax.fill_between(x, m - s, m + s, color=color, alpha=0.15)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_reward_curves(results, target, methods, path, noise_std):
    from matplotlib.figure import Figure

    plan = results["plan"]
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((axes[0], "mean", "batch mean reward (all candidates)"),
                           (axes[1], "best", "best sampled reward so far")):
        for i, method in enumerate(methods):
            runs = _runs(results["searches"], f"{target}/{method}/")
            _band(ax, runs, key, f"C{i}", _label(method))
            if key == "mean" and not method.startswith("random"):
                _band(ax, runs, "mu", f"C{i}", f"{_label(method)}: reward of μ", "--")
        ax.set(title=title, xlabel="search iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"hold-out {target} of the proxy (0-1)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{target}: {len(plan['search_seeds'])} search seeds (band: ±1 std); "
                 f"seed-to-seed std of one θ's reward: {noise_std:.3f}", fontsize=10)
    _save(fig, path)


def _plot_budget_curve(curve, target, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (method, points) in enumerate(sorted(curve.items())):
        xs = sorted(points, key=int)
        budget = [np.mean(points[b]["proxy_iters"]) for b in xs]
        stats = [mean_std([target_value(r, target) for r in points[b]["runs"]])
                 for b in xs]
        m = np.array([s[0] for s in stats])
        sd = np.array([s[1] for s in stats])
        ax.errorbar(budget, m, yerr=sd, marker="o", capsize=3, color=f"C{i}",
                    label=_label(method))
    ax.set(xscale="log", xlabel="total proxy training iterations of the search",
           ylabel=f"retrained {target} on val (%)", title=f"{target}: how much search is enough")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def _plot_ablation(results, target, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for i, method in enumerate(ABLATION):
        runs = _runs(results["ablation"], f"{method}/")
        label = "both constraints (paper)" if method == "ppo" else method[4:]
        _band(axes[0], runs, "mu", f"C{i}", label)
        _band(axes[1], runs, "best", f"C{i}", label)
    axes[0].set(title="reward of the mean μ", xlabel="search iteration",
                ylabel=f"hold-out {target} of the proxy (0-1)")
    axes[1].set(title="best reward so far", xlabel="search iteration")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{target}: constraint ablation (PPO)", fontsize=10)
    _save(fig, path)


def _plot_fidelity(pairs, target, rho, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.scatter([p["reward"] for p in pairs], [p["retrained"] for p in pairs])
    ax.set(xlabel=f"proxy reward (hold-out {target}, 0-1)",
           ylabel=f"retrained {target} on val (%)",
           title=f"proxy fidelity: Spearman rho = {rho:.2f} ({len(pairs)} candidates)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _noise_stats(noise: Dict) -> Dict[str, float]:
    """Seed-to-seed std of the identity's reward, spread across θ at one seed, and the std over
    seeds of a candidate's reward difference to the identity (what common seeds leave).
    ``noise``: {proxy seed: [rewards of the thetas]}."""
    rewards = np.array([noise[s] for s in sorted(noise, key=int)])
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


def _budget_of(results, target, method) -> str:
    budgets = [v for k, v in results["budgets"].items()
               if re.fullmatch(rf"{re.escape(target)}_{re.escape(method)}_s\d+",
                               os.path.basename(k)) and v]
    return str(int(np.mean(budgets))) if budgets else "?"


def _retrain_row(name, runs, target, extra=""):
    ok = [r for r in runs if "diverged" not in r]
    m, s = mean_std([target_value(r, target) for r in ok])
    means = [mean_std([r.get(k) for r in ok])[0] for k in _TABLE_METRICS]
    diverged = "" if len(ok) == len(runs) else f" (+{len(runs) - len(ok)} diverged)"
    return (f"| {_label(name)}{extra} | {_fmt(m, s)} | {len(ok)}{diverged} | "
            + " | ".join(f"{v:.2f}" for v in means) + " |")


_RECIPES = {
    "": ("final training", "from the pretrained weights, on segloss_shapes_val"),
    "scratch": ("final training from random weights", "from random weights (no pretrained "
                "start), on segloss_shapes_val"),
    "Base-Tiny-SemanticFPN": ("transfer to another network: tiny Semantic FPN",
                              "from the pretrained backbone, on segloss_shapes_val"),
    "Base-Tiny-PointRend": ("transfer to another network: tiny PointRend",
                            "from the pretrained backbone, on segloss_shapes_val"),
    "Base-Tiny-DeepLabV3Plus-Hires": ("transfer to another dataset: segloss_shapes_hires",
                                      "from the pretrained weights, on segloss_shapes_hires_val "
                                      "(192x256, other class mix, no search saw it)"),
}


def _retrain_table(plan, target, recipe, rows) -> List[str]:
    title, how = _RECIPES.get(recipe, (f"retrained with {recipe}", "on its test split"))
    lines = [f"## {target}: {title}", "",
             f"Each loss trains for {plan['retrain_iters']} iterations {how}, with every training "
             "seed; mean ± std over all its runs (searched losses: search seeds x training "
             "seeds).", "",
             f"| loss | {target} (target) | n | " + " | ".join(_TABLE_METRICS) + " |",
             "|---|---|---|" + "---|" * len(_TABLE_METRICS)]
    for name in [n for n in rows if n not in UNSEARCHED] + list(UNSEARCHED):
        if name in rows:
            lines.append(_retrain_row(name, rows[name], target))
    return lines + [""]


def write_report(results: Dict, out_dir: str) -> str:
    """Write ``search_study.md`` and the PNGs into ``out_dir``; returns the markdown path."""
    os.makedirs(out_dir, exist_ok=True)
    plan = results["plan"]
    budget = plan["iterations"] * plan["samples_per_iter"]
    lines = [f"# Search-quality study, `{plan['name']}` mode (generated)", "",
             f"Budget per search: {budget} proxy trainings of {plan['proxy_iters']} iterations "
             f"({budget * plan['proxy_iters']} proxy iterations; the paper's settings spend them "
             f"as {plan['iterations']} iterations x {plan['samples_per_iter']} candidates), "
             f"reward = {plan['holdout_size']}-image hold-out of segloss_shapes_train. Search "
             f"seeds {list(plan['search_seeds'])}, training seeds {list(plan['train_seeds'])}, "
             f"screening proxy seeds {list(plan['screen_seeds'])}, retraining "
             f"{plan['retrain_iters']} iterations, evaluated on segloss_shapes_val (percent).", ""]

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

    for target in plan["targets"]:
        screen = results["screen"].get(target)
        if screen:
            answers = screened_answers(screen)
            lines += [
                f"## {target}: screening (proxy level)", "",
                "The answer of every search and the identity curves (the unsearched start), "
                "trained side by side as proxies with fresh seeds on the search's hold-out set. "
                "Gain = answer's reward − identity's reward, averaged over the fresh seeds; "
                "mean ± std over the search seeds (per seed in brackets), in reward points "
                f"(percent). Best method: **{_label(results['best'][target])}**.", "",
                "| answer | proxy iterations | gain over identity | per search seed | answer's "
                "reward | search's best sampled reward | reward of μ, first → last | largest "
                "μ step |", "|---|---|---|---|---|---|---|---|"]
            for answer in answers:
                gain, sd, per_seed = _screen_gain(screen, answer)
                reward = mean_std([np.mean([r[answer] for r in rows])
                                   for rows in screened_seeds(screen, answer)])
                method = answer.partition(":")[0]
                runs = _runs(results["searches"], f"{target}/{method}/")
                search_side = "| | | "
                if ":" not in answer:
                    best = mean_std([r["best"][-1] for r in runs])
                    mu = ("—" if method.startswith("random") else
                          f"{_fmt(*mean_std([r['mu'][0] for r in runs]), 3)} → "
                          f"{_fmt(*mean_std([r['mu'][-1] for r in runs]), 3)}")
                    step = ("—" if method.startswith("random") else
                            _fmt(*mean_std([s for r in runs for s in r["mu_step"][1:]]), 2))
                    search_side = f"| {_fmt(*best, 4)} | {mu} | {step} |"
                lines.append(
                    f"| {_label(answer)} | {_budget_of(results, target, method)} | "
                    f"{_fmt(100 * gain, 100 * sd)} | "
                    f"{', '.join(f'{100 * g:+.2f}' for g in per_seed)} | "
                    f"{_fmt(*reward, 4)} {search_side}")
            lines.append("")

        rows = results["retrain"].get(target, {})
        by_recipe = {}
        for name, runs in rows.items():
            base, _, recipe = name.partition(" @")
            by_recipe.setdefault(recipe, {})[base] = runs
        for recipe, table in sorted(by_recipe.items(), key=lambda kv: (kv[0] != "", kv[0])):
            lines += _retrain_table(plan, target, recipe, table)

        methods = list(dict.fromkeys(
            ["ppo", "random", results.get("best", {}).get(target, "ppo")]))
        methods = [m for m in methods if f"{target}/{m}/{plan['search_seeds'][0]}" in
                   results["searches"]]
        if methods:
            png = f"reward_curves_{target}.png"
            _plot_reward_curves(results, target, methods, os.path.join(out_dir, png),
                                noise.get(target, {}).get("identity_std", math.nan))
            lines += [f"![{target} reward curves]({png})", ""]

        curve = results["budget_curve"].get(target)
        if curve:
            lines += [f"## {target}: budget curve", "",
                      f"Retrained {target} (mean ± std over search seeds x training seeds) of "
                      "the answer of searches with several budgets.", "",
                      "| method | " + " | ".join(
                          f"{b} iterations" for b in sorted(next(iter(curve.values())), key=int))
                      + " |", "|---|" + "---|" * len(next(iter(curve.values())))]
            for method, points in sorted(curve.items()):
                cells = []
                for b in sorted(points, key=int):
                    runs = [target_value(r, target) for r in points[b]["runs"]]
                    spent = int(np.mean(points[b]["proxy_iters"]))
                    cells.append(f"{_fmt(*mean_std(runs))} ({spent} proxy it.)")
                lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
            png = f"budget_curve_{target}.png"
            _plot_budget_curve(curve, target, os.path.join(out_dir, png))
            lines += ["", f"![{target} budget curve]({png})", ""]

    if results["ablation"]:
        target = plan["ablation_target"]
        lines += [f"## Constraint ablation ({target}, PPO)", "",
                  "| constraints | reward of μ, last iteration | batch mean, last iteration | "
                  "best sampled reward |", "|---|---|---|---|"]
        for method in ABLATION:
            runs = _runs(results["ablation"], f"{method}/")
            lines.append(f"| {_label(method)} | {_fmt(*mean_std([r['mu'][-1] for r in runs]), 4)}"
                         f" | {_fmt(*mean_std([r['mean'][-1] for r in runs]), 4)} | "
                         f"{_fmt(*mean_std([r['best'][-1] for r in runs]), 4)} |")
        _plot_ablation(results, target, os.path.join(out_dir, f"ablation_{target}.png"))
        lines += ["", f"![constraint ablation](ablation_{target}.png)", ""]

    for target, pairs in results["fidelity"].items():
        pairs = [p for p in pairs if p["retrained"] is not None]
        rho = spearman([p["reward"] for p in pairs], [p["retrained"] for p in pairs]) if len(
            pairs) > 1 else math.nan
        lines += [f"## Proxy fidelity ({target})", "",
                  f"Spearman rank correlation between the proxy reward and the retrained "
                  f"{target} of {len(pairs)} candidates of one search: **{rho:.2f}**.", "",
                  "| proxy reward | retrained |", "|---|---|"]
        lines += [f"| {p['reward']:.4f} | {p['retrained']:.2f} |" for p in pairs]
        _plot_fidelity(pairs, target, rho, os.path.join(out_dir, f"fidelity_{target}.png"))
        lines += ["", f"![proxy fidelity](fidelity_{target}.png)", ""]

    lines += ["## Wall time", "",
              "Compute time of each phase (summed over the worker processes), and the wall time "
              "of this run (finished work reused from an earlier run costs nothing).", "",
              "| phase | minutes |", "|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in results["timings"].items()]
    lines.append(f"| wall time of this run | {results.get('wall_seconds', math.nan) / 60:.1f} |")
    path = os.path.join(out_dir, "search_study.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
