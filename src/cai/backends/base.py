"""The one backend protocol every model role speaks.

A backend takes a batch of chat conversations and returns completions in the same order (with token counts), and
scores given continuations with log-probabilities. Batching, prefix caching and concurrency live here, not in the
stages: a stage hands over everything it has at once.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

Message = dict[str, str]
Conversation = list[Message]


@dataclass
class GenParams:
    """Sampling parameters shared by every backend (OpenAI-style names)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    #: >1 discourages tokens this answer already produced (local backends; servers that support it get it as is)
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Completion:
    """One generated answer."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "error"] = "stop"


@dataclass
class BackendStats:
    """Running counters a backend keeps; stages copy them into manifests."""

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prefix_tokens: int = 0
    generate_seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


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
        supports it.
        """

    @abc.abstractmethod
    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        """For each conversation, the log-probability of each candidate continuation of the assistant's reply.

        ``None`` marks an option the backend could not score (for example a server that returns no
        log-probabilities); callers fall back to parsing a generated answer.
        """

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_id}

    def close(self) -> None:  # pragma: no cover - default no-op
        pass
