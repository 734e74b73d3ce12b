"""What to watch while optimizing a policy against a reward model: reward hacking shows up here before anywhere else.

* :func:`refusal_rate` - share of answers that refuse (the shared lexicon classifier
  :func:`cai.evaluate.refusal.classify_refusal`; a small keyword detector only where that module is unavailable).
  A policy trained on a harmlessness reward model drifts toward refusing everything; this is the number that shows it.
* ``repeat_3gram_share`` (:func:`cai.textmetrics.answers_with_top_ngram`) - the share of the step's answers that
  contain the step's most widespread word 3-gram. When the policy finds one boilerplate phrase the reward model likes
  ("I'm sorry, but I can't ...") and pastes it into every answer, this climbs toward 1.0; for varied answers it stays
  near ``1 / number of answers``.
* ``distinct_3gram_ratio`` (:func:`cai.textmetrics.distinct_ngram_ratio`) - distinct 3-grams / all 3-grams over the
  step's answers (1.0 = nothing repeats; falls both when answers copy each other and when an answer loops on itself).
* ``answer_words``, ``answer_chars``, ``empty_rate`` (:func:`cai.textmetrics.length_stats`) - length is the other
  classic reward hack.

:class:`RewardModelReward` wraps a :class:`~cai.stages.reward.RewardScorer` as a TRL reward function
(``f(prompts, completions, **kw) -> list[float]``). Each call scores the completions, hands the metrics above to the
trainer's ``log_metric`` (so they are averaged per logging step next to TRL's own ``reward`` and ``kl`` and written
to ``metrics.jsonl`` by :class:`cai.train.common.MetricsLogger`), and appends every (prompt, completion, reward) to a
``samples.jsonl`` so the answers behind a number can be read.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from cai.textmetrics import answers_with_top_ngram, distinct_ngram_ratio, length_stats, most_widespread_ngram

METRIC_KEYS = ("refusal_rate", "repeat_3gram_share", "distinct_3gram_ratio", "answer_words", "answer_chars", "empty_rate")
"""Names under which :class:`RewardModelReward` logs its metrics (TRL adds ``reward``, ``kl``, ``completions/*``)."""


# --- prompts and completions as TRL hands them over ------------------------------------------------------------
def as_text(x: Any) -> str:
    """A completion or prompt as plain text: a string, or the last message's content of a TRL conversation."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        content = x[-1].get("content", "")
        if isinstance(content, list):  # multimodal content blocks
            return " ".join(c.get("text", "") for c in content if isinstance(c, dict))
        return str(content)
    return "" if x is None else str(x)


def as_messages(x: Any) -> list[dict[str, str]]:
    """A prompt as chat messages (a bare string becomes one user turn)."""
    if isinstance(x, str):
        return [{"role": "user", "content": x}]
    return [dict(m) for m in x]


def user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else as_text(prompt)


# --- metrics --------------------------------------------------------------------------------------------------------
_FALLBACK_REFUSAL = re.compile(
    r"\b(?:i|we)\s*(?:can(?:'|’)?t|cannot|won(?:'|’)?t|will not|am unable to|'m unable to|am not able to|'m not able to)"
    r"\s+(?:help|assist|provide|do|share|give|write)\b|\b(?:i|we) (?:must|have to) (?:decline|refuse)\b"
    r"|\bagainst my (?:guidelines|principles|policy)\b|\bas an ai\b[^.!?]{0,40}\b(?:can(?:'|’)?t|cannot|unable)\b",
    re.I,
)


def _fallback_classify(prompt: str, answer: str) -> tuple[bool, float, str]:
    hit = _FALLBACK_REFUSAL.search(answer or "")
    return (True, 1.0, "keyword refusal") if hit else (False, 0.0, "no refusal phrase")


def refusal_classifier() -> tuple[Callable[[str, str], tuple[bool, float, str]], str]:
    """``(classify(prompt, answer) -> (refused, score, reason), name)``: the shared classifier when available."""
    try:
        from cai.evaluate.refusal import CLASSIFIER_NAME, classify_refusal
    except ImportError:  # pragma: no cover - the module ships with the toolkit
        return _fallback_classify, "keyword-fallback"
    return classify_refusal, CLASSIFIER_NAME


def refusals(prompts: Sequence[str], texts: Sequence[str]) -> list[bool]:
    classify, _ = refusal_classifier()
    return [bool(classify(p, t)[0]) for p, t in zip(prompts, texts)]


def refusal_rate(prompts: Sequence[str], texts: Sequence[str]) -> float:
    """Share of answers that refuse (0.0 for no answers)."""
    if not texts:
        return 0.0
    flags = refusals(prompts, texts)
    return sum(flags) / len(flags)


def completion_metrics(prompts: Sequence[str], texts: Sequence[str], *, refused: Sequence[bool] | None = None) -> dict[str, float]:
    """Every metric of :data:`METRIC_KEYS` for one batch of (prompt, answer)."""
    if refused is None:
        refused = refusals(prompts, texts)
    return {
        "refusal_rate": (sum(refused) / len(refused)) if refused else 0.0,
        "repeat_3gram_share": answers_with_top_ngram(texts, 3),
        "distinct_3gram_ratio": distinct_ngram_ratio(texts, 3),
        **length_stats(texts),
    }


# --- the reward function TRL calls ----------------------------------------------------------------------------------
class RewardModelReward:
    """A TRL reward function over a reward model (or the labeler, for direct RLAIF) that also measures and logs the
    completions it scores.

    ``scorer`` is anything with ``score(prompts, answers) -> list[float]`` (a :class:`~cai.stages.reward.RewardScorer`
    or a :class:`~cai.labeling.rating.ConstitutionRater`; prompts are message lists, answers strings). A scorer's
    ``last_stats`` (labeler calls, requests, seconds, abstentions of the latest call) are logged next to the answer
    metrics, and its ``last_details`` (one dict per answer: principles, ratings, abstained) go into the samples. ``samples_path`` (optional) receives one JSON line per completion.
    """

    __name__ = "reward_model"

    def __init__(self, scorer: Any, *, samples_path: str | Path | None = None, batch_size: int | None = None):
        self.scorer = scorer
        self.samples_path = Path(samples_path) if samples_path else None
        self.batch_size = batch_size
        self.last: dict[str, Any] = {}
        self.calls = 0

    def __call__(self, prompts: list, completions: list, log_metric: Callable[[str, float], None] | None = None,
                 trainer_state: Any = None, **kwargs: Any) -> list[float]:
        msgs = [as_messages(p) for p in prompts]
        texts = [as_text(c).strip() for c in completions]
        kw = {"batch_size": self.batch_size} if self.batch_size else {}
        # the optimizer step these completions feed (the trainer has finished ``global_step`` steps so far)
        step = int(getattr(trainer_state, "global_step", self.calls) or 0) + 1
        if hasattr(self.scorer, "step"):  # a labeler's draws are keyed by the step, so a resumed run draws the same
            self.scorer.step = step
        rewards = [float(r) for r in self.scorer.score(msgs, texts, **kw)]
        users = [user_text(p) for p in prompts]
        refused = refusals(users, texts)
        metrics = completion_metrics(users, texts, refused=refused)
        gram, _ = most_widespread_ngram(texts, 3)
        self.calls += 1
        self.last = {"step": step, "reward_mean": sum(rewards) / len(rewards) if rewards else math.nan,
                     "top_3gram": " ".join(gram) if gram else None, **metrics}
        # a scorer that asks a labeler (cai.labeling.rating.ConstitutionRater) also reports its calls and time
        scorer_stats = dict(getattr(self.scorer, "last_stats", None) or {})
        details = list(getattr(self.scorer, "last_details", None) or [{}] * len(texts))
        self.last.update(scorer_stats)
        if log_metric is not None:
            for k, v in {**metrics, **scorer_stats}.items():
                log_metric(k, float(v))
        if self.samples_path is not None:
            from cai.train.common import append_line

            body = "".join(
                json.dumps({"step": step, "prompt": u, "completion": t, "reward": round(r, 6), "refused": f, **d},
                           ensure_ascii=False) + "\n"
                for u, t, r, f, d in zip(users, texts, rewards, refused, details)
            )
            append_line(self.samples_path, body.rstrip("\n"))
        return rewards
