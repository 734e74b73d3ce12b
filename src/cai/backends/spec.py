"""Role configuration: which backend and model each role (policy, critic, reviser, labeler, judge) uses.

In YAML a role is one line, either a mapping or a shorthand string::

    critic: embedded                                   # the embedded SmolLM2 (default)
    critic: ./checkpoints/my-model                     # a local Hugging Face folder
    critic: gguf:/models/m.gguf                        # a GGUF file (or a bare .gguf path), converted once
    critic: llamacpp:/models/m.gguf                    # a GGUF file run by llama.cpp (optional extra)
    critic: teacher                                    # the local teacher (scripts/setup_teacher.sh)
    critic: openai:Qwen/Qwen2.5-7B-Instruct@http://localhost:8000/v1   # any OpenAI-compatible server
    critic: fake                                       # deterministic scripted backend (tests, dry runs)
    critic: {backend: openai, model: llama3.1, base_url: http://localhost:11434/v1}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.redact import redact_url

BACKENDS = ("transformers", "openai", "llamacpp", "fake")


class ModelSpec(BaseModel):
    """One role's model."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers", "openai", "llamacpp", "fake"] = Field(
        default="transformers",
        description="transformers (local folder, GGUF file or embedded), openai (any compatible server), "
        "llamacpp (a GGUF file run natively by llama.cpp, optional extra), fake",
    )
    model: str = Field(
        default="embedded",
        description="'embedded', 'teacher', a local HF folder, a .gguf file (gguf:/path), or the server's model name",
    )
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
    penalty_route: Literal["auto", "plugin", "field"] = Field(
        default="auto",
        description="openai: how repetition_penalty reaches the server: plugin (the toolkit's vLLM logits processor, "
        "answer tokens only, as locally), field (vLLM's repetition_penalty, which also penalizes prompt tokens), "
        "auto (plugin when the server has it)",
    )
    end_of_turn: str = Field(
        default="<|im_end|>",
        description="openai: the served chat template's end-of-turn token; with repetition_penalty > 1 it gets a "
        "logit bias that offsets the penalty vLLM also puts on prompt tokens ('' turns the offset off)",
    )
    end_of_turn_logit: float = Field(
        default=20.0, ge=0,
        description="openai: typical logit of the end-of-turn token where the model ends its answer; the offset is "
        "this times (1 - 1/repetition_penalty)",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: object) -> object:
        if isinstance(v, str):
            return parse_shorthand(v)
        return v

    @model_validator(mode="after")
    def _check_values(self) -> "ModelSpec":
        if self.backend == "openai":
            check_base_url(self.base_url)
        if self.backend == "fake":
            fake_options(self.model)
        return self

    def key(self) -> tuple:
        """Two roles with equal keys share one loaded model."""
        return (self.backend, self.model, self.base_url, self.device, self.dtype, self.end_of_turn,
                self.end_of_turn_logit, self.penalty_route)

    def label(self) -> str:
        if self.backend == "openai":
            return f"openai:{self.model}@{redact_url(self.base_url)}"  # never a password in a record
        if self.backend == "fake":
            return "fake"
        if self.backend == "llamacpp":
            return f"llamacpp:{self.model}"
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
    if text.startswith("llamacpp:"):
        return {"backend": "llamacpp", "model": text[len("llamacpp:") :]}
    if text == "teacher":  # the local teacher: llama.cpp when installed, else transformers (see backends/teacher.py)
        from cai.backends.teacher import llamacpp_available

        return {"backend": "llamacpp" if llamacpp_available() else "transformers", "model": "teacher"}
    if text.startswith("transformers:"):
        text = text[len("transformers:") :]
    return {"backend": "transformers", "model": text}


def check_base_url(url: str) -> None:
    """Refuse a server URL that is not http(s)://host...; the message shows it with credentials masked."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"base_url '{redact_url(url)}' is not an http:// or https:// URL with a host; "
            "write it like http://localhost:8000/v1 (shorthand: openai:MODEL@http://HOST:PORT/v1)"
        )


def fake_options(model: str) -> dict[str, float]:
    """Options of the fake backend: ``fake:NAME`` (a name that tells scripted fakes apart) and/or ``delay=SECONDS``,
    comma-separated."""
    out: dict[str, float] = {}
    for item in model.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            continue  # a name
        if key.strip() != "delay":
            raise ValueError(f"fake backend option '{key}' is not known; use fake, fake:NAME or fake:delay=SECONDS")
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not 0 <= seconds < 3600:
            raise ValueError(f"fake backend delay '{value}' is not a number of seconds (0 to 3600); use e.g. fake:delay=0.05")
        out["delay"] = seconds
    return out
