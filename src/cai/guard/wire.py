"""The request bodies of the guard server's API (OpenAI chat format plus a ``guardrails`` field), and its errors."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An error reply in the OpenAI format: ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def response(self, request_id: str) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers={"x-request-id": request_id})


# --- request bodies -------------------------------------------------------------------------------------------------
class GuardrailsOptions(BaseModel):
    """The ``guardrails`` field of a request (``extra_body={"guardrails": {...}}`` in the openai client)."""

    model_config = ConfigDict(extra="forbid")
    policy: str | None = Field(default=None, description="Policy id to apply (overrides the header and the key's default)")
    stream_mode: Literal["hold", "window"] | None = Field(default=None, description="Streaming mode for this request")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"message content part of type '{part.get('type')}' is not supported; send text")
            parts.append(part["text"])
        return "\n".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream_options: StreamOptions | None = None
    guardrails: GuardrailsOptions | None = None

    def sampling(self) -> dict:
        """The request's sampling fields that were given (``stop`` as a list), for the policy model's generation."""
        out = {k: getattr(self, k) for k in ("temperature", "top_p", "seed") if getattr(self, k) is not None}
        if self.stop:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return out


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessage] = Field(min_length=1)
    answer: str | None = Field(default=None, description="The answer to check (omit to check the conversation only)")
    policy: str | None = None
    model: str | None = None
    guardrails: GuardrailsOptions | None = None


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper-side estimate: the larger of the word count and characters / 4."""
    return max(len(text.split()), math.ceil(len(text) / 4))


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"request body is not JSON ({e})") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "body"
        raise ApiError(400, f"invalid request: {where}: {err['msg']}") from None


def plain_messages(msgs: list[ChatMessage]) -> list[dict]:
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in msgs]
