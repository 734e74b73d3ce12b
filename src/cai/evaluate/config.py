"""Settings of ``cai eval``: the models, the prompt sets and benchmark files, the judges and the statistics."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.backends.spec import ModelSpec
from cai.evaluate.judges import judge_names

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BenchmarkFile(BaseModel):
    """One benchmark file to evaluate on, in its published format."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File path (CSV, JSON, JSONL)")
    kind: str = Field(default="auto", description="xstest, harmbench, advbench, strongreject, mt-bench, alpaca-eval, prompts, or auto")
    name: str | None = Field(default=None, description="Name in the report (default: the kind)")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N rows")


class EvalConfig(BaseModel):
    """Settings of ``cai eval``; YAML keys (an ``eval:`` section or flat keys) and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelSpec] = Field(
        default_factory=lambda: {"base": ModelSpec()},
        description="Models to evaluate: name -> model (embedded, runs/x/sft/model, openai:NAME@URL, fake)",
    )
    harmful: str | None = Field(default="redteam", description="Harmful prompts: 'redteam' (shipped) or a file; null to skip")
    harmful_split: str = Field(default="eval", description="Split of the harmful prompts: eval, train or all")
    benign: str | None = Field(default="helpful", description="Benign prompts: 'helpful' (shipped, with benign_risky rows) or a file; null to skip")
    benign_split: str = Field(default="eval", description="Split of the benign prompts: eval, train or all")
    benchmarks: list[BenchmarkFile] = Field(default_factory=list, description="Extra benchmark files (XSTest, HarmBench, ...)")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts of each prompt set")
    judge: str | ModelSpec = Field(default="classifier", description="Refusal judge: 'classifier' (local) or a model for an LLM judge")
    constitution: str = Field(default="default", description="Constitution whose principles the LLM and harmlessness judges use")
    helpfulness_judge: ModelSpec = Field(default_factory=ModelSpec, description="Model that compares answers pairwise")
    baseline: str | None = Field(default=None, description="Model the others are compared with (default: the first)")
    pairwise: list[Literal["helpful", "harmless"]] = Field(
        default_factory=lambda: ["helpful", "harmless"],
        description="Pairwise comparisons to run when there are 2+ models: helpful (benign prompts), harmless (harmful prompts)",
    )
    reward_model: str | None = Field(default=None, description="Reward model folder (from `cai reward`) to evaluate")
    preference_pairs: str | None = Field(default=None, description="Held-out preference pairs (our preference.jsonl or HH-RLHF) for reward accuracy")
    max_new_tokens: int = Field(default=128, ge=1, description="Max new tokens per answer")
    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature (0 = greedy)")
    seed: int = Field(default=0, description="Seeds generation, principle sampling and bootstrap")
    system_prompt: str | None = Field(default=None, description="System message given to every evaluated model")
    bootstrap_samples: int = Field(default=1000, ge=100, description="Bootstrap resamples for intervals of means and Elo")
    ngram: int = Field(default=3, ge=1, le=8, description="n of the n-gram repetition share")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge(cls, v: Any) -> Any:
        if isinstance(v, str) and v in judge_names():
            return v
        return ModelSpec.model_validate(v)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        if not v:
            raise ValueError("give at least one model")
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"model name '{name}' must use letters, digits, '.', '_' or '-' (it names files)")
        return v

    @model_validator(mode="after")
    def _checks(self) -> "EvalConfig":
        if self.baseline is not None and self.baseline not in self.models:
            raise ValueError(f"baseline '{self.baseline}' is not one of the models ({', '.join(self.models)})")
        if self.reward_model and not self.preference_pairs:
            raise ValueError("reward_model needs preference_pairs (held-out pairs to measure its accuracy on)")
        if not (self.harmful or self.benign or self.benchmarks):
            raise ValueError("nothing to evaluate: harmful, benign and benchmarks are all empty")
        return self

    def baseline_name(self) -> str:
        return self.baseline or next(iter(self.models))

