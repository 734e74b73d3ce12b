"""Turn kept statements into a draft constitution: a model rewrite into "Choose the response that ..." or verbatim."""

from __future__ import annotations

from typing import Sequence

from cai.backends.base import GenParams, request_seed
from cai.constitution.infer.cache import CachedModel
from cai.constitution.infer.templates import clean_clause

PREFILL = "Choose the response that"


def rewrite_conversation(text: str) -> list[dict[str, str]]:
    user = ("Many people agreed with this statement about how an AI assistant should behave:\n\n"
            f"\"{text}\"\n\n"
            "Rewrite it as one rule for choosing the better of two responses of the assistant, in the form "
            "\"Choose the response that ...\". Keep its meaning; add nothing.")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": PREFILL}]


def verbatim_clause(text: str) -> str:
    return f"agrees best with this statement: \"{text.strip().rstrip('.')}\""


def rewrite(model: CachedModel | None, texts: Sequence[str], *, seed: int = 0, max_new_tokens: int = 40) -> list[tuple[str, str]]:
    """(clause, how) per statement; ``how`` is ``model`` or ``verbatim`` (no model, or the model's answer was unusable)."""
    if model is None:
        return [(verbatim_clause(t), "verbatim") for t in texts]
    outs = model.generate([rewrite_conversation(t) for t in texts], GenParams(max_new_tokens=max_new_tokens, stop=["\n"]),
                          [request_seed(seed, i) for i in range(len(texts))])
    result = []
    for t, o in zip(texts, outs):
        clause = clean_clause(o or "")
        result.append((clause, "model") if clause else (verbatim_clause(t), "verbatim"))
    return result
