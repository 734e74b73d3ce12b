"""Soft preference labels from a labeler's option scores: pure arithmetic, no model and no I/O.

Vocabulary used throughout:

* an *order* is one presentation of a comparison. In order 1 the first answer of the pair is option (A); in order 2
  it is option (B). Scoring both orders cancels a labeler's preference for a position.
* ``p_a`` is the labeler's normalised probability of option (A) in one order.
* ``p_first`` is the probability that the *first answer of the pair* is better, read from one order: ``p_a`` in
  order 1 and ``1 - p_a`` (that is, p(B)) in order 2.
* the combined label is the mean of the two ``p_first`` values; an ensemble averages combined labels over
  principles; a clamp limits the soft target to a band; confidence is ``|p - 0.5| * 2``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def normalize(logprob_a: float | None, logprob_b: float | None) -> float | None:
    """p(A) = exp(la) / (exp(la) + exp(lb)), computed stably; ``None`` if either score is missing or both are -inf."""
    if logprob_a is None or logprob_b is None:
        return None
    if math.isnan(logprob_a) or math.isnan(logprob_b):
        return None
    if logprob_a == -math.inf and logprob_b == -math.inf:
        return None
    if logprob_a == -math.inf:
        return 0.0
    if logprob_b == -math.inf:
        return 1.0
    d = logprob_b - logprob_a
    if d > 0:
        e = math.exp(-d)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(d))


def first_better(p_a_order1: float, p_a_order2: float) -> tuple[float, float]:
    """The probability that the pair's first answer is better, as read from each order: (p(A) in order 1, p(B) in order 2)."""
    return p_a_order1, 1.0 - p_a_order2


def combine_orders(p_a_order1: float, p_a_order2: float) -> float:
    """p(first answer better) = mean(p_A(order 1), p_B(order 2)). A pure position bias cancels to 0.5."""
    p1, p2 = first_better(p_a_order1, p_a_order2)
    return (p1 + p2) / 2.0


def is_consistent(p_first_order1: float, p_first_order2: float) -> bool:
    """Both orders prefer the same answer (a probability of exactly 0.5 prefers none, so it is not consistent)."""
    return (p_first_order1 - 0.5) * (p_first_order2 - 0.5) > 0


def both_orders(p_a_order1: float | None, p_a_order2: float | None) -> tuple[float, float, float, bool] | None:
    """One comparison read from both orders: (p_first order 1, p_first order 2, combined p, consistent);
    ``None`` when either order abstained."""
    if p_a_order1 is None or p_a_order2 is None:
        return None
    f1, f2 = first_better(p_a_order1, p_a_order2)
    return f1, f2, combine_orders(p_a_order1, p_a_order2), is_consistent(f1, f2)


def position_gap(p_first_order1: float, p_first_order2: float) -> float:
    """|p_order1 - p_order2|: 0 for a labeler that ignores position, 1 for one that only reads position."""
    return abs(p_first_order1 - p_first_order2)


def ensemble(probs: Sequence[float | None]) -> float | None:
    """Mean of the available probabilities (``None`` entries are abstentions); ``None`` if all abstained."""
    vals = [p for p in probs if p is not None]
    if not vals:
        return None
    return sum(vals) / len(vals)


def clamp(p: float, band: Sequence[float] | None) -> float:
    """Limit ``p`` to ``[lo, hi]``; ``band=None`` leaves it unchanged."""
    if band is None:
        return p
    lo, hi = band
    return min(max(p, lo), hi)


def confidence(p: float | None) -> float | None:
    """|p - 0.5| * 2, in [0, 1]: 0 is a coin flip, 1 is certainty."""
    if p is None:
        return None
    return abs(p - 0.5) * 2.0


def passes_filter(p: float | None, min_confidence: float) -> bool:
    """Whether a label goes to the training file: it has a preference (p != 0.5) and enough confidence."""
    c = confidence(p)
    if c is None or c == 0.0:
        return False
    return c >= min_confidence


def histogram(values: Iterable[float], bins: int = 10, lo: float = 0.0, hi: float = 1.0) -> list[int]:
    """Counts of ``values`` in ``bins`` equal bins over [lo, hi]; the top edge falls in the last bin.

    A value within rounding error of a bin edge (0.8 computed as 0.7999999999) counts in the bin above that edge.
    """
    counts = [0] * bins
    width = (hi - lo) / bins
    for v in values:
        k = int((v - lo) / width + 1e-9) if width > 0 else 0
        counts[min(max(k, 0), bins - 1)] += 1
    return counts


def letter_probability(letter: str | None) -> float | None:
    """A parsed answer letter as a hard p(A) for one order: "A" -> 1.0, "B" -> 0.0, no answer -> ``None``."""
    if letter is None:
        return None
    if letter not in ("A", "B"):
        raise ValueError(f"unknown option letter {letter!r}")
    return 1.0 if letter == "A" else 0.0
