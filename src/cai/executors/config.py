"""The ``executor:`` setting of every sharded stage: where the stage's model calls run.

``kind: local`` (the default) runs each role's backend in this process, as configured. ``kind: ray`` sends every
``generate`` / ``option_logprobs`` call of the stage through a Ray Data pipeline (:mod:`cai.executors.raydata`) whose
engine is vLLM (``engine: vllm``, the role names a Hugging Face folder or hub name) or an OpenAI-compatible server
(``engine: http``, the role is ``openai:NAME@URL``). In YAML::

    revise:
      executor: {kind: ray, engine: vllm, num_engines: 4, tensor_parallel_size: 2, batch_size: 64}

The executor changes where the calls run, never what a stage computes: it is left out of the stage's fingerprint
(``model_dump`` excludes it), so a stage started locally resumes on Ray and the other way round.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator


class ExecutorConfig(BaseModel):
    """Where a stage's model calls run."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = Field(
        default="local", description="local: each role's backend in this process; ray: a Ray Data pipeline per model call")
    engine: Literal["vllm", "http"] = Field(
        default="vllm",
        description="ray: vllm (vLLM engines started by Ray Data; the role names a model folder or hub name) or http "
                    "(requests to the role's OpenAI-compatible server, openai:NAME@URL)")
    num_engines: int = Field(
        default=1, ge=1, description="ray: engines (vllm) or request workers (http) running at once; fixed, not autoscaled")
    tensor_parallel_size: int = Field(default=1, ge=1, description="ray/vllm: GPUs each engine spans (tensor parallel)")
    batch_size: int = Field(default=64, ge=1, description="ray: rows per Ray Data batch handed to an engine")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="ray/vllm: more vLLM engine arguments (e.g. {max_model_len: 4096, gpu_memory_utilization: 0.9})")
    address: str | None = Field(
        default=None, description="ray: the cluster to join (e.g. auto, ray://head:10001); null starts a local one")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: object) -> object:
        if isinstance(v, str):  # --executor ray, --executor local
            return {"kind": v.strip()}
        return v

    @model_validator(mode="after")
    def _check(self) -> "ExecutorConfig":
        if "tensor_parallel_size" in self.engine_kwargs:
            raise ValueError("engine_kwargs.tensor_parallel_size: set executor.tensor_parallel_size instead")
        return self


EXECUTOR_HELP = ("Where the model calls run: local (default) or ray, e.g. {kind: ray, engine: vllm, num_engines: 4, "
                 "tensor_parallel_size: 1, batch_size: 64, engine_kwargs: {}}; not part of the stage's fingerprint")


@lru_cache(maxsize=None)
def with_executor(cls: type[BaseModel]) -> type[BaseModel]:
    """``cls`` with an ``executor`` field (a subclass; instances are still ``cls``). Cached: one class per stage."""
    if "executor" in cls.model_fields:
        return cls
    sub = create_model(  # type: ignore[call-overload]
        cls.__name__, __base__=cls, __module__=cls.__module__,
        executor=(ExecutorConfig, Field(default_factory=ExecutorConfig, exclude=True, description=EXECUTOR_HELP)),
    )
    sub.__doc__ = cls.__doc__
    return sub


def executor_of(cfg: Any) -> ExecutorConfig:
    """The executor a stage config asks for (local when it has none)."""
    ex = getattr(cfg, "executor", None)
    return ex if isinstance(ex, ExecutorConfig) else ExecutorConfig()
