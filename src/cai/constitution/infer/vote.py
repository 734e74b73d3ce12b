"""Test principles on preference pairs: the labeler answers each principle's question in both orders.

For a principle and a pair the labeler is asked the principle's comparison question twice, once with the chosen
answer as option (A) and once as option (B); the two readings are combined into ``p``, the probability that the
principle prefers the chosen answer (:func:`cai.labeling.softlabel.combine_orders`, so a pure position habit cancels
to 0.5). The principle votes *for* the pair's label when ``p`` leans to the chosen answer by at least the relevance
margin, *against* when it leans the other way by as much, and abstains (not relevant to this pair) otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from cai.constitution.infer.cache import CachedModel
from cai.constitution.infer.data import Pair
from cai.labeling import prompts as P
from cai.labeling.softlabel import combine_orders

#: The question of the labeler without a constitution.
PLAIN_QUESTION = "Which of these responses is better?"


def _prompt(pair: Pair) -> str:
    return pair.prompt or "(no request given)"


def preference_matrix(model: CachedModel, questions: Sequence[str], pairs: Sequence[Pair], *, parse_tokens: int = 8,
                      retries: int = 1) -> list[list[float | None]]:
    """``p[q][i]``: probability that question ``q`` prefers the chosen answer of pair ``i`` (``None``: abstained)."""
    items = []
    for q in questions:
        for pair in pairs:
            items.append((q, pair, pair.chosen, pair.rejected))  # order 1: chosen is (A)
            items.append((q, pair, pair.rejected, pair.chosen))  # order 2: chosen is (B)
    scoring = [P.scoring_conversation(_prompt(pr), q, a, b) for q, pr, a, b in items]
    p_a = model.choose(scoring, lambda k: P.answer_conversation(_prompt(items[k][1]), items[k][0], items[k][2], items[k][3]),
                       parse_tokens=parse_tokens, retries=retries)
    out: list[list[float | None]] = []
    n = len(pairs)
    for qi in range(len(questions)):
        row = []
        for i in range(n):
            k = 2 * (qi * n + i)
            a1, a2 = p_a[k], p_a[k + 1]
            row.append(None if a1 is None or a2 is None else combine_orders(a1, a2))
        out.append(row)
    return out


@dataclass
class Votes:
    """How one principle voted on a set of pairs."""

    supporting: list[str] = field(default_factory=list)
    opposing: list[str] = field(default_factory=list)
    abstained: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.supporting) + len(self.opposing) + len(self.abstained)

    @property
    def relevance(self) -> float:
        return (len(self.supporting) + len(self.opposing)) / self.n if self.n else 0.0

    @property
    def accuracy(self) -> float | None:
        d = len(self.supporting) + len(self.opposing)
        return len(self.supporting) / d if d else None

    def as_dict(self) -> dict:
        return {"for": len(self.supporting), "against": len(self.opposing), "abstained": len(self.abstained),
                "accuracy": self.accuracy, "relevance": self.relevance,
                "supporting_pairs": list(self.supporting), "opposing_pairs": list(self.opposing)}


def votes(row: Sequence[float | None], pairs: Sequence[Pair], margin: float) -> Votes:
    """Votes from one row of :func:`preference_matrix`: a vote needs ``|p - 0.5| * 2 >= margin``."""
    v = Votes()
    for p, pair in zip(row, pairs):
        if p is None or abs(p - 0.5) * 2 < margin or p == 0.5:
            v.abstained.append(pair.id)
        elif p > 0.5:
            v.supporting.append(pair.id)
        else:
            v.opposing.append(pair.id)
    return v


def pair_scores(probs: Sequence[float | None]) -> list[float]:
    """Agreement of each pair with its label: 1 when p > 0.5, 0 when p < 0.5, 0.5 for a tie or an abstention."""
    return [0.5 if p is None or p == 0.5 else (1.0 if p > 0.5 else 0.0) for p in probs]


def combined(rows: Sequence[Sequence[float | None]]) -> list[float | None]:
    """The constitution's p per pair: the mean over its principles (abstentions left out)."""
    if not rows:
        return []
    out = []
    for col in zip(*rows):
        vals = [p for p in col if p is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def agreement(probs: Sequence[float | None]) -> float:
    s = pair_scores(probs)
    return sum(s) / len(s) if s else 0.5


def greedy_select(val_rows: dict[str, list[float | None]], order_key: dict[str, tuple], max_principles: int) -> tuple[list[str], list[dict]]:
    """Add, one at a time, the principle that most raises held-out agreement of the whole constitution (the mean of
    its principles' p); stop when no principle raises it or ``max_principles`` are chosen. Ties go to the principle
    first in ``order_key`` order. Returns the chosen ids and the steps (id, agreement after adding it)."""
    chosen: list[str] = []
    steps: list[dict] = []
    best = 0.5
    pool = sorted(val_rows, key=lambda c: order_key[c])
    while len(chosen) < max_principles:
        trial = [(agreement(combined([val_rows[c] for c in chosen + [cand]])), cand) for cand in pool if cand not in chosen]
        if not trial:
            break
        score = max(t[0] for t in trial)
        if score <= best + 1e-12:
            break
        cand = next(c for s, c in trial if s == score)
        chosen.append(cand)
        steps.append({"principle": cand, "agreement": score})
        best = score
    return chosen, steps
