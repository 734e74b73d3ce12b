"""A deterministic backend for tests and dry runs, scripted by a queue or a function."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from typing import Callable, Iterable

from cai.backends.base import Backend, Completion, Conversation, GenParams
from cai.errors import ModelError


def _default_reply(conv: Conversation) -> str:
    last = next((m["content"] for m in reversed(conv) if m["role"] == "user"), "")
    digest = hashlib.sha256(last.encode()).hexdigest()[:8]
    return f"Reply {digest}: {' '.join(last.split()[:12])}"


class FakeBackend(Backend):
    """Returns scripted text. ``responses`` is consumed in order; ``fn(conversation) -> str`` answers otherwise.

    ``logprob_fn(conversation, option) -> float`` scores options; the default is a stable hash so results are
    reproducible. Every call is recorded in :attr:`calls` for assertions.
    """

    name = "fake"

    def __init__(
        self,
        model_id: str = "fake",
        *,
        responses: Iterable[str] | None = None,
        fn: Callable[[Conversation], str] | None = None,
        logprob_fn: Callable[[Conversation, str], float | None] | None = None,
        delay_s: float = 0.0,
    ):
        super().__init__(model_id)
        self.delay_s = delay_s
        self._queue: deque[str] = deque(responses or [])
        self._fn = fn
        self._logprob_fn = logprob_fn
        self.calls: list[list[Conversation]] = []

    def enqueue(self, *texts: str) -> None:
        self._queue.extend(texts)

    def _reply(self, conv: Conversation) -> str:
        if self._queue:
            return self._queue.popleft()
        if self._fn is not None:
            return self._fn(conv)
        return _default_reply(conv)

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        self.calls.append(conversations)
        self.stats.calls += 1
        out = []
        for conv in conversations:
            if self.delay_s:
                time.sleep(self.delay_s)
            text = self._reply(conv)
            words = text.split()
            finish = "stop"
            if len(words) > params.max_new_tokens:
                text, finish = " ".join(words[: params.max_new_tokens]), "length"
            p_tok = sum(len(m["content"].split()) for m in conv)
            c_tok = len(text.split())
            self.stats.requests += 1
            self.stats.prompt_tokens += p_tok
            self.stats.completion_tokens += c_tok
            out.append(Completion(text=text, prompt_tokens=p_tok, completion_tokens=c_tok, finish_reason=finish))
        return out

    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        if len(conversations) != len(options):
            raise ModelError("option_logprobs needs one option list per conversation")
        out = []
        for conv, opts in zip(conversations, options):
            row = []
            for o in opts:
                if self._logprob_fn is not None:
                    row.append(self._logprob_fn(conv, o))
                else:
                    h = int(hashlib.sha256((repr(conv) + o).encode()).hexdigest()[:8], 16)
                    row.append(math.log((h % 1000 + 1) / 1001))
            out.append(row)
        return out
