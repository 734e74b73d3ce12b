"""The one multiple-choice scorer: read P(A) from the letters' log-probabilities, else parse a written letter.

The AI labeler (``cai label``), the LLM refusal judge and the pairwise judge all ask a model a two-option question.
:func:`score_choices` answers a batch of such questions the same way for all of them:

1. one ``option_logprobs`` call scores the letters right after each *scoring* conversation (whose assistant turn is
   prefilled up to the letter) and normalises them to P(A) (:func:`cai.labeling.softlabel.normalize`);
2. where the backend gives no log-probabilities (``None``), the model writes a short answer to the *answering*
   conversation (no prefill: chat servers answer the question itself) and the letter is parsed
   (:func:`cai.labeling.parse.parse_choice`) into a hard P(A) of 1 or 0;
3. an answer that does not parse is retried ``retries`` times, sampled at ``retry_temperature`` (the first attempt is
   greedy); one that never parses is an abstention (``p_a`` is ``None``), never a default.

Both orders of a comparison are simply two questions in the batch; combining them is the caller's arithmetic
(:mod:`cai.labeling.softlabel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from cai.backends.base import Backend, Conversation, GenParams
from cai.labeling.parse import parse_choice
from cai.labeling.prompts import OPTIONS
from cai.labeling.softlabel import letter_probability, normalize


@dataclass
class Choice:
    """The model's answer to one two-option question."""

    p_a: float | None  # P(option A); None: abstained (no log-probabilities and no parseable answer)
    method: str | None  # "logprob", "parsed", or None when it abstained
    answers: list[str] = field(default_factory=list)  # written answers, one per attempt, when parsing was needed


@dataclass
class ChoiceBatch:
    choices: list[Choice]
    completion_tokens: int = 0  # tokens the written answers took

    @property
    def methods(self) -> dict[str, int]:
        """How many questions were answered by log-probability, by parsing, or abstained."""
        out = {"logprob": 0, "parsed": 0, "abstained": 0}
        for c in self.choices:
            out[c.method or "abstained"] += 1
        return out


def score_choices(
    backend: Backend,
    scoring: Sequence[Conversation],
    answering: Callable[[int], Conversation],
    *,
    parse_tokens: int,
    retries: int = 0,
    retry_temperature: float = 0.7,
    seed: Callable[[int], int | None] | None = None,
) -> ChoiceBatch:
    """P(A) for every question: ``scoring[i]`` is scored; ``answering(i)`` is the conversation to write an answer to.

    ``seed(attempt)`` gives the generation seed of each parsing attempt (``None``: the backend's default).
    """
    scores = backend.option_logprobs(list(scoring), [list(OPTIONS) for _ in scoring])
    choices = [Choice(p, "logprob" if p is not None else None) for p in (normalize(s[0], s[1]) for s in scores)]
    tokens = 0
    todo = [i for i, c in enumerate(choices) if c.p_a is None]
    for attempt in range(retries + 1):
        if not todo:
            break
        params = GenParams(max_new_tokens=parse_tokens, temperature=0.0 if attempt == 0 else retry_temperature,
                           seed=seed(attempt) if seed else None)
        gens = backend.generate([answering(i) for i in todo], params)
        tokens += sum(g.completion_tokens for g in gens)
        left = []
        for i, g in zip(todo, gens):
            choices[i].answers.append(g.text)
            letter = parse_choice(g.text)
            if letter is None:
                left.append(i)
            else:
                choices[i].p_a = letter_probability(letter)
                choices[i].method = "parsed"
        todo = left
    return ChoiceBatch(choices, tokens)
