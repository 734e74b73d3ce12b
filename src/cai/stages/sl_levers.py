"""What makes SL-CAI work on a weak critic: relevant principles, critic refusals, and the revision gate.

- **Relevant principles.** A red-team prompt tagged with a harm category is critiqued, with probability
  ``relevant_share``, against a principle tagged with that category; otherwise against any principle.
- **Critic refusals.** A critic that answers "I can't assist with that" has not written a critique. It is recorded as
  ``critic_refused`` and the revision is asked for directly, without the non-critique in context.
- **Revision gate.** A revision of a harmful request is accepted only when the refusal judge says it no longer
  complies (it declines at least the harmful part). A helpful prompt whose answer the judge reads as a refusal is left
  out of the helpful SFT mix, so the mix does not teach over-refusal. The judge is the lexicon classifier whose
  precision and recall on the shipped labeled set ``cai eval`` reports.
"""

from __future__ import annotations

import random
import re

from cai.constitution.schema import Constitution, Principle
from cai.evaluate.refusal import CLASSIFIER_NAME, classify_refusal

GATE_JUDGE = CLASSIFIER_NAME


def pick_principle(const: Constitution, rng: random.Random, category: str | None, relevant_share: float) -> tuple[Principle, bool]:
    """Sample a principle for one round; the flag says whether it was drawn from the prompt's own harm category."""
    relevant = [p for p in const.principles if category and category in p.tags]
    draw = rng.random()  # always drawn, so the sequence does not depend on whether the category matched
    if relevant and draw < relevant_share:
        return rng.choices(relevant, weights=[p.weight for p in relevant], k=1)[0], True
    p = const.sample(rng)[0]
    return p, bool(category and category in p.tags)


def declines(prompt: str, text: str) -> bool:
    """The gate's judge: does this answer refuse (at least the harmful part of) the request?"""
    return classify_refusal(prompt, text)[0]


def critic_refused(prompt: str, critique: str) -> bool:
    """A critique that is itself a refusal ("I can't help with that") is no critique."""
    return classify_refusal(prompt, critique)[0]


_SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)(?=\s|$)")


def trim_to_sentence(text: str, min_chars: int = 20) -> str | None:
    """A revision cut off at the token limit, trimmed back to its last complete sentence; None when no complete
    sentence of at least ``min_chars`` characters is left (then it stays rejected as truncated)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    out = text[: ends[-1]].strip()
    return out if len(out) >= min_chars else None
