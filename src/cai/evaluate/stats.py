"""Statistics for evaluation figures: Wilson intervals for rates, bootstrap intervals for anything else, Elo ratings
from pairwise comparisons (a Bradley-Terry fit, as used for the Elo scores of the Constitutional AI paper). Text
measurements (lengths, repetition) are in :mod:`cai.textmetrics`.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterable, Sequence


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``; ``(0, 1)`` when ``n`` is 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bootstrap_ci(
    values: Sequence,
    fn: Callable[[Sequence], float] = mean,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``fn(values)``: resample ``values`` with replacement ``n`` times.

    Returns ``None`` for an empty sample. ``values`` may hold anything ``fn`` accepts (numbers, texts, pairs).
    """
    vals = list(values)
    if not vals:
        return None
    if len(vals) == 1:
        v = float(fn(vals))
        return (v, v)
    rng = random.Random(seed)
    m = len(vals)
    stats = sorted(float(fn([vals[rng.randrange(m)] for _ in range(m)])) for _ in range(n))
    lo_i = max(0, min(n - 1, int(math.floor(alpha / 2 * n))))
    hi_i = max(0, min(n - 1, int(math.ceil((1 - alpha / 2) * n)) - 1))
    return (stats[lo_i], stats[hi_i])


def elo(
    results: Iterable[tuple[str, str, float]],
    *,
    anchor: str | None = None,
    prior: float = 1.0,
    iters: int = 2000,
    tol: float = 1e-10,
    scale: float = 400.0,
) -> dict[str, float]:
    """Elo ratings from pairwise outcomes ``(model_a, model_b, score_a)`` with ``score_a`` in [0, 1] (1 = a won,
    0.5 = tie, or a soft preference probability).

    Fits a Bradley-Terry model by the minorization-maximization iteration (Hunter 2004); the rating of a model is
    ``scale * log10(strength)``, so a gap of 400 points means 10:1 odds. ``prior`` adds that many virtual ties to
    every compared pair, which keeps ratings finite when one model wins every comparison (0 fits the raw data).
    Ratings are anchored so ``anchor`` has 0, or, without an anchor, so their mean is 0.
    """
    wins: dict[str, float] = {}
    games: dict[tuple[str, str], float] = {}
    for a, b, s in results:
        if a == b:
            raise ValueError(f"a model cannot be compared with itself ({a})")
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"score_a must lie in [0, 1], got {s}")
        wins[a] = wins.get(a, 0.0) + s
        wins[b] = wins.get(b, 0.0) + (1.0 - s)
        key = (a, b) if a < b else (b, a)
        games[key] = games.get(key, 0.0) + 1.0
    if not games:
        return {}
    if prior > 0:
        for (a, b) in list(games):
            games[(a, b)] += prior
            wins[a] += prior / 2
            wins[b] += prior / 2
    models = sorted(wins)
    if anchor is not None and anchor not in wins:
        raise ValueError(f"anchor model '{anchor}' has no comparisons")
    opp: dict[str, list[tuple[str, float]]] = {m: [] for m in models}
    for (a, b), g in games.items():
        opp[a].append((b, g))
        opp[b].append((a, g))
    p = {m: 1.0 for m in models}
    floor = 1e-12
    for _ in range(iters):
        new = {}
        for m in models:
            denom = sum(g / (p[m] + p[o]) for o, g in opp[m])
            new[m] = max(wins[m] / denom, floor) if denom > 0 else p[m]
        logs = [math.log(v) for v in new.values()]
        g_mean = math.exp(sum(logs) / len(logs))
        new = {m: v / g_mean for m, v in new.items()}
        delta = max(abs(math.log(new[m]) - math.log(p[m])) for m in models)
        p = new
        if delta < tol:
            break
    ratings = {m: scale * math.log10(p[m]) for m in models}
    shift = ratings[anchor] if anchor is not None else sum(ratings.values()) / len(ratings)
    return {m: r - shift for m, r in ratings.items()}
