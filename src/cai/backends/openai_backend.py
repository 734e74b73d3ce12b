"""Any OpenAI-compatible chat server (vLLM, Ollama, llama.cpp server, OpenAI itself) over HTTP with ``httpx``.

Each conversation is one ``POST {base_url}/chat/completions``. A batch is sent with bounded concurrency: a thread
pool of ``max_concurrency`` workers sharing one ``httpx.Client`` (whose connection pool has the same size), and the
results come back in input order.

Failures:

* timeouts, dropped connections, HTTP 429 and 5xx are retried up to ``max_retries`` times with exponential backoff
  (``backoff_s * 2**attempt``, plus up to 10 % jitter); a ``Retry-After`` header, when present, is used instead,
  capped at :attr:`OpenAIBackend.retry_after_cap_s`. After the last try a :class:`~cai.errors.ModelError` names the
  URL, the last status and a snippet of the last response body.
* a server that cannot be reached at all (connection refused, unknown host), an unknown model (HTTP 404, or a 400
  whose body mentions the model), a rejected API key (401/403) and other 4xx answers are not retried: they raise a
  :class:`~cai.errors.ModelError` at once, with the fix.

Sampling parameters (every :class:`~cai.backends.base.GenParams` field reaches the server or is reported):

* ``max_new_tokens`` -> ``max_tokens``; ``temperature``, ``top_p`` and ``stop`` as they are.
* seeds are per request: request ``i`` of a call gets ``seed = params.seed_for(i)`` (derived from the call's seed),
  so K samples of one prompt differ and a rerun repeats them; with ``seed=None`` no seed is sent.
* ``repetition_penalty`` (when not 1) reaches the server by the route :mod:`cai.backends.openai_penalty` chooses:
  the toolkit's vLLM plugin (answer tokens only, as locally) or the ``repetition_penalty`` extension field with an
  offset on the end-of-turn token (vLLM and llama.cpp accept the field).
* assistant prefill: a conversation whose last message has role ``assistant`` is sent with
  ``continue_final_message: true, add_generation_prompt: false`` (vLLM's extension fields), so the server continues
  that turn instead of answering after it.

A server that rejects one of these optional fields (HTTP 400 or 422 whose body names it) gets the request once more
without it, and every later request goes without it; ``stats.not_applied`` and :meth:`OpenAIBackend.describe` list
the field and the server's reason, so manifests show it. Servers that ignore unknown fields silently (Ollama, for
one) cannot be detected: callers that depend on prefill parse the answer defensively.

Empty completions: content ``null``, missing, blank, or ``finish_reason: content_filter`` are not answers. The request
is sent again (``empty_retries`` times, with a seed derived for each attempt) and then returned as a failed row:
``finish_reason="error"`` with the reason in ``Completion.error``. A response that names another model than the one
requested is counted in ``stats.model_mismatches``.

The API key comes from ``api_key`` or, when that is ``None``, from the environment variable ``api_key_env``; with
neither, no ``Authorization`` header is sent (local servers usually need none). The key never appears in
:meth:`OpenAIBackend.describe` or in error messages.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import httpx

from cai.backends.base import Backend, Completion, Conversation, GenParams, empty_reason, failed_completion
from cai.backends.openai_http import FIELD_RE as _FIELD_RE
from cai.backends.openai_http import OPTIONAL_FIELDS as _OPTIONAL_FIELDS
from cai.backends.openai_penalty import ServerPenalty
from cai.backends.openai_http import FieldRejected as _FieldRejected
from cai.backends.openai_http import Retryable as _Retryable
from cai.backends.openai_http import http_error, retry_after, unknown_model_error
from cai.backends.openai_http import first_token_logprobs
from cai.backends.openai_http import logsumexp as _logsumexp
from cai.backends.openai_http import normalize_option as _normalize_option
from cai.backends.openai_http import snippet as _snippet
from cai.errors import ModelError

T = TypeVar("T")

_MAX_BACKOFF_S = 30.0



class OpenAIBackend(Backend):
    """A model served behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``model`` is the model name the server knows (``model:`` in the role's config); ``base_url`` ends in ``/v1``
    for most servers. See the module docstring for retries, errors and assistant prefill.
    """

    name = "openai"

    #: Longest wait a server's ``Retry-After`` header can impose, in seconds.
    retry_after_cap_s: float = 30.0

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "http://localhost:8000/v1",
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        empty_retries: int = 2,
        end_of_turn: str = "<|im_end|>",
        end_of_turn_logit: float = 20.0,
        penalty_route: str = "auto",
    ):
        super().__init__(model)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.empty_retries = max(0, empty_retries)
        #: Optional fields the server refused: they are no longer sent.
        self._dropped: set[str] = set()
        self._lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, pool=None),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self.penalty = ServerPenalty(self._client, self.base_url, model, mode=penalty_route,  # type: ignore[arg-type]
                                     end_of_turn=end_of_turn, end_of_turn_logit=end_of_turn_logit,
                                     timeout_s=min(timeout_s, 10.0), note=self._not_applied)

    # ------------------------------------------------------------------ public API

    @property
    def retries(self) -> int:
        """Requests sent again, all calls together (same as ``stats.retries``)."""
        return self.stats.retries

    def describe(self) -> dict:
        d = {"backend": self.name, "model": self.model, "base_url": self.base_url, **self.penalty.describe()}
        if self.stats.not_applied:
            d["not_applied"] = dict(self.stats.not_applied)
        return d

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "OpenAIBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        """One chat completion per conversation, sent concurrently; the result is in input order.

        Sends ``max_tokens``, ``temperature``, ``top_p``, a per-request ``seed`` and ``stop`` when set,
        ``repetition_penalty`` when not 1 and the prefill fields for a trailing assistant turn (see the module
        docstring). Token counts come from the server's ``usage`` (0 when it sends none); ``finish_reason`` is
        ``"length"`` when the server says so, ``"error"`` for an empty or filtered completion after its retries, and
        ``"stop"`` otherwise. The text is stripped of surrounding whitespace, as on the local backend. A request that
        fails for good at the transport level raises :class:`~cai.errors.ModelError`.
        """
        if params.seeds is not None and len(params.seeds) != len(conversations):
            raise ModelError(f"GenParams.seeds has {len(params.seeds)} seed(s) for {len(conversations)} conversation(s)")
        t0 = time.perf_counter()
        try:
            return self._map(lambda i, conv: self._complete(conv, params, i), conversations)
        finally:
            with self._lock:
                self.stats.calls += 1
                self.stats.generate_seconds += time.perf_counter() - t0

    def option_logprobs(self, conversations: list[Conversation], options: list[list[str]]) -> list[list[float | None]]:
        """The log-probability that the reply's first token is each option.

        Each conversation is sent with ``max_tokens=1, temperature=0, logprobs=true, top_logprobs=20``; the tokens
        of ``choices[0].logprobs.content[0].top_logprobs`` (plus the sampled token itself) are compared with each
        option after stripping whitespace and one leading ``(`` from both, so option ``"A"`` matches the tokens
        ``"A"``, ``" A"`` and ``"(A"``. When several distinct tokens match, their probabilities are added
        (logsumexp). An option that matches none of the returned tokens (for example one longer than a token, or
        too unlikely to be in the top 20) is ``None``, and so is every option when the server returns no
        log-probabilities or rejects the ``logprobs`` request; callers then fall back to parsing generated text.

        These requests count in ``stats.requests`` and the token counters, not in ``stats.calls``.
        """
        if len(conversations) != len(options):
            raise ModelError("option_logprobs needs one option list per conversation")
        tops = self._map(lambda i, conv: self._top_logprobs(conv), conversations)
        out: list[list[float | None]] = []
        for top, opts in zip(tops, options):
            row: list[float | None] = []
            for opt in opts:
                want = _normalize_option(opt)
                hits = [lp for tok, lp in (top or {}).items() if want and _normalize_option(tok) == want]
                row.append(_logsumexp(hits) if hits else None)
            out.append(row)
        return out

    def list_models(self) -> list[str] | None:
        """The model ids the server offers (``GET {base_url}/models``), or ``None`` when it cannot tell."""
        try:
            resp = self._client.get(f"{self.base_url}/models", timeout=min(self.timeout_s, 10.0))
            if resp.status_code != 200:
                return None
            data = resp.json().get("data")
            return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
        except (httpx.HTTPError, ValueError, TypeError, AttributeError):
            return None

    # ------------------------------------------------------------------ internals

    def _map(self, fn: Callable[[int, Conversation], T], conversations: list[Conversation]) -> list[T]:
        if not conversations:
            return []
        if len(conversations) == 1 or self.max_concurrency == 1:
            return [fn(i, c) for i, c in enumerate(conversations)]
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations)))
        try:
            futures = [pool.submit(fn, i, c) for i, c in enumerate(conversations)]
            return [f.result() for f in futures]
        finally:
            # On the first failure, drop requests that have not started yet.
            pool.shutdown(wait=True, cancel_futures=True)

    def _count(self, usage: Any) -> tuple[int, int]:
        p = c = 0
        if isinstance(usage, dict):
            p = int(usage.get("prompt_tokens") or 0)
            c = int(usage.get("completion_tokens") or 0)
        with self._lock:
            self.stats.requests += 1
            self.stats.prompt_tokens += p
            self.stats.completion_tokens += c
        return p, c

    def _payload(self, conv: Conversation, **extra: Any) -> dict:
        messages = [{"role": m["role"], "content": m["content"]} for m in conv]
        payload = {"model": self.model, "messages": messages, **extra}
        if conv and conv[-1]["role"] == "assistant":
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        return payload

    def _send(self, payload: dict) -> dict:
        """POST a chat request; optional fields the server refuses are dropped (once, for good) and recorded."""
        while True:
            with self._lock:
                dropped = set(self._dropped)
            if "repetition_penalty" in dropped:  # the end-of-turn offset only makes sense beside the penalty
                dropped.add("logit_bias")
            body = {k: v for k, v in payload.items() if k not in dropped}
            try:
                return self._post("/chat/completions", body)
            except _FieldRejected as e:
                with self._lock:
                    what = _OPTIONAL_FIELDS[e.field]  # fields that work together (prefill) are dropped together
                    self._dropped.update(f for f, w in _OPTIONAL_FIELDS.items() if w == what)
                    self.stats.retries += 1
                    self.stats.not_applied.setdefault(
                        what, f"the server rejected `{e.field}` (HTTP {e.status}: {_snippet(e.body)}); sent without it"
                    )

    def _note_model(self, body: Any) -> None:
        got = body.get("model") if isinstance(body, dict) else None
        if isinstance(got, str) and got and got != self.model:
            with self._lock:
                self.stats.model_mismatches[got] = self.stats.model_mismatches.get(got, 0) + 1

    def _complete(self, conv: Conversation, params: GenParams, index: int) -> Completion:
        reason = "empty completion"
        p = c = 0
        for attempt in range(self.empty_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
            extra: dict[str, Any] = {
                "max_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
            }
            seed = params.seed_for(index, attempt)
            if seed is not None:
                extra["seed"] = seed
            if params.stop:
                extra["stop"] = list(params.stop)
            with self._lock:
                dropped = set(self._dropped)
            extra.update(self.penalty.fields(params.repetition_penalty, dropped))
            body = self._send(self._payload(conv, **extra))
            self._note_model(body)
            choice = self._first_choice(body)
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            p, c = self._count(body.get("usage"))
            finish = choice.get("finish_reason")
            if finish == "content_filter":
                reason = "the server filtered the completion (finish_reason content_filter)"
            else:
                reason = empty_reason(text if isinstance(text, str) or text is None else str(text))
            if reason is None:
                assert isinstance(text, str)
                return Completion(text=text.strip(), prompt_tokens=p, completion_tokens=c,
                                  finish_reason="length" if finish == "length" else "stop")
            with self._lock:
                self.stats.empty_completions += 1
        with self._lock:
            self.stats.failed_requests += 1
        return failed_completion(f"{reason}; {self.empty_retries + 1} attempt(s)", p, c)

    def _not_applied(self, field: str, why: str) -> None:
        with self._lock:
            self.stats.not_applied.setdefault(field, why)

    def _top_logprobs(self, conv: Conversation) -> dict[str, float] | None:
        payload = self._payload(conv, max_tokens=1, temperature=0, logprobs=True, top_logprobs=20)
        try:
            body = self._send(payload)
        except ModelError as e:
            # A server without log-probability support: score nothing, let the caller parse text instead.
            if getattr(e, "status", None) == 400 and "logprob" in getattr(e, "body", "").lower():
                return None
            raise
        self._count(body.get("usage"))
        self._note_model(body)
        choice = self._first_choice(body)
        lp = choice.get("logprobs")
        content = lp.get("content") if isinstance(lp, dict) else None
        if not isinstance(content, list) or not content or not isinstance(content[0], dict):
            return None
        first = content[0]
        top = first_token_logprobs(first)
        return top or None

    def _first_choice(self, body: Any) -> dict:
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ModelError(
                f"The server at {self.base_url}/chat/completions answered without any choices: "
                f"{_snippet(json.dumps(body))!r}",
                fix="check that base_url points at an OpenAI-compatible server (it usually ends in /v1)",
            )
        return choices[0]

    def _sleep_before_retry(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = min(max(retry_after, 0.0), self.retry_after_cap_s)
        else:
            delay = min(self.backoff_s * (2**attempt), _MAX_BACKOFF_S)
            delay *= 1.0 + random.uniform(0.0, 0.1)
        if delay > 0:
            time.sleep(delay)

    def _post(self, path: str, payload: dict) -> dict:
        url = f"{self.base_url}{path}"
        last: _Retryable | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
                self._sleep_before_retry(attempt - 1, last.retry_after if last else None)
            try:
                return self._attempt(url, payload)
            except _Retryable as e:
                last = e
        assert last is not None
        err = ModelError(
            f"The OpenAI-compatible server at {url} kept failing: gave up after {self.max_retries + 1} attempts; "
            f"last error: {last.status}"
            + (f"; last response body: {_snippet(last.body)!r}" if last.body else ""),
            fix="check the server's logs and load, or raise `max_retries`/`timeout_s` in the role's config",
        )
        err.status = last.status  # type: ignore[attr-defined]
        err.body = last.body  # type: ignore[attr-defined]
        raise err

    def _attempt(self, url: str, payload: dict) -> dict:
        try:
            resp = self._client.post(url, json=payload)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timed out after {self.timeout_s:g} s ({type(e).__name__})") from e
        except httpx.ConnectError as e:
            raise ModelError(
                f"Cannot reach the OpenAI-compatible server at {self.base_url} ({e}).",
                fix="start the server (vLLM, Ollama, llama.cpp server, ...), or check `base_url` in the role's config",
            ) from e
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.CloseError) as e:
            raise _Retryable(f"connection dropped ({type(e).__name__}: {e})") from e

        status = resp.status_code
        text = resp.text
        if status == 200:
            try:
                return resp.json()
            except ValueError as e:
                raise ModelError(
                    f"The server at {url} answered HTTP 200 with a body that is not JSON: {_snippet(text)!r}",
                    fix="check that base_url points at an OpenAI-compatible server (it usually ends in /v1)",
                ) from e
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", text, retry_after(resp))
        if status in (401, 403):
            where = (
                f"the key from the environment variable {self.api_key_env}"
                if self._api_key
                else f"no API key (the environment variable {self.api_key_env} is not set)"
            )
            raise http_error(
                f"The server at {url} refused the request with HTTP {status}; it was sent {where}. "
                f"Body: {_snippet(text)!r}",
                f"set the environment variable {self.api_key_env} to a valid API key for this server "
                "(or point `api_key_env` in the role's config at the variable that holds it)",
                status,
                text,
            )
        if status in (400, 422):
            for f in _OPTIONAL_FIELDS:
                if f in payload and _FIELD_RE[f].search(text):
                    raise _FieldRejected(f, status, text)
        if status == 404 or (status == 400 and "model" in text.lower()):
            raise unknown_model_error(url, status, text, self.model, self.base_url, self.list_models())
        raise http_error(
            f"The server at {url} rejected the request with HTTP {status}: {_snippet(text)!r}",
            "check the generation settings of the role (max_new_tokens against the model's context length, stop, "
            "seed) and the server's logs",
            status,
            text,
        )
