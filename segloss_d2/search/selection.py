"""Choosing the answer of a search without the winner's curse (docs/method.md §4.6).

The paper returns the best *sampled* θ by one proxy reward. With noisy rewards the maximum of many
draws is biased toward a lucky proxy seed, so the retrained model regresses toward the mean.
:class:`Selection` re-evaluates the ``top_k`` best sampled candidates and the final mean μ with
proxy seeds the search never used, and chooses by their mean reward over those fresh seeds only
(the search's own reward is the biased one)::

    sel = Selection(top_k=3, seeds=[2001, 3001])
    candidates = sel.candidates(search_trials, final_mu)   # <= top_k + 1 distinct thetas
    thetas, seeds = sel.plan(candidates)                   # (C * S, D) and S * C seeds
    ... train a proxy for every row with its seed, log the records ...
    chosen = sel.choose(candidates, records)               # the answer and every score

Pure Python/torch: the loop (:func:`~segloss_d2.search.loop.run_search`) runs the trainings.
"""
import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from .state import search_stage_trials, trial_order_key

__all__ = ["Selection"]


class Selection:
    """Re-evaluation of the best candidates with fresh proxy seeds.

    Args:
        top_k (int): how many of the best distinct sampled candidates are re-evaluated, >= 1.
        seeds (sequence of int): the fresh proxy seeds; every candidate is trained once with each.
        include_mu (bool): also re-evaluate the final mean of the search distribution.
    """

    def __init__(self, top_k: int, seeds: Sequence[int], include_mu: bool = True):
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        seeds = list(seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                            for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct ints >= 0, at least one, got {seeds!r}")
        self.top_k, self.seeds, self.include_mu = top_k, seeds, bool(include_mu)

    def __repr__(self) -> str:
        return f"Selection(top_k={self.top_k}, seeds={self.seeds}, include_mu={self.include_mu})"

    @property
    def max_trainings(self) -> int:
        """Proxy trainings the selection costs at most: ``(top_k + 1) * len(seeds)``."""
        return (self.top_k + int(self.include_mu)) * len(self.seeds)

    def candidates(self, trials: Sequence[Dict[str, Any]],
                   final_mu: Optional[Sequence[float]]) -> List[Dict[str, Any]]:
        """The candidates to re-evaluate: the ``top_k`` best distinct sampled thetas (by
        :func:`trial_order_key`) and then the final mean (unless it equals one of them).

        Returns:
            list of dict: ``theta`` (list of D floats), ``source`` ("mu" or
            ``[iteration, index]`` of the trial), ``search_reward`` (float or None for mu).
        """
        out, seen = [], set()
        for r in sorted(search_stage_trials(trials), key=trial_order_key, reverse=True):
            key = tuple(float(v) for v in r["theta"])
            if key in seen:
                continue
            seen.add(key)
            out.append({"theta": list(key), "source": [r["iteration"], r["index"]],
                        "search_reward": r["reward"]})
            if len(out) == self.top_k:
                break
        if self.include_mu and final_mu is not None:
            key = tuple(float(v) for v in final_mu)
            if key not in seen:
                out.append({"theta": list(key), "source": "mu", "search_reward": None})
        return out

    def plan(self, candidates: Sequence[Dict[str, Any]]):
        """The re-evaluation trainings, seed-major (all candidates of one seed are contiguous,
        so they train side by side on the same batches).

        Returns:
            (Tensor, list[int]): ``(S * C, D)`` float32 thetas (row ``s * C + c`` is candidate
            ``c`` with seed ``seeds[s]``) and the ``S * C`` seeds.
        """
        if not candidates:
            raise ValueError("nothing to re-evaluate: no successful sampled trial and no mean")
        thetas = torch.tensor([c["theta"] for c in candidates], dtype=torch.float32)
        return (thetas.repeat(len(self.seeds), 1),
                [s for s in self.seeds for _ in candidates])

    def choose(self, candidates: Sequence[Dict[str, Any]],
               records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        """The candidate with the highest mean reward over the fresh seeds (a diverged
        re-evaluation counts as its logged reward, 0); ties go to the earlier candidate (the
        better one in the search).

        Args:
            candidates: from :meth:`candidates`.
            records: the ``S * C`` logged re-evaluations, ordered as :meth:`plan`.

        Returns:
            dict: the chosen candidate's ``theta``, ``source``, ``search_reward``,
            ``mean_reward`` and ``rewards`` (one per seed), and ``table`` (the same for every
            candidate, in candidate order).
        """
        c = len(candidates)
        if len(records) != c * len(self.seeds):
            raise ValueError(f"expected {c * len(self.seeds)} re-evaluations, got {len(records)}")
        table = []
        for j, cand in enumerate(candidates):
            rewards = [float(records[s * c + j]["reward"]) for s in range(len(self.seeds))]
            table.append({**cand, "rewards": rewards,
                          "mean_reward": math.fsum(rewards) / len(rewards)})
        best = max(range(c), key=lambda j: (table[j]["mean_reward"], -j))
        return {**table[best], "table": table}
