"""Word-level diffs of a revision against the text it revised, as HTML with ``<del>`` and ``<ins>``."""

from __future__ import annotations

import difflib
import re

from cai.report.svg import esc

_TOK = re.compile(r"\w+|[^\w\s]|\s+")


def _diff_segments(a: list[str], b: list[str], absorb_words: int = 2) -> list[tuple[bool, str, str]]:
    """(changed, before_text, after_text) segments. A short run of unchanged tokens (at most ``absorb_words`` words)
    between two changes is folded into them, so a rewritten sentence reads as one deletion and one insertion instead
    of a word-by-word patchwork."""
    segs: list[list] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        changed = op != "equal"
        if segs and segs[-1][0] and changed:
            segs[-1][1] += a[i1:i2]
            segs[-1][2] += b[j1:j2]
        else:
            segs.append([changed, a[i1:i2], b[j1:j2]])
    merged = True
    while merged:
        merged = False
        for k in range(1, len(segs) - 1):
            eq = segs[k]
            if eq[0] or not (segs[k - 1][0] and segs[k + 1][0]):
                continue
            if sum(1 for t in eq[1] if not t.isspace() and any(ch.isalnum() for ch in t)) <= absorb_words:
                left, right = segs[k - 1], segs[k + 1]
                segs[k - 1 : k + 2] = [[True, left[1] + eq[1] + right[1], left[2] + eq[2] + right[2]]]
                merged = True
                break
    return [(c, "".join(x), "".join(y)) for c, x, y in segs]


def word_diff(before: str, after: str) -> str:
    """HTML of ``after`` with the words removed from ``before`` in ``<del>`` and the words added in ``<ins>``."""
    a, b = _TOK.findall(before or ""), _TOK.findall(after or "")
    out = []
    for changed, x, y in _diff_segments(a, b):
        if not changed:
            out.append(esc(x))
            continue
        if x:
            out.append(f'<del class="diff-del">{esc(x)}</del>')
        if y:
            out.append(f'<ins class="diff-ins">{esc(y)}</ins>')
    return "".join(out)


def diff_counts(before: str, after: str) -> tuple[int, int]:
    """Words deleted and inserted going from ``before`` to ``after``."""
    a, b = (before or "").split(), (after or "").split()
    dels = ins = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            dels += i2 - i1
            ins += j2 - j1
    return dels, ins

