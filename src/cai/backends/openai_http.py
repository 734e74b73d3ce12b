"""HTTP helpers of the OpenAI-compatible backend: error messages with fixes, retry signals, ``Retry-After``."""

from __future__ import annotations

import email.utils
import math
import re
import time

import httpx

from cai.errors import ModelError

SNIPPET_CHARS = 300

#: Request fields a server may refuse; each maps to what the manifest calls it when it is dropped.
OPTIONAL_FIELDS = {
    "repetition_penalty": "repetition_penalty",
    "continue_final_message": "assistant_prefill",
    "add_generation_prompt": "assistant_prefill",
    "seed": "seed",
    "logit_bias": "repetition_penalty_end_of_turn_offset",
    "vllm_xargs": "repetition_penalty",
}
FIELD_RE = {f: re.compile(rf"\b{f}\b") for f in OPTIONAL_FIELDS}


def snippet(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > SNIPPET_CHARS:
        return text[:SNIPPET_CHARS] + "..."
    return text


def normalize_option(text: str) -> str:
    """Strip whitespace and one leading ``(``: ``" A"``, ``"(A"`` and ``"A"`` all become ``"A"``."""
    text = text.strip()
    if text.startswith("("):
        text = text[1:].strip()
    return text


def logsumexp(values: list[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(v - m) for v in values))


class Retryable(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, status: str, body: str = "", retry_after: float | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class FieldRejected(Exception):
    """The server refused an optional request field."""

    def __init__(self, field: str, status: int, body: str):
        super().__init__(field)
        self.field = field
        self.status = status
        self.body = body


def http_error(message: str, fix: str, status: int, body: str) -> ModelError:
    """A :class:`ModelError` that also carries the HTTP status and body (callers inspect them)."""
    err = ModelError(message, fix=fix)
    err.status = status  # type: ignore[attr-defined]
    err.body = body  # type: ignore[attr-defined]
    return err


def unknown_model_error(url: str, status: int, text: str, model: str, base_url: str, models: list[str] | None) -> ModelError:
    """The error for an HTTP 404, or a 400 that mentions the model; ``models`` is what the server lists (or None)."""
    if models is None and status == 400:
        return http_error(
            f"The server at {url} rejected the request with HTTP 400: {snippet(text)!r}",
            f"check that `model:` in the role's config ({model!r}) is a model the server serves, and the "
            "role's generation settings",
            status,
            text,
        )
    if models is None:
        return http_error(
            f"The server at {url} answered HTTP {status} for model {model!r}: {snippet(text)!r}. "
            f"Either the model is unknown or base_url is wrong (GET {base_url}/models did not list models).",
            "set `model:` in the role's config to a model the server serves, and check that `base_url` is the "
            "server's OpenAI API root (it usually ends in /v1)",
            status,
            text,
        )
    if model in models:
        if status == 400:  # e.g. "This model's maximum context length is ...": not about the model's name
            return http_error(
                f"The server at {url} rejected the request with HTTP 400: {snippet(text)!r}",
                "check the generation settings of the role (max_new_tokens against the model's context length, "
                "stop, seed) and the server's logs",
                status,
                text,
            )
        return http_error(
            f"The server at {url} answered HTTP 404 although it lists model {model!r}: {snippet(text)!r}",
            "check that `base_url` is the server's OpenAI API root (it usually ends in /v1)",
            status,
            text,
        )
    offered = ", ".join(models) if models else "(none)"
    return http_error(
        f"The server at {base_url} does not serve model {model!r} (HTTP {status}: {snippet(text)!r}). "
        f"It offers: {offered}.",
        f"set `model:` in the role's config to one of: {offered}",
        status,
        text,
    )


def retry_after(resp: httpx.Response) -> float | None:
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


def first_token_logprobs(first: dict) -> dict[str, float]:
    """Token text -> log-probability of a chat response's first position (its ``top_logprobs`` and the token itself)."""
    top: dict[str, float] = {}
    for item in first.get("top_logprobs") or []:
        if isinstance(item, dict) and isinstance(item.get("token"), str) and item.get("logprob") is not None:
            top.setdefault(item["token"], float(item["logprob"]))
    if isinstance(first.get("token"), str) and first.get("logprob") is not None:
        top.setdefault(first["token"], float(first["logprob"]))
    return top
