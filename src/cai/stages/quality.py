"""Checks on generated revisions: empty, truncated, or a copy of the critique is flagged, never silently kept."""

from __future__ import annotations

import difflib
import re

from cai.textmetrics import loop_share

_WS = re.compile(r"\s+")


def _norm(t: str) -> str:
    return _WS.sub(" ", t.strip().lower())


def similarity(a: str, b: str) -> float:
    """Character-level similarity in [0, 1] of two texts after normalising whitespace and case."""
    a, b = _norm(a), _norm(b)
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def revision_flags(
    revision: str, finish_reason: str, critique: str, previous: str, *, copy_threshold: float = 0.8, repeat_threshold: float = 0.12
) -> list[str]:
    """Problems with a revision. An empty list means it is accepted.

    - ``empty``: nothing (or only whitespace/punctuation) came back;
    - ``truncated``: generation stopped at the token limit;
    - ``repeats_critique``: the revision is mostly the critique text again;
    - ``unchanged``: identical to the answer it should revise;
    - ``repetitive``: one word 3-gram takes a large share of the text (a degenerate loop).
    """
    flags = []
    if len(_norm(re.sub(r"[^\w]", " ", revision))) == 0:
        return ["empty"]
    if finish_reason == "length":
        flags.append("truncated")
    if critique.strip() and similarity(revision, critique) >= copy_threshold:
        flags.append("repeats_critique")
    if _norm(revision) == _norm(previous):
        flags.append("unchanged")
    if loop_share(revision, 3) >= repeat_threshold:
        flags.append("repetitive")
    return flags
