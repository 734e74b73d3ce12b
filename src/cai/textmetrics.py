"""Measurements of generated text, each defined once and used by every stage that reports it.

All of them count *words*: lower-cased runs of letters and digits, with inner apostrophes kept ("i'm", "don't"),
so punctuation and markup never form n-grams. Three different questions about repetition have three names:

* :func:`answers_with_top_ngram` - across a batch of answers, the share of *answers* that contain the batch's most
  widespread n-gram. Boilerplate pasted into every answer ("I'm sorry, but I can't ...") drives it to 1.0; for
  varied answers it stays near ``1 / len(texts)``. ``cai rl`` logs it per step as ``repeat_3gram_share``.
* :func:`top_ngram_share` - the share of all n-grams, pooled over the answers, taken by the single most frequent
  one. Near 0 for varied text; high when answers repeat one phrase or loop. ``cai eval`` stores it per model as
  ``ngram_repeat_share`` (with a bootstrap interval from :func:`top_ngram_share_ci`).
* :func:`loop_share` - within *one* text, the share of its n-grams taken by its most repeated one (0 for short texts
  and for an n-gram seen fewer than three times): a degenerate loop. SL-CAI flags revisions on it.

Besides repetition: :func:`distinct_ngram_ratio` (distinct / all n-grams over a batch), :func:`word_count` and
:func:`length_stats` (mean words and characters, share of empty answers).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

_WORD = re.compile(r"\w+(?:['’]\w+)*")


def words(text: str | None) -> list[str]:
    """Lower-cased words of ``text`` (punctuation and markup dropped)."""
    return _WORD.findall((text or "").lower())


def word_count(text: str | None) -> int:
    """Number of :func:`words` in ``text``."""
    return len(words(text))


def ngrams(tokens: Sequence[str], n: int = 3) -> list[tuple[str, ...]]:
    """Consecutive ``n``-tuples of ``tokens`` (none when there are fewer than ``n``)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# --- across answers: how many answers carry the same phrase ---------------------------------------------------------
def most_widespread_ngram(texts: Sequence[str], n: int = 3) -> tuple[tuple[str, ...] | None, int]:
    """The n-gram found in the most answers (ties: the first seen) and the number of answers containing it."""
    df: Counter = Counter()
    for t in texts:
        df.update(dict.fromkeys(ngrams(words(t), n), 1))  # each n-gram once per answer, in order of appearance
    if not df:
        return None, 0
    gram, count = df.most_common(1)[0]
    return gram, count


def answers_with_top_ngram(texts: Sequence[str], n: int = 3) -> float:
    """Share of answers containing the most widespread n-gram (0.0 for no answers or no n-grams at all)."""
    if not texts:
        return 0.0
    return most_widespread_ngram(texts, n)[1] / len(texts)


# --- pooled over answers: how much of all text is one phrase --------------------------------------------------------
def ngram_counts(texts: Iterable[str], n: int = 3) -> Counter:
    """Occurrences of every n-gram, pooled over ``texts``."""
    c: Counter = Counter()
    for t in texts:
        c.update(ngrams(words(t), n))
    return c


def top_ngram_share(texts: Iterable[str], n: int = 3) -> float:
    """Share of all n-grams (pooled over ``texts``) taken by the single most frequent one; 0.0 when there are none."""
    c = ngram_counts(texts, n)
    total = sum(c.values())
    return c.most_common(1)[0][1] / total if total else 0.0


def most_frequent_ngram(texts: Iterable[str], n: int = 3) -> tuple[str, int, int] | None:
    """The most frequent n-gram as text, its count and the number of all n-grams (``None`` if there are none)."""
    c = ngram_counts(texts, n)
    if not c:
        return None
    gram, k = c.most_common(1)[0]
    return " ".join(gram), k, sum(c.values())


def top_ngram_share_ci(
    texts: Sequence[str], n: int = 3, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float] | None:
    """Bootstrap interval (resampling texts) of :func:`top_ngram_share`, vectorised: each text becomes an array of
    n-gram ids once and every resample is one ``bincount``. Same percentile method as
    :func:`cai.evaluate.stats.bootstrap_ci`."""
    import numpy as np

    if not texts:
        return None
    ids: dict[tuple[str, ...], int] = {}
    arrays = [np.array([ids.setdefault(g, len(ids)) for g in ngrams(words(t), n)], dtype=np.int64) for t in texts]
    if len(texts) == 1:
        v = top_ngram_share(texts, n)
        return (v, v)
    rng = np.random.default_rng(seed)
    m = len(arrays)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        joined = np.concatenate([arrays[i] for i in rng.integers(0, m, size=m)])
        vals[b] = np.bincount(joined).max() / joined.size if joined.size else 0.0
    vals.sort()
    lo_i = max(0, min(n_boot - 1, int(math.floor(alpha / 2 * n_boot))))
    hi_i = max(0, min(n_boot - 1, int(math.ceil((1 - alpha / 2) * n_boot)) - 1))
    return (float(vals[lo_i]), float(vals[hi_i]))


# --- within one text: a loop ----------------------------------------------------------------------------------------
def loop_share(text: str, n: int = 3, *, min_ngrams: int = 4, min_count: int = 3) -> float:
    """Share of one text's n-grams taken by its most repeated n-gram.

    0.0 when the text has fewer than ``min_ngrams`` n-grams or its top n-gram occurs fewer than ``min_count`` times
    (a phrase said twice is not a loop).
    """
    grams = ngrams(words(text), n)
    if len(grams) < min_ngrams:
        return 0.0
    top = Counter(grams).most_common(1)[0][1]
    return 0.0 if top < min_count else top / len(grams)


# --- diversity and length -------------------------------------------------------------------------------------------
def distinct_ngram_ratio(texts: Sequence[str], n: int = 3) -> float:
    """Distinct n-grams / all n-grams over the answers (1.0 when none repeats, also when there are none)."""
    allg = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(allg)) / len(allg) if allg else 1.0


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Mean words and characters per answer, and the share of empty answers (all 0.0 for no answers)."""
    if not texts:
        return {"answer_words": 0.0, "answer_chars": 0.0, "empty_rate": 0.0}
    n = len(texts)
    return {
        "answer_words": sum(word_count(t) for t in texts) / n,
        "answer_chars": sum(len(t.strip()) for t in texts) / n,
        "empty_rate": sum(not t.strip() for t in texts) / n,
    }
