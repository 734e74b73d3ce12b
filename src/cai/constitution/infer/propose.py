"""Propose candidate principles from preference pairs, then cluster and deduplicate them.

The proposer sees one pair (request, the two answers, which one people preferred) and completes the sentence "The
better response is the one that ...". Which answer is shown first is a seeded coin per pair, so a proposer with a
position habit does not always see the preferred answer in the same place. The candidates are then grouped by
meaning (sentence embeddings, cosine similarity): the most frequent wording of each group represents it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from cai.backends.base import Conversation, GenParams, request_seed
from cai.constitution.infer.cache import CachedModel
from cai.constitution.infer.data import Pair
from cai.constitution.infer.templates import clean_clause
from cai.labeling.prompts import fence

SYSTEM = "You explain why people prefer one answer of an AI assistant over another, as one short general rule."
PREFILL = "The better response is the one that"


def propose_conversation(pair: Pair, chosen_first: bool) -> Conversation:
    a, b = (pair.chosen, pair.rejected) if chosen_first else (pair.rejected, pair.chosen)
    k = 1 if chosen_first else 2
    user = (
        "A user sent this request to an AI assistant:\n\n"
        f"{pair.prompt or '(no request given)'}\n\n"
        f"Answer 1:\n{fence(a)}\n\nAnswer 2:\n{fence(b)}\n\n"
        f"People preferred Answer {k}. In a few words, state the general rule behind this preference, as the end of "
        "the sentence: \"The better response is the one that ...\". The rule must apply to other requests too."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
            {"role": "assistant", "content": PREFILL}]


@dataclass
class Proposal:
    clause: str
    pair_id: str


def propose(model: CachedModel, pairs: Sequence[Pair], *, per_pair: int, temperature: float, max_new_tokens: int,
            seed: int) -> tuple[list[Proposal], int]:
    """Candidate clauses (and how many answers were unusable)."""
    convs, seeds, owners = [], [], []
    for pi, p in enumerate(pairs):
        chosen_first = random.Random(f"{seed}:{p.id}:order").random() < 0.5
        for s in range(per_pair):
            convs.append(propose_conversation(p, chosen_first))
            seeds.append(request_seed(seed, pi * 1000 + s))
            owners.append(p.id)
    temp = temperature if per_pair > 1 else 0.0
    texts = model.generate(convs, GenParams(max_new_tokens=max_new_tokens, temperature=temp, stop=["\n\n"]), seeds)
    out, bad = [], 0
    for text, pid in zip(texts, owners):
        clause = clean_clause(text or "")
        if clause:
            out.append(Proposal(clause, pid))
        else:
            bad += 1
    return out, bad


@dataclass
class Cluster:
    clause: str  # the representative wording
    members: dict[str, int] = field(default_factory=dict)  # wording -> how often it was proposed
    pair_ids: list[str] = field(default_factory=list)  # pairs whose proposals fell in this cluster

    @property
    def size(self) -> int:
        return sum(self.members.values())


def cluster(proposals: Sequence[Proposal], embed_fn: Callable[[list[str]], np.ndarray], *, threshold: float,
            max_clusters: int) -> list[Cluster]:
    """Group wordings whose embeddings have cosine similarity >= ``threshold`` with a group's first (most frequent)
    wording; the ``max_clusters`` largest groups, largest first."""
    counts: dict[str, int] = {}
    sources: dict[str, list[str]] = {}
    canon: dict[str, str] = {}
    for p in proposals:
        key = p.clause.lower()
        canon.setdefault(key, p.clause)
        counts[key] = counts.get(key, 0) + 1
        sources.setdefault(key, []).append(p.pair_id)
    keys = sorted(counts, key=lambda k: (-counts[k], k))
    if not keys:
        return []
    vecs = np.asarray(embed_fn([canon[k] for k in keys]), dtype=np.float32)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
    heads: list[int] = []
    clusters: list[Cluster] = []
    for i, k in enumerate(keys):
        sims = [float(vecs[i] @ vecs[h]) for h in heads]
        j = int(np.argmax(sims)) if sims else -1
        if j >= 0 and sims[j] >= threshold:
            c = clusters[j]
        else:
            heads.append(i)
            c = Cluster(canon[k])
            clusters.append(c)
        c.members[canon[k]] = counts[k]
        c.pair_ids.extend(x for x in sources[k] if x not in c.pair_ids)
    clusters.sort(key=lambda c: (-c.size, c.clause))
    return clusters[:max_clusters]
