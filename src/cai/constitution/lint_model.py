"""The model checks of ``cai constitution lint``: are two principles the same, do they pull against each other?

Each question is a yes/no multiple-choice question scored by :func:`cai.labeling.mc.score_choices`. It is asked
twice, with the principles in both orders and the letters swapped ((A) Yes in the first, (A) No in the second), so a
model that always answers (A) ends at P(yes) = 0.5, not at a finding.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from cai.backends.base import Backend, Conversation
from cai.constitution.schema import Principle
from cai.labeling.mc import score_choices

SYSTEM = ("You review the written principles that guide an AI assistant. Read the two principles and answer the "
          "question with the letter of the right option.")
PREFILL = "The answer is ("
QUESTIONS = {
    "same": "Do these two principles ask for the same thing, so that one of them could be dropped without losing "
            "anything?",
    "conflict": "Would following one of these principles make the assistant break the other one, so that they pull "
                "in opposite directions?",
}


def _describe(p: Principle) -> str:
    return f"{p.name}. Critique: {p.critique_request} Preference: {p.preference_question}"


def _question(first: Principle, second: Principle, question: str, yes_first: bool) -> str:
    a, b = ("Yes", "No") if yes_first else ("No", "Yes")
    return (f"Principle 1: {_describe(first)}\n\nPrinciple 2: {_describe(second)}\n\n{question}\n\n"
            f"(A) {a}\n(B) {b}\n\nAnswer with (A) or (B).")


def pair_conversations(p: Principle, q: Principle, kind: str) -> list[Conversation]:
    """The two presentations of one question about one pair (prefill included)."""
    out = []
    for first, second, yes_first in ((p, q, True), (q, p, False)):
        out.append([{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": _question(first, second, QUESTIONS[kind], yes_first)},
                    {"role": "assistant", "content": PREFILL}])
    return out


def check_pairs(backend: Backend, pairs: Sequence[tuple[Principle, Principle]], ids: Sequence[tuple[int, int]],
                *, parse_tokens: int = 8) -> Iterator[tuple[tuple[int, int], float, float]]:
    """For each pair: (its index pair, mean P(same), mean P(conflict)); an abstained presentation counts as 0.5."""
    convs: list[Conversation] = []
    for p, q in pairs:
        for kind in ("same", "conflict"):
            convs += pair_conversations(p, q, kind)
    batch = score_choices(backend, convs, lambda k: convs[k][:-1], parse_tokens=parse_tokens, retries=1)
    probs = [0.5 if c.p_a is None else c.p_a for c in batch.choices]
    for n, idx in enumerate(ids):
        base = 4 * n
        p_same = (probs[base] + (1 - probs[base + 1])) / 2
        p_conflict = (probs[base + 2] + (1 - probs[base + 3])) / 2
        yield idx, p_same, p_conflict
