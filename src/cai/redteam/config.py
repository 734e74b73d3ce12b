"""Settings of ``cai redteam``: who attacks, who is attacked, who judges, how many attacks and of which kinds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.backends.spec import ModelSpec

Method = Literal["zero_shot", "few_shot", "multi_turn", "supervised"]
METHODS: tuple[str, ...] = ("zero_shot", "few_shot", "multi_turn", "supervised")
#: Converter names; ``translate`` takes a language after a colon (``translate:French``).
CONVERTERS: tuple[str, ...] = ("role_play", "hypothetical", "translate")


class RedteamConfig(BaseModel):
    """Settings of ``cai redteam``; YAML keys (a ``redteam:`` section or flat keys) and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    constitution: str = Field(default="default", description="Constitution whose principles' harm tags are the categories")
    categories: list[str] = Field(
        default_factory=list, description="Harm categories to attack (default: every harm tag of the constitution)"
    )
    attacker: ModelSpec = Field(default_factory=ModelSpec, description="Model that writes the attacks")
    target: ModelSpec = Field(
        default_factory=ModelSpec, description="Model under attack (any backend, e.g. a `cai guard serve` URL)"
    )
    judge: str = Field(
        default="classifier",
        description="Judge of the target's answers: 'classifier' (local refusal classifier) or a model for an LLM judge",
    )
    extra_judges: list[str] = Field(
        default_factory=list, description="More judges whose labels are recorded per case (the first judge decides)"
    )
    purpose: str | None = Field(
        default=None, description="What the target is for (e.g. 'a banking assistant'): grounds attacks and the target"
    )
    per_category: int = Field(default=8, ge=1, description="Attack cases per category, shared among the methods in turn")
    methods: list[Method] = Field(
        default_factory=lambda: ["zero_shot", "few_shot"],
        description="Methods, in order: zero_shot, few_shot, multi_turn, supervised (later methods learn from earlier ones)",
    )
    converters: list[str] = Field(
        default_factory=list,
        description="Converters stacked on every attack, in order: role_play, hypothetical, translate:LANGUAGE",
    )
    turns: int = Field(default=3, ge=2, le=8, description="User turns of a multi_turn case (the opening and follow-ups)")
    shots: int = Field(default=3, ge=1, le=8, description="Examples shown to the attacker per few_shot case")
    shipped_weight: float = Field(
        default=0.5, gt=0, le=1,
        description="Sampling weight of a shipped prompt in few-shot pools (a past success weighs its judged harm)",
    )
    seed_prompts: str = Field(default="redteam", description="Few-shot seeds: 'redteam' (shipped) or a prompt file")
    training_prompts: list[str] = Field(
        default_factory=list, description="Prompt files used for training, checked for near-duplicates (with the shipped set)"
    )
    near_duplicate_threshold: float = Field(
        default=0.9, gt=0, le=1, description="Cosine similarity (MiniLM) at or above which an attack is a near-duplicate"
    )
    cluster_threshold: float = Field(
        default=0.8, gt=0, le=1, description="Cosine similarity at or above which two successful attacks are one cluster"
    )
    on_topic_threshold: float = Field(
        default=0.3, ge=0, le=1,
        description="An attack whose best cosine similarity (MiniLM) to its category's shipped prompts is below this is "
        "off-topic: unscored, not sent (0 turns the check off)",
    )
    keep_near_duplicates: bool = Field(
        default=False, description="Also write successful near-duplicates of known prompts into attacks.jsonl"
    )
    attack_max_tokens: int = Field(
        default=48, ge=8, description="Max new tokens per attack the attacker writes (it stops at the end of a line)"
    )
    response_max_tokens: int = Field(
        default=64, ge=8, description="Max new tokens per target answer (refusals show in the first sentences)"
    )
    attacker_temperature: float = Field(default=1.0, gt=0, description="Attacker sampling temperature (> 0 for diversity)")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Attacker nucleus sampling")
    target_temperature: float = Field(default=0.0, ge=0, description="Target sampling temperature (0 = greedy)")
    supervised_steps: int = Field(default=8, ge=1, description="Fine-tuning steps of the supervised attacker round")
    self_bleu_sample: int = Field(default=200, ge=2, description="Most attacks self-BLEU is computed over (seeded sample)")
    seed: int = Field(default=0, description="Seeds sampling, few-shot draws and intervals")
    shard_size: int = Field(default=24, ge=1, description="Cases per shard (one batched call per role; resume unit)")

    @field_validator("categories")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from cai.constitution.schema import HARM_CATEGORIES

        bad = [c for c in v if c not in HARM_CATEGORIES]
        if bad:
            raise ValueError(f"unknown harm categor{'y' if len(bad) == 1 else 'ies'} {bad}; "
                             f"use some of: {', '.join(HARM_CATEGORIES)}")
        return v

    @field_validator("converters")
    @classmethod
    def _converters(cls, v: list[str]) -> list[str]:
        for c in v:
            name, _, arg = c.partition(":")
            if name not in CONVERTERS:
                raise ValueError(f"unknown converter '{c}'; use role_play, hypothetical or translate:LANGUAGE")
            if name == "translate" and not arg.strip():
                raise ValueError(f"converter '{c}' needs a language: translate:French")
            if name != "translate" and arg:
                raise ValueError(f"converter '{name}' takes no argument (got '{c}')")
        return v

    @model_validator(mode="after")
    def _methods(self) -> "RedteamConfig":
        if not self.methods:
            raise ValueError("methods is empty: give at least one of zero_shot, few_shot, multi_turn, supervised")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists a method twice: {self.methods}")
        if "supervised" in self.methods and self.methods[-1] != "supervised":
            raise ValueError("supervised must be the last method: it fine-tunes the attacker on earlier successes")
        return self
