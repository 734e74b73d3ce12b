"""Role configuration: which backend and model each role (policy, critic, reviser, labeler, judge) uses.

In YAML a role is one line, either a mapping or a shorthand string::

    critic: embedded                                   # the embedded SmolLM2 (default)
    critic: ./checkpoints/my-model                     # a local Hugging Face folder
    critic: openai:Qwen/Qwen2.5-7B-Instruct@http://localhost:8000/v1   # any OpenAI-compatible server
    critic: fake                                       # deterministic scripted backend (tests, dry runs)
    critic: {backend: openai, model: llama3.1, base_url: http://localhost:11434/v1}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BACKENDS = ("transformers", "openai", "fake")


class ModelSpec(BaseModel):
    """One role's model."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers", "openai", "fake"] = Field(
        default="transformers", description="transformers (local folder or embedded), openai (any compatible server), fake"
    )
    model: str = Field(default="embedded", description="'embedded', a local HF folder, or the server's model name")
    base_url: str = Field(default="http://localhost:8000/v1", description="OpenAI-compatible server URL (backend openai)")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the API key")
    device: str = Field(default="auto", description="transformers: cpu, cuda, cuda:1 or auto")
    dtype: str = Field(default="auto", description="transformers: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    batch_size: int = Field(
        default=64, ge=1, description="transformers: prompts per forward batch (bigger is faster on CPU too, memory allowing)"
    )
    prefix_cache: bool = Field(default=True, description="transformers: reuse the KV cache of a shared prompt prefix")
    max_concurrency: int = Field(default=8, ge=1, description="openai: requests in flight at once")
    timeout_s: float = Field(default=120.0, gt=0, description="openai: per-request timeout in seconds")
    max_retries: int = Field(default=4, ge=0, description="openai: retries on timeouts, 429 and 5xx")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: object) -> object:
        if isinstance(v, str):
            return parse_shorthand(v)
        return v

    def key(self) -> tuple:
        """Two roles with equal keys share one loaded model."""
        return (self.backend, self.model, self.base_url, self.device, self.dtype)

    def label(self) -> str:
        if self.backend == "openai":
            return f"openai:{self.model}@{self.base_url}"
        if self.backend == "fake":
            return "fake"
        return self.model


def parse_shorthand(text: str) -> dict:
    text = text.strip()
    if text == "fake" or text.startswith("fake:"):
        return {"backend": "fake", "model": text.split(":", 1)[1] if ":" in text else "fake"}
    if text.startswith("openai:"):
        rest = text[len("openai:") :]
        if "@" in rest:
            model, url = rest.split("@", 1)
            return {"backend": "openai", "model": model, "base_url": url}
        return {"backend": "openai", "model": rest}
    if text.startswith("transformers:"):
        text = text[len("transformers:") :]
    return {"backend": "transformers", "model": text}
