"""Read an option letter out of a labeler's free-text answer, for backends that give no log-probabilities.

The parser only answers when the text commits to one option. It looks, in this order, for

1. decisive statements: "The answer is (B)", "Answer: A", "Response B is better", "I choose A", "the better reply
   is (A)", "**B**" on its own;
2. an answer that *starts* with the letter: "(A)", "A)", "A.", "B - because ...", or a prefilled "The answer is ("
   continued with "A) ...";
3. exactly one parenthesised letter anywhere: "... so (B)."

If a tier finds both letters (for example "Response A is better ... Response B is better") the answer is
ambiguous and the parser returns ``None``; hedges such as "A or B", "either", "both", "neither" or "equally" with
no decisive statement also give ``None``. ``None`` means abstention: callers retry or record no label, they never
pick a default.
"""

from __future__ import annotations

import re

LETTERS = ("A", "B")

# A letter standing alone: not part of a word ("Both", "Answer"), optionally in (), [], ** or quotes.
_L = r"(?<![A-Za-z0-9])[\(\[\*\"']*(?P<l>[AB])[\)\]\*\"']*(?![A-Za-z0-9])"
_NOUN = r"(?:answer|response|reply|option|choice|completion|output)"
_BETTER = (
    r"(?:better|best|preferred|preferable|superior|safer|more\s+(?:helpful|appropriate|ethical|harmless|honest|"
    r"suitable|accurate|useful|responsible)|the\s+(?:better|best|right|correct)\s+(?:one|choice|answer|response|reply))"
)

_DECISIVE = [
    # "The answer is (B)", "Answer: A", "my final answer would be A", "the better reply is (A)"
    re.compile(r"\b(?:final\s+)?" + _NOUN + r"\s*(?:is|would\s+be|=|:|-)\s*(?:option\s+|response\s+|reply\s+)?" + _L, re.I),
    re.compile(r"\b(?:better|best|preferred|correct|right)\s+(?:one|" + _NOUN + r")\s*(?:is|would\s+be|:)\s*" + _L, re.I),
    # "Response B is better", "Option (A) is safer", "B is the better one"
    re.compile(r"(?:\b" + _NOUN + r"\s+)?" + _L + r"\s+is\s+(?:clearly\s+|much\s+|far\s+|slightly\s+)?" + _BETTER, re.I),
    # "I choose A", "I'd pick (B)", "I prefer response A", "go with B", "select option A"
    re.compile(r"\b(?:choose|chose|pick|picked|prefer|select|selected|go\s+with|vote\s+for)\s+(?:" + _NOUN + r"\s+)?" + _L, re.I),
]

_LEADING = re.compile(r"^\s*(?:" + _L + r")(?:\s*$|\s*[\.\):,;!\-\u2013\u2014]|\s+(?!or\b|and\b|nor\b|vs\b|/))", re.I)
_PAREN = re.compile(r"\((?P<l>[AB])\)")
_HEDGE = re.compile(
    r"(?<![A-Za-z])\(?[AB]\)?\s*(?:or|and|nor|/|vs\.?|versus)\s*\(?[AB]\)?(?![A-Za-z])|"
    r"\b(?:either|neither|both|equally|tie|same|cannot\s+(?:decide|choose|tell)|can't\s+(?:decide|choose|tell)|"
    r"no\s+(?:preference|difference))\b",
    re.I,
)


def _letters(pattern: re.Pattern, text: str) -> set[str]:
    return {m.group("l").upper() for m in pattern.finditer(text)}


def _only_uppercase_hits(pattern: re.Pattern, text: str) -> set[str]:
    """Like :func:`_letters` but a bare lowercase "a" (the article) does not count as option A."""
    out = set()
    for m in pattern.finditer(text):
        raw = m.group("l")
        if raw.islower():
            span = text[max(m.start("l") - 1, 0) : m.end("l") + 1]
            if "(" not in span and ")" not in span:
                continue
        out.add(raw.upper())
    return out


def parse_choice(text: str | None) -> str | None:
    """The option letter ("A" or "B") the text commits to, or ``None`` when it is missing or ambiguous."""
    if not text or not text.strip():
        return None
    t = " ".join(text.split())
    found: set[str] = set()
    for pat in _DECISIVE:
        found |= _only_uppercase_hits(pat, t)
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        return None
    if _HEDGE.search(t):
        return None
    lead = _only_uppercase_hits(_LEADING, t)
    if len(lead) == 1:
        return lead.pop()
    paren = _letters(_PAREN, t)
    if len(paren) == 1:
        return paren.pop()
    return None
