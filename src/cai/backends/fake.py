"""A deterministic backend for tests and dry runs, scripted by a queue or a function."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from typing import Callable, Iterable, Union

from cai.backends.base import Backend, Completion, Conversation, GenParams, empty_reason, failed_completion
from cai.errors import ModelError

#: What a script may give for one request: the text, or a ready-made :class:`Completion` (for example a failed one).
Reply = Union[str, Completion]


def _default_reply(conv: Conversation) -> str:
    last = next((m["content"] for m in reversed(conv) if m["role"] == "user"), "")
    digest = hashlib.sha256(last.encode()).hexdigest()[:8]
    return f"Reply {digest}: {' '.join(last.split()[:12])}"


class FakeBackend(Backend):
    """Returns scripted text. ``responses`` is consumed in order; ``fn(conversation) -> str`` answers otherwise.

    A scripted reply may also be a :class:`~cai.backends.base.Completion`, returned as is (token counts filled in
    when zero), to script failed rows. A blank text becomes a failed completion (``finish_reason="error"``), as on
    every backend; scripted replies are not retried. Stop strings cut the text as a server would; ``max_new_tokens``
    counts words.

    ``logprob_fn(conversation, option) -> float`` scores options; the default is a stable hash so results are
    reproducible. Every call is recorded in :attr:`calls`, its parameters in :attr:`params` and the per-request seeds
    the call asked for in :attr:`seeds`, for assertions.
    """

    name = "fake"

    def __init__(
        self,
        model_id: str = "fake",
        *,
        responses: Iterable[Reply] | None = None,
        fn: Callable[[Conversation], Reply] | None = None,
        logprob_fn: Callable[[Conversation, str], float | None] | None = None,
        delay_s: float = 0.0,
    ):
        super().__init__(model_id)
        self.delay_s = delay_s
        self._queue: deque[Reply] = deque(responses or [])
        self._fn = fn
        self._logprob_fn = logprob_fn
        self.calls: list[list[Conversation]] = []
        self.params: list[GenParams] = []
        self.seeds: list[list[int | None]] = []

    def enqueue(self, *texts: Reply) -> None:
        self._queue.extend(texts)

    def _reply(self, conv: Conversation) -> Reply:
        if self._queue:
            return self._queue.popleft()
        if self._fn is not None:
            return self._fn(conv)
        return _default_reply(conv)

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        self.calls.append(conversations)
        self.params.append(params)
        self.seeds.append([params.seed_for(i) for i in range(len(conversations))])
        self.stats.calls += 1
        out = []
        for conv in conversations:
            if self.delay_s:
                time.sleep(self.delay_s)
            out.append(self._complete(conv, self._reply(conv), params))
        return out

    def _complete(self, conv: Conversation, reply: Reply, params: GenParams) -> Completion:
        p_tok = sum(len(m["content"].split()) for m in conv)
        self.stats.requests += 1
        self.stats.prompt_tokens += p_tok
        if isinstance(reply, Completion):
            c = Completion(reply.text, reply.prompt_tokens or p_tok, reply.completion_tokens, reply.finish_reason, reply.error)
            if c.failed:
                self.stats.failed_requests += 1
            self.stats.completion_tokens += c.completion_tokens
            return c
        text, finish = reply, "stop"
        for stop in params.stop:
            k = text.find(stop)
            if k >= 0:
                text = text[:k]
        words = text.split()
        if len(words) > params.max_new_tokens:
            text, finish = " ".join(words[: params.max_new_tokens]), "length"
        c_tok = len(text.split())
        self.stats.completion_tokens += c_tok
        reason = empty_reason(text)
        if reason is not None:
            self.stats.empty_completions += 1
            self.stats.failed_requests += 1
            return failed_completion(reason, p_tok, c_tok)
        return Completion(text=text, prompt_tokens=p_tok, completion_tokens=c_tok, finish_reason=finish)

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
