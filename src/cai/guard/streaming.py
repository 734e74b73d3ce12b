"""Streaming replies of the guard server, in the OpenAI chunk format (``data: {...}`` events, then ``data: [DONE]``).

Two modes, named in every reply's ``guardrails.stream_mode``:

* ``hold``: the whole answer is generated, checked and revised or blocked first, then sent in chunks.
* ``window``: for an upstream that streams (``openai:`` specs), text is read from it as it is produced and sent one
  window at a time, each window only after the answer so far (every earlier window plus this one) passed a check.
  The first words reach the caller after one window and one check instead of after the whole answer. Text already
  sent cannot be revised: a ``revise`` or ``block`` verdict (or a failed check under ``fail_closed``) ends the stream
  with ``finish_reason: "content_filter"``, and the flagged window is never sent. The last window's check covers the
  whole answer, so nothing unchecked is ever sent in either mode.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
from starlette.responses import StreamingResponse

from cai.backends.spec import ModelSpec
from cai.guard.server import UpstreamError
from cai.guard.types import CheckResult
from cai.redact import redact_text


def split_chunks(text: str, size: int) -> list[str]:
    """``text`` cut after whitespace into pieces of about ``size`` characters; joined they give ``text`` back."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end + 1)
            if space > start:
                end = space + 1
        out.append(text[start:end])
        start = end
    return out


def sse_event(rid: str, created: int, model: str, delta: dict, finish: str | None, extra: dict | None = None) -> bytes:
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if extra:
        chunk.update(extra)
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode("utf-8")


DONE = b"data: [DONE]\n\n"


async def hold_chunks(rid: str, created: int, model: str, text: str, finish_reason: str, guardrails: dict,
                      size: int, usage: dict | None = None) -> AsyncIterator[bytes]:
    """A checked answer as a stream: the role, the text in pieces, the finish reason with ``guardrails``, then (when
    ``usage`` is given: the request's ``stream_options.include_usage``) OpenAI's usage chunk with no choices, [DONE]."""
    head = {k: guardrails[k] for k in ("request_id", "policy_id", "policy_hash", "stream_mode")}
    yield sse_event(rid, created, model, {"role": "assistant", "content": ""}, None, {"guardrails": head})
    for piece in split_chunks(text, size):
        yield sse_event(rid, created, model, {"content": piece}, None)
    yield sse_event(rid, created, model, {}, finish_reason, {"guardrails": guardrails})
    if usage is not None:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                 "usage": usage}
        yield f"data: {json.dumps(chunk)}\n\n".encode("utf-8")
    yield DONE


async def upstream_deltas(spec: ModelSpec, messages: list[dict], *, max_tokens: int, temperature: float,
                          seed: int | None, top_p: float | None = None,
                          stop: list[str] | None = None) -> AsyncIterator[str]:
    """The text deltas of one streamed chat completion from an OpenAI-compatible server.

    Failures become :class:`UpstreamError`: 504 for a timeout, 502 otherwise (details with secrets masked).
    """
    url = spec.base_url.rstrip("/") + "/chat/completions"
    headers = {}
    if os.environ.get(spec.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[spec.api_key_env]}"
    payload: dict[str, Any] = {"model": spec.model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                               "temperature": temperature}
    if seed is not None:
        payload["seed"] = seed
    if top_p is not None:
        payload["top_p"] = top_p
    if stop:
        payload["stop"] = stop
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(spec.timeout_s)) as client:
            async with client.stream("POST", url, json=payload, headers=headers) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")[:300]
                    raise UpstreamError(502, "upstream model failed",
                                        redact_text(f"HTTP {resp.status_code} from {url}: {body}"))
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        choice = (json.loads(data).get("choices") or [{}])[0]
                    except (ValueError, AttributeError, IndexError):
                        raise UpstreamError(502, "upstream model failed", f"unreadable stream event: {data[:200]!r}") from None
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
    except httpx.TimeoutException as e:
        raise UpstreamError(504, "upstream model timed out", redact_text(f"{type(e).__name__} from {url}")) from e
    except httpx.HTTPError as e:
        raise UpstreamError(502, "upstream model failed", redact_text(f"{type(e).__name__}: {e} ({url})")) from e


Decide = Callable[[CheckResult], str]
"""``decide(check)`` -> "pass", "flagged" or "blocked" for the answer so far."""


class WindowStream:
    """An async iterator of SSE bytes that checks each window of upstream text before sending it.

    ``prime()`` reads and checks the first window before the HTTP response starts, so an upstream that fails at once
    still gets a 502/504 status. ``on_done(summary)`` is called exactly once: when the stream ends, fails, or is
    dropped by a caller that went away (then from :meth:`aclose`, which :class:`ClosingStreamingResponse` calls).
    """

    def __init__(self, *, deltas: AsyncIterator[str], check: Callable[[str], Awaitable[CheckResult]], decide: Decide,
                 window_chars: int, chunk_chars: int, envelope: tuple[str, int, str], head: dict,
                 on_done: Callable[[dict], None]):
        self._deltas, self._check, self._decide = deltas, check, decide
        self.window_chars, self.chunk_chars = window_chars, chunk_chars
        self.rid, self.created, self.model = envelope
        self.head = head
        self._on_done = on_done
        self._queue: list[bytes] = []
        self._pending = ""
        self._upstream_done = False
        self._finished = False
        self._summary: dict[str, Any] = {"sent": "", "windows": 0, "check_ms": 0.0, "outcome": "pass", "check": None,
                                         "model_calls": 1, "finish_reason": None, "error": None,
                                         "first_content_ms": None}
        self._t0 = time.perf_counter()

    async def _read_window(self) -> str:
        """The next window: once at least ``window_chars`` characters wait, the text up to their last whitespace
        (all that is left when the upstream has ended)."""
        while not self._upstream_done:
            cut = self._cut()
            if cut:
                window, self._pending = self._pending[:cut], self._pending[cut:]
                return window
            try:
                self._pending += await self._deltas.__anext__()
            except StopAsyncIteration:
                self._upstream_done = True
        window, self._pending = self._pending, ""
        return window

    def _cut(self) -> int:
        if len(self._pending) < self.window_chars:
            return 0
        space = max(self._pending.rfind(c, self.window_chars - 1) for c in " \n")
        return space + 1 if space >= 0 else 0

    async def _step(self) -> None:
        """Check the next window; queue its chunks, or the end of the stream."""
        s = self._summary
        window = await self._read_window()
        if window:
            result = await self._check(s["sent"] + window)
            s["windows"] += 1
            s["check_ms"] += sum((result.latency_ms or {}).values())
            s["model_calls"] += result.model_calls
            s["check"] = result
            verdict = self._decide(result)
            if verdict == "blocked":
                s["outcome"] = "blocked"
                return self._end("content_filter")
            if verdict == "flagged":
                s["outcome"] = "flagged"
            if s["first_content_ms"] is None:
                s["first_content_ms"] = round((time.perf_counter() - self._t0) * 1000, 3)
            for piece in split_chunks(window, self.chunk_chars):
                self._queue.append(sse_event(self.rid, self.created, self.model, {"content": piece}, None))
            s["sent"] += window
        if self._upstream_done and not self._pending:
            if not s["sent"]:
                raise UpstreamError(502, "upstream model failed", "empty answer")
            self._end("stop")

    def _end(self, finish_reason: str) -> None:
        self._summary["finish_reason"] = finish_reason
        self._finished = True
        summary = self._done()
        self._queue.append(sse_event(self.rid, self.created, self.model, {}, finish_reason,
                                     {"guardrails": summary.get("guardrails", {})}))
        self._queue.append(DONE)

    def _done(self, error: str | None = None, status: int | None = None) -> dict:
        if self._on_done is None:
            return self._summary
        if error:
            self._summary["error"] = error
        if status:
            self._summary["status"] = status
        cb, self._on_done = self._on_done, None
        cb(self._summary)
        return self._summary

    async def prime(self) -> None:
        """Before the response starts: the role chunk, then the first window checked (errors raise here)."""
        self._queue.append(sse_event(self.rid, self.created, self.model, {"role": "assistant", "content": ""}, None,
                                     {"guardrails": self.head}))
        try:
            await self._step()
        except BaseException:
            self._on_done = None  # the handler answers with the error status and writes the record itself
            raise

    def __aiter__(self) -> "WindowStream":
        return self

    async def __anext__(self) -> bytes:
        while not self._queue:
            if self._finished:
                raise StopAsyncIteration
            try:
                await self._step()
            except UpstreamError as e:  # the reply has started: end it with an error event
                self._finished = True
                self._done(f"{e.message}: {e.detail}", e.status)
                err = {"error": {"message": e.message, "type": "upstream_error", "code": None}}
                self._queue += [f"data: {json.dumps(err)}\n\n".encode(), DONE]
        return self._queue.pop(0)

    async def aclose(self) -> None:
        """End of the response, however it ended: a caller that went away still gets its record, once."""
        if self._on_done is not None:
            self._done("the caller disconnected before the end of the stream")
        aclose = getattr(self._deltas, "aclose", None)
        if aclose is not None:
            try:
                await aclose()  # closes the upstream connection
            except BaseException:  # noqa: BLE001 - a cancelled close leaves the connection to the GC
                pass


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always calls its iterator's ``aclose()`` when it ends, also when the caller
    disconnected or the task was cancelled (a plain one just stops iterating)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
