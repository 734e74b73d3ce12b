"""Consensus and division across opinion groups.

For statement s and group g, with A agrees, D disagrees and P passes among the group's members who saw s
(votes = A + D + P):

* the group's agreement is the smoothed share ``(A + 1) / (votes + 2)``;
* **group-aware consensus** (rule ``gac``) is the product over groups of that share. A statement is kept when the
  product's geometric mean over the k groups (``gac ** (1 / k)``) reaches the threshold, so one threshold means the
  same thing for any number of groups;
* the **per-group threshold rule** (rule ``threshold``) keeps a statement when in every group the raw share of agrees
  ``A / votes`` reaches the threshold and the group cast at least ``min_group_votes`` votes on it;
* **divisiveness** is the spread of the smoothed agreement across groups (highest minus lowest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Rule = Literal["gac", "threshold"]


@dataclass
class StatementStats:
    index: int
    agrees: list[int]
    disagrees: list[int]
    passes: list[int]

    @property
    def votes(self) -> list[int]:
        return [a + d + p for a, d, p in zip(self.agrees, self.disagrees, self.passes)]

    @property
    def smoothed(self) -> list[float]:
        return [(a + 1) / (v + 2) for a, v in zip(self.agrees, self.votes)]

    @property
    def raw(self) -> list[float | None]:
        return [a / v if v else None for a, v in zip(self.agrees, self.votes)]

    @property
    def gac(self) -> float:
        return float(np.prod(self.smoothed))

    @property
    def gac_mean(self) -> float:
        """Geometric mean over groups of the smoothed agreement: ``gac ** (1 / k)``."""
        return self.gac ** (1.0 / len(self.agrees))

    @property
    def divisiveness(self) -> float:
        s = self.smoothed
        return max(s) - min(s)

    def kept(self, rule: Rule, threshold: float, min_group_votes: int) -> bool:
        if rule == "gac":
            return self.gac_mean >= threshold
        return all(v >= min_group_votes and r is not None and r >= threshold for v, r in zip(self.votes, self.raw))


def statement_stats(votes: np.ndarray, labels: np.ndarray, k: int) -> list[StatementStats]:
    out = []
    for j in range(votes.shape[1]):
        col = votes[:, j]
        a, d, p = [], [], []
        for g in range(k):
            c = col[labels == g]
            a.append(int(np.sum(c == 1)))
            d.append(int(np.sum(c == -1)))
            p.append(int(np.sum(c == 0)))
        out.append(StatementStats(j, a, d, p))
    return out


def threshold_curve(stats: list[StatementStats], min_group_votes: int, steps: list[float] | None = None) -> list[dict]:
    """How many statements each rule keeps at thresholds 0.50, 0.55, ..., 0.95."""
    steps = steps or [round(0.5 + 0.05 * i, 2) for i in range(10)]
    return [{"threshold": t, "gac": sum(s.kept("gac", t, min_group_votes) for s in stats),
             "threshold_rule": sum(s.kept("threshold", t, min_group_votes) for s in stats)} for t in steps]
