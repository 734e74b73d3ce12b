"""Statistics for evaluation figures: Wilson intervals for rates, bootstrap intervals for anything else, Elo ratings
from pairwise comparisons (a Bradley-Terry fit, as used for the Elo scores of the Constitutional AI paper), and an
n-gram repetition share that flags boilerplate a policy may have learned to repeat to please a reward model.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Callable, Iterable, Sequence

_TOKEN = re.compile(r"\w+(?:['’]\w+)*")


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


def tokens(text: str) -> list[str]:
    """Lower-cased words (punctuation and markup are dropped, so n-grams are phrases, not formatting)."""
    return _TOKEN.findall(text.lower())


def words(text: str) -> int:
    return len(text.split())


def ngram_counts(texts: Iterable[str], n: int = 3) -> Counter:
    c: Counter = Counter()
    for t in texts:
        toks = tokens(t)
        for i in range(len(toks) - n + 1):
            c[tuple(toks[i : i + n])] += 1
    return c


def ngram_repeat_share(texts: Iterable[str], n: int = 3) -> float:
    """Share of all word n-grams (pooled over ``texts``) taken by the single most frequent one.

    Near 0 for varied text; high when answers repeat the same boilerplate ("I'm sorry, but ...") or loop.
    Returns 0 when there are no n-grams.
    """
    c = ngram_counts(texts, n)
    total = sum(c.values())
    if total == 0:
        return 0.0
    return c.most_common(1)[0][1] / total


def top_ngram(texts: Iterable[str], n: int = 3) -> tuple[str, int, int] | None:
    """The most frequent n-gram as text, its count and the total number of n-grams (``None`` if there are none)."""
    c = ngram_counts(texts, n)
    if not c:
        return None
    gram, k = c.most_common(1)[0]
    return " ".join(gram), k, sum(c.values())


def mean_length_words(texts: Sequence[str]) -> float:
    """Mean answer length in whitespace-separated words."""
    return mean([words(t) for t in texts])


def ngram_repeat_share_ci(
    texts: Sequence[str], n: int = 3, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float] | None:
    """Bootstrap interval (resampling texts) of :func:`ngram_repeat_share`, vectorised: each text becomes an array of
    n-gram ids once, and every resample is one ``bincount``. Same percentile method as :func:`bootstrap_ci`."""
    import numpy as np

    if not texts:
        return None
    ids: dict[tuple[str, ...], int] = {}
    arrays = []
    for t in texts:
        toks = tokens(t)
        arrays.append(np.array([ids.setdefault(tuple(toks[i : i + n]), len(ids)) for i in range(len(toks) - n + 1)],
                               dtype=np.int64))
    if len(texts) == 1:
        v = ngram_repeat_share(texts, n)
        return (v, v)
    rng = np.random.default_rng(seed)
    m = len(arrays)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, m, size=m)
        joined = np.concatenate([arrays[i] for i in pick])
        vals[b] = np.bincount(joined).max() / joined.size if joined.size else 0.0
    vals.sort()
    lo_i = max(0, min(n_boot - 1, int(math.floor(alpha / 2 * n_boot))))
    hi_i = max(0, min(n_boot - 1, int(math.ceil((1 - alpha / 2) * n_boot)) - 1))
    return (float(vals[lo_i]), float(vals[hi_i]))
