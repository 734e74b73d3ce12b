"""The one backend protocol every model role speaks.

A backend takes a batch of chat conversations and returns completions in the same order (with token counts), and
scores given continuations with log-probabilities. Batching, prefix caching and concurrency live here, not in the
stages: a stage hands over everything it has at once.

Every backend treats a :class:`GenParams` the same way:

* **Seeds are per request.** Request ``i`` of a call is sampled with :meth:`GenParams.seed_for` ``(i)``, a seed
  derived from the call's ``seed`` and ``i`` (or taken from ``seeds[i]``). The K samples of one prompt repeated K
  times in a call therefore differ, a rerun with the same seed gives the same samples, and a request's sample does
  not depend on which other requests share its batch.
* **Every field reaches the model or is reported.** A field a backend cannot apply (a server that rejects
  ``repetition_penalty``, one that cannot continue a prefilled assistant turn) is listed in
  ``stats.not_applied`` (field -> reason) and in :meth:`Backend.describe`, which stages copy into manifests.
* **An empty completion is a failed row, not an answer.** A completion whose text is empty (``null``, missing,
  blank) or that a server filtered is retried where that can help, then returned with ``finish_reason="error"`` and
  the reason in :attr:`Completion.error`; ``stats`` counts retries and failed requests. Stages skip rows whose
  completion has :attr:`Completion.failed` set.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Literal

Message = dict[str, str]
Conversation = list[Message]

#: Seeds stay below 2**31 so that every server accepts them (vLLM, llama.cpp and OpenAI take 32-bit seeds).
SEED_RANGE = 2**31 - 1


def request_seed(seed: int, index: int, attempt: int = 0) -> int:
    """The seed of request ``index`` of a call seeded with ``seed`` (``attempt`` > 0: its retries).

    A stable hash, the same in every process and on every platform, so runs are reproducible.
    """
    digest = hashlib.sha256(f"cai-request-seed:{seed}:{index}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_RANGE


@dataclass
class GenParams:
    """Sampling parameters shared by every backend (OpenAI-style names)."""

    #: Most tokens to generate per request (a server's ``max_tokens``).
    max_new_tokens: int = 256
    #: 0 means greedy decoding.
    temperature: float = 0.0
    #: Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``.
    top_p: float = 1.0
    #: Seed of the call; request ``i`` is sampled with :meth:`seed_for` ``(i)``. ``None``: local backends use 0,
    #: servers get no seed (their own randomness).
    seed: int | None = None
    #: Optional explicit seed per request (one per conversation of the call); overrides the derivation from ``seed``.
    seeds: list[int] | None = None
    #: Generation ends before the first of these strings; the string itself is not part of the text.
    stop: list[str] = field(default_factory=list)
    #: >1 discourages tokens this answer already produced (local backends; servers get the ``repetition_penalty``
    #: extension field, and a server that rejects it has it listed as not applied).
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def seed_for(self, index: int, attempt: int = 0) -> int | None:
        """The seed of request ``index`` of the call (``attempt`` > 0 for its retries); ``None`` when unseeded."""
        if self.seeds is not None:
            if index >= len(self.seeds):
                raise ValueError(f"GenParams.seeds has {len(self.seeds)} seed(s) but request {index} needs one")
            base = int(self.seeds[index])
            return base % SEED_RANGE if attempt == 0 else request_seed(base, 0, attempt)
        if self.seed is None:
            return None
        return request_seed(self.seed, index, attempt)


FinishReason = Literal["stop", "length", "error"]


@dataclass
class Completion:
    """One generated answer.

    ``finish_reason`` is ``"stop"`` (the model ended it or a stop string did), ``"length"`` (cut at
    ``max_new_tokens``) or ``"error"``: no usable answer came back (empty, filtered) even after retries. Then
    :attr:`error` says why, :attr:`failed` is true and ``text`` is empty: stages must skip the row, never train on it.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "stop"
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.finish_reason == "error"


def failed_completion(reason: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> Completion:
    """A completion that carries no answer, only the reason."""
    return Completion(text="", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finish_reason="error", error=reason)


def empty_reason(text: str | None) -> str | None:
    """Why ``text`` is not an answer (``None`` when it is one)."""
    if text is None:
        return "empty completion (no content)"
    if not text.strip():
        return "empty completion (blank content)" if text else "empty completion (content is an empty string)"
    return None


@dataclass
class BackendStats:
    """Running counters a backend keeps; stages copy them into manifests."""

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prefix_tokens: int = 0
    generate_seconds: float = 0.0
    #: Requests sent again: transport failures (timeouts, 429, 5xx), empty completions, a rejected optional field.
    retries: int = 0
    #: Completions that came back empty or filtered (each one, before any retry).
    empty_completions: int = 0
    #: Requests returned as failed rows (``finish_reason="error"``) after their retries.
    failed_requests: int = 0
    #: Responses naming another model than the one requested: returned name -> count.
    model_mismatches: dict[str, int] = field(default_factory=dict)
    #: GenParams fields (or features) that did not reach the model: field -> reason.
    not_applied: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class Backend(abc.ABC):
    """A model behind one protocol. Subclasses implement :meth:`generate` and :meth:`option_logprobs`."""

    name: str = "base"

    def __init__(self, model_id: str):
        self.model_id = model_id
        self.stats = BackendStats()

    @abc.abstractmethod
    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        """Complete every conversation; the result is in input order.

        A conversation whose last message has role ``assistant`` is continued (assistant prefill) where the backend
        supports it. Request ``i`` is seeded with ``params.seed_for(i)``.
        """

    @abc.abstractmethod
    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        """For each conversation, the log-probability of each candidate continuation of the assistant's reply.

        ``None`` marks an option the backend could not score (for example a server that returns no
        log-probabilities); callers fall back to parsing a generated answer.
        """

    def describe(self) -> dict:
        """What a manifest records about this backend: name, model and any settings that did not reach the model."""
        d = {"backend": self.name, "model": self.model_id}
        if self.stats.not_applied:
            d["not_applied"] = dict(self.stats.not_applied)
        return d

    def close(self) -> None:  # pragma: no cover - default no-op
        pass
