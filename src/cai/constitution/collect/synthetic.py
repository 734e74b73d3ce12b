"""A synthetic vote matrix with planted opinion groups, consensus statements and divisive statements.

Participants belong to two planted groups (60% and 40%). Each sees a statement with probability 0.8. A consensus
statement is agreed with by 80% of both groups; a divisive one by 80% of one group and 10% of the other; a filler
statement by 25% of everyone. ``cai constitution collect --input synthetic`` writes it as statements.csv + votes.csv.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONSENSUS = [
    "The AI should say so honestly when it does not know something.",
    "The AI should not help anyone hurt other people.",
    "The AI should explain its reasoning in plain language.",
    "The AI should respect people's privacy.",
    "The AI should treat people of every background with equal respect.",
]
DIVISIVE = [
    ("The AI should refuse to discuss politics.", 0),
    ("The AI should put society's interests above the individual user's.", 0),
    ("The AI should never share an opinion of its own.", 0),
    ("The AI should be free to write violent fiction when asked.", 1),
    ("The AI should favour the user's freedom over caution.", 1),
    ("The AI should answer any question a lawful adult asks.", 1),
]
FILLER = [
    "The AI should use lots of emojis.",
    "The AI should always answer in rhyme.",
    "The AI should imitate a famous person's voice.",
    "The AI should keep every answer under ten words.",
]


@dataclass
class SyntheticVotes:
    statements: list[tuple[str, str]]  # (id, text)
    participants: list[str]
    votes: np.ndarray  # NaN: not seen
    groups: np.ndarray  # planted group of each participant
    consensus_ids: list[str]
    divisive_ids: list[str]


def make_votes(participants: int = 120, seed: int = 0) -> SyntheticVotes:
    rng = np.random.default_rng(seed)
    n0 = int(round(participants * 0.6))
    groups = np.array([0] * n0 + [1] * (participants - n0))
    rng.shuffle(groups)
    texts = [(t, "c", None) for t in CONSENSUS] + [(t, "d", g) for t, g in DIVISIVE] + [(t, "f", None) for t in FILLER]
    order = rng.permutation(len(texts))
    statements, probs = [], []
    for new_id, i in enumerate(order):
        text, kind, side = texts[i]
        statements.append((str(new_id), text))
        probs.append((kind, side))
    votes = np.full((participants, len(statements)), np.nan)
    for p in range(participants):
        for j, (kind, side) in enumerate(probs):
            if rng.random() > 0.8:
                continue
            if kind == "c":
                agree = 0.8
            elif kind == "d":
                agree = 0.8 if groups[p] == side else 0.1
            else:
                agree = 0.25
            r = rng.random()
            votes[p, j] = 1.0 if r < agree else (0.0 if r < agree + 0.1 else -1.0)
    cons = [statements[j][0] for j, (k, _) in enumerate(probs) if k == "c"]
    div = [statements[j][0] for j, (k, _) in enumerate(probs) if k == "d"]
    return SyntheticVotes(statements, [f"u{p + 1:05d}" for p in range(participants)], votes, groups, cons, div)


def write_plain(folder: str | Path, sv: SyntheticVotes) -> None:
    """statements.csv (id, text) and votes.csv (participant, statement, vote) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "statements.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows(sv.statements)
    with (folder / "votes.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["participant", "statement", "vote"])
        for i, p in enumerate(sv.participants):
            for j, (sid, _) in enumerate(sv.statements):
                if not np.isnan(sv.votes[i, j]):
                    w.writerow([p, sid, int(sv.votes[i, j])])
