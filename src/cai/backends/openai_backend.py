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

Assistant prefill: a conversation whose last message has role ``assistant`` is sent as-is. Servers that support
continuing the final message honour it (for vLLM that also needs ``continue_final_message``/``add_generation_prompt``
on the server side or in its chat template); others, OpenAI included, treat it as a finished turn and answer after
it. Callers that depend on prefill should therefore parse the answer defensively.

The API key comes from ``api_key`` or, when that is ``None``, from the environment variable ``api_key_env``; with
neither, no ``Authorization`` header is sent (local servers usually need none). The key never appears in
:meth:`OpenAIBackend.describe` or in error messages.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import httpx

from cai.backends.base import Backend, Completion, Conversation, GenParams
from cai.errors import ModelError

T = TypeVar("T")

_SNIPPET_CHARS = 300
_MAX_BACKOFF_S = 30.0


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _SNIPPET_CHARS:
        return text[:_SNIPPET_CHARS] + "..."
    return text


def _normalize_option(text: str) -> str:
    """Strip whitespace and one leading ``(``: ``" A"``, ``"(A"`` and ``"A"`` all become ``"A"``."""
    text = text.strip()
    if text.startswith("("):
        text = text[1:].strip()
    return text


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in values))


class _Retryable(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, status: str, body: str = "", retry_after: float | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.retry_after = retry_after


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
        #: Attempts that failed and were retried (all calls together).
        self.retries = 0
        self._lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, pool=None),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )

    # ------------------------------------------------------------------ public API

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "OpenAIBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, conversations: list[Conversation], params: GenParams) -> list[Completion]:
        """One chat completion per conversation, sent concurrently; the result is in input order.

        Sends ``max_tokens``, ``temperature``, ``top_p``, and ``seed``/``stop`` when set. Token counts come from the
        server's ``usage`` (0 when it sends none); ``finish_reason`` is ``"length"`` when the server says so and
        ``"stop"`` otherwise. Any request that fails for good raises :class:`~cai.errors.ModelError`.
        """
        t0 = time.perf_counter()
        try:
            return self._map(lambda conv: self._complete(conv, params), conversations)
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
        tops = self._map(self._top_logprobs, conversations)
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

    def _map(self, fn: Callable[[Conversation], T], conversations: list[Conversation]) -> list[T]:
        if not conversations:
            return []
        if len(conversations) == 1 or self.max_concurrency == 1:
            return [fn(c) for c in conversations]
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations)))
        try:
            futures = [pool.submit(fn, c) for c in conversations]
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
        return {"model": self.model, "messages": messages, **extra}

    def _complete(self, conv: Conversation, params: GenParams) -> Completion:
        extra: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            extra["seed"] = params.seed
        if params.stop:
            extra["stop"] = list(params.stop)
        body = self._post("/chat/completions", self._payload(conv, **extra))
        choice = self._first_choice(body)
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        p, c = self._count(body.get("usage"))
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(text=text or "", prompt_tokens=p, completion_tokens=c, finish_reason=finish)

    def _top_logprobs(self, conv: Conversation) -> dict[str, float] | None:
        payload = self._payload(conv, max_tokens=1, temperature=0, logprobs=True, top_logprobs=20)
        try:
            body = self._post("/chat/completions", payload)
        except ModelError as e:
            # A server without log-probability support: score nothing, let the caller parse text instead.
            if getattr(e, "status", None) == 400 and "logprob" in getattr(e, "body", "").lower():
                return None
            raise
        self._count(body.get("usage"))
        choice = self._first_choice(body)
        lp = choice.get("logprobs")
        content = lp.get("content") if isinstance(lp, dict) else None
        if not isinstance(content, list) or not content or not isinstance(content[0], dict):
            return None
        first = content[0]
        top: dict[str, float] = {}
        for item in first.get("top_logprobs") or []:
            if isinstance(item, dict) and isinstance(item.get("token"), str) and item.get("logprob") is not None:
                top.setdefault(item["token"], float(item["logprob"]))
        if isinstance(first.get("token"), str) and first.get("logprob") is not None:
            top.setdefault(first["token"], float(first["logprob"]))
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
                    self.retries += 1
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
            raise _Retryable(f"HTTP {status}", text, self._retry_after(resp))
        if status in (401, 403):
            where = (
                f"the key from the environment variable {self.api_key_env}"
                if self._api_key
                else f"no API key (the environment variable {self.api_key_env} is not set)"
            )
            raise self._http_error(
                f"The server at {url} refused the request with HTTP {status}; it was sent {where}. "
                f"Body: {_snippet(text)!r}",
                f"set the environment variable {self.api_key_env} to a valid API key for this server "
                "(or point `api_key_env` in the role's config at the variable that holds it)",
                status,
                text,
            )
        if status == 404 or (status == 400 and "model" in text.lower()):
            raise self._unknown_model_error(url, status, text)
        raise self._http_error(
            f"The server at {url} rejected the request with HTTP {status}: {_snippet(text)!r}",
            "check the generation settings of the role (max_new_tokens against the model's context length, stop, "
            "seed) and the server's logs",
            status,
            text,
        )

    def _http_error(self, message: str, fix: str, status: int, body: str) -> ModelError:
        err = ModelError(message, fix=fix)
        err.status = status  # type: ignore[attr-defined]
        err.body = body  # type: ignore[attr-defined]
        return err

    def _unknown_model_error(self, url: str, status: int, text: str) -> ModelError:
        models = self.list_models()
        if models is None and status == 400:
            return self._http_error(
                f"The server at {url} rejected the request with HTTP 400: {_snippet(text)!r}",
                f"check that `model:` in the role's config ({self.model!r}) is a model the server serves, and the "
                "role's generation settings",
                status,
                text,
            )
        if models is None:
            return self._http_error(
                f"The server at {url} answered HTTP {status} for model {self.model!r}: {_snippet(text)!r}. "
                f"Either the model is unknown or base_url is wrong (GET {self.base_url}/models did not list models).",
                "set `model:` in the role's config to a model the server serves, and check that `base_url` is the "
                "server's OpenAI API root (it usually ends in /v1)",
                status,
                text,
            )
        if self.model in models:
            if status == 400:  # e.g. "This model's maximum context length is ...": not about the model's name
                return self._http_error(
                    f"The server at {url} rejected the request with HTTP 400: {_snippet(text)!r}",
                    "check the generation settings of the role (max_new_tokens against the model's context length, "
                    "stop, seed) and the server's logs",
                    status,
                    text,
                )
            return self._http_error(
                f"The server at {url} answered HTTP 404 although it lists model {self.model!r}: {_snippet(text)!r}",
                "check that `base_url` is the server's OpenAI API root (it usually ends in /v1)",
                status,
                text,
            )
        offered = ", ".join(models) if models else "(none)"
        return self._http_error(
            f"The server at {self.base_url} does not serve model {self.model!r} (HTTP {status}: {_snippet(text)!r}). "
            f"It offers: {offered}.",
            f"set `model:` in the role's config to one of: {offered}",
            status,
            text,
        )

    @staticmethod
    def _retry_after(resp: httpx.Response) -> float | None:
        value = resp.headers.get("Retry-After")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        return max(0.0, when.timestamp() - time.time())
