"""The guard's optional first stage: a cheap score for "this exchange is a violation", in [0, 1].

Scores below the policy's ``low`` pass without the model check, scores at or above ``high`` count as violated without
it, and only the band between is escalated to the checker model. Three kinds:

* ``lexicon``: the refusal lexicon (:func:`cai.evaluate.refusal.classify_refusal`). A short answer that opens with a
  clear refusal cannot be a harmful answer, so its score is ``1 - refusal score``; any other answer (a refusal
  wrapped around content included), and a conversation checked without an answer, gets 0.5 (escalated).
* ``embedding``: the user turns are embedded (packaged all-MiniLM-L6-v2, :mod:`cai.embed`) and compared with the
  *training* split of the shipped prompt sets (red-team prompts count as harmful, helpful ones, benign-but-risky
  included, as benign); the smoothed share of harmful prompts among the nearest ``neighbours`` is P(harmful request).
  With an answer, it is multiplied by ``1 - refusal score`` of the answer. The eval splits are never used, so
  measuring on them is fair.
* ``reward_model``: a reward model trained by ``cai reward``; ``sigmoid((center - reward) / scale)``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Protocol

from cai.backends.base import Conversation
from cai.guard.config import PrefilterConfig


class Prefilter(Protocol):
    name: str

    def scores(self, items: list[tuple[Conversation, str | None]]) -> list[float]: ...


def user_text(messages: Conversation) -> str:
    """Every user turn of the conversation, in order (what the request is, across turns)."""
    return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")


#: Words an answer may carry besides its opening refusal for the refusal to be trusted as "safe".
REFUSAL_CONTENT_WORDS = 15


def _refusal(messages: Conversation, answer: str) -> float:
    """The refusal lexicon's score of the answer when it is a trustworthy refusal, else 0.

    Trusted means: it opens with a refusal and says little else. A refusal appended to (or put in front of) a
    substantive answer is not trusted: that is exactly what an answer smuggling harmful content would write."""
    from cai.evaluate.refusal import classify_refusal, split_sentences

    refused, score, reason = classify_refusal(user_text(messages), answer)
    if not refused or "opening sentence" not in reason:
        return 0.0
    rest = split_sentences(answer)[1:]
    if sum(len(s.split()) for s in rest) > REFUSAL_CONTENT_WORDS:
        return 0.0
    return score


class LexiconPrefilter:
    name = "lexicon"

    def scores(self, items: list[tuple[Conversation, str | None]]) -> list[float]:
        out = []
        for messages, answer in items:
            r = _refusal(messages, answer) if answer is not None else 0.0
            out.append(1.0 - r if r > 0 else 0.5)
        return out


@lru_cache(maxsize=1)
def _reference() -> tuple[object, list[int]]:
    """Unit vectors and labels (1 harmful, 0 benign) of the training split of the shipped prompt sets."""
    import numpy as np

    from cai.data.readers import load_prompts
    from cai.embed import embed

    harmful = [r["prompt"] for r in load_prompts("redteam", split="train")]
    benign = [r["prompt"] for r in load_prompts("helpful", split="train")]
    vecs = np.asarray(embed(harmful + benign), dtype=np.float32)
    return vecs, [1] * len(harmful) + [0] * len(benign)


class EmbeddingPrefilter:
    name = "embedding"

    def __init__(self, neighbours: int = 7):
        self.k = neighbours

    def request_scores(self, texts: list[str]) -> list[float]:
        """P(harmful request) of each text: smoothed share of harmful prompts among its nearest neighbours."""
        import numpy as np

        from cai.embed import embed

        ref, labels = _reference()
        lab = np.asarray(labels, dtype=np.float32)
        q = np.asarray(embed(texts), dtype=np.float32)
        sims = q @ np.asarray(ref).T
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return [float((lab[row].sum() + 0.5) / (k + 1)) for row in top]

    def scores(self, items: list[tuple[Conversation, str | None]]) -> list[float]:
        p = self.request_scores([user_text(m) or " " for m, _ in items])
        out = []
        for (messages, answer), ph in zip(items, p):
            r = _refusal(messages, answer) if answer is not None else 0.0
            out.append(ph * (1.0 - r))
        return out


class RewardModelPrefilter:
    name = "reward_model"

    def __init__(self, cfg: PrefilterConfig):
        from cai.stages.reward import RewardScorer

        assert cfg.reward_model is not None  # checked by PrefilterConfig
        self.scorer = RewardScorer(cfg.reward_model)
        self.center, self.scale = cfg.reward_center, cfg.reward_scale

    def scores(self, items: list[tuple[Conversation, str | None]]) -> list[float]:
        out: list[float | None] = [None] * len(items)
        idx = [i for i, (_, a) in enumerate(items) if a is not None]
        if idx:
            rewards = self.scorer.score([items[i][0] for i in idx], [items[i][1] for i in idx])  # type: ignore[misc]
            for i, r in zip(idx, rewards):
                out[i] = 1.0 / (1.0 + math.exp(-(self.center - r) / self.scale))
        return [0.5 if s is None else s for s in out]  # no answer: a reward model has nothing to score


def make_prefilter(cfg: PrefilterConfig) -> Prefilter:
    if cfg.kind == "lexicon":
        return LexiconPrefilter()
    if cfg.kind == "embedding":
        return EmbeddingPrefilter(cfg.neighbours)
    return RewardModelPrefilter(cfg)
