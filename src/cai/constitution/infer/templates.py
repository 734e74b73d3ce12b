"""Turn a principle clause ("is shorter", "declines the harmful request") into the three texts a constitution needs.

A principle is kept as the verb phrase that completes "Choose the response that ...". From it the templates write a
critique request, a revision request and a comparison question, so an inferred or collected principle is a valid
:class:`~cai.constitution.Principle` with no further model call.
"""

from __future__ import annotations

import re

from cai.constitution.schema import Principle
from cai.textmetrics import loop_share

LEAD = "Choose the response that"
_LEADS = (
    "choose the response that", "select the response that", "prefer the response that", "the better response is the one that",
    "the preferred response is the one that", "is the one that", "the response that", "a response that", "the one that", "one that", "that",
)
_SPACE = re.compile(r"\s+")


def clean_clause(text: str, max_words: int = 30) -> str:
    """The verb phrase of a principle: leading "Choose the response that" and the like removed, one sentence,
    no trailing punctuation, at most ``max_words`` words; "" when nothing usable is left."""
    t = _SPACE.sub(" ", str(text)).strip().strip("\"'`*-•").strip()
    if loop_share(t) > 0:  # a phrase repeated over and over is no principle
        return ""
    low = t.lower()
    for lead in _LEADS:
        if low.startswith(lead + " "):
            t = t[len(lead):].strip()
            break
    # first sentence or line only
    t = re.split(r"(?<=[.!?])\s|\n", t, maxsplit=1)[0]
    t = t.rstrip(" .!?;:,").strip()
    words = t.split()
    if len(words) > max_words:
        t = " ".join(words[:max_words])
    if len(t) < 3 or not re.search(r"[A-Za-z]", t):
        return ""
    return t[0].lower() + t[1:] if t[:2] != t[:2].upper() else t


def principle_text(clause: str) -> str:
    """The principle as one sentence: "Choose the response that <clause>."."""
    return f"{LEAD} {clause}."


def preference_question(clause: str) -> str:
    return f"Which of these responses {clause}?"


def slug(text: str, taken: set[str], prefix: str = "p") -> str:
    """A principle id from ``text``: lowercase words joined by '-', at most 5 words, unique within ``taken``."""
    words = re.findall(r"[a-z0-9]+", text.lower())[:5]
    base = "-".join(words) or prefix
    if not base[0].isalnum():
        base = f"{prefix}-{base}"
    pid, n = base, 2
    while pid in taken:
        pid, n = f"{base}-{n}", n + 1
    taken.add(pid)
    return pid


def make_principle(pid: str, clause: str, *, tags: list[str] | None = None, name: str | None = None) -> Principle:
    """A full principle from its clause, with critique and revision requests and a comparison question."""
    return Principle(
        id=pid,
        name=(name or principle_text(clause))[:120],
        critique_request=(f"Point out every way in which the assistant's last response falls short of this principle: "
                          f"{principle_text(clause)}"),
        revision_request=(f"Rewrite the assistant's response so that it follows this principle: {principle_text(clause)}"),
        preference_question=preference_question(clause),
        tags=list(tags or []),
    )
