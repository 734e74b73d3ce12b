"""A guard policy: which constitution, which models, and what to do when a principle is violated.

A policy is a YAML file (``cai.yamlsafe`` rules: bounded size, no repeated keys) read into :class:`GuardConfig`::

    id: support-bot
    constitution: default
    policy: embedded            # the model that answers
    checker: embedded           # the model that checks (one batched scoring call per check)
    principles: [no-violence-uplift, no-malicious-code]   # omit for every principle
    default_action: revise
    default_threshold: 0.5
    rules:
      no-violence-uplift: {action: block, threshold: 0.6}
    prefilter: {kind: embedding, low: 0.2, high: 0.97}

``policy_hash()`` fingerprints the canonical settings together with the constitution's content hash, so two replies
carrying the same hash were checked under exactly the same rules.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.backends.spec import ModelSpec
from cai.errors import ConfigError

Action = Literal["revise", "block", "flag"]

DEFAULT_REFUSAL = "I can't help with that request."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RuleConfig(_Strict):
    """What happens when one principle is found violated."""

    action: Action = Field(default="revise", description="revise: rewrite the answer; block: replace it with the "
                           "refusal message; flag: keep it and only record the verdict")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0,
                             description="The principle counts as violated when P(violation) >= threshold")


class PrefilterConfig(_Strict):
    """A cheap first stage: a score in [0, 1] for 'this exchange is a violation'; only the band between ``low`` and
    ``high`` is escalated to the model check."""

    kind: Literal["lexicon", "embedding", "reward_model"] = Field(
        description="lexicon: the refusal lexicon (a clear refusal is safe, anything else is uncertain); embedding: "
        "nearest shipped training prompts (harmful vs benign, packaged sentence embeddings) combined with the "
        "refusal lexicon; reward_model: a reward model trained by `cai reward` (low reward = likely violation)")
    low: float = Field(default=0.2, ge=0.0, le=1.0, description="Scores below this pass without the model check")
    high: float = Field(default=0.97, ge=0.0, le=1.0,
                        description="Scores at or above this count as violated without the model check (the "
                        "strictest action of the applicable principles is taken)")
    reward_model: str | None = Field(default=None, description="reward_model: folder written by `cai reward`")
    reward_center: float = Field(default=0.0, description="reward_model: reward at which the score is 0.5")
    reward_scale: float = Field(default=1.0, gt=0.0, description="reward_model: score = sigmoid((center - reward) / scale)")
    neighbours: int = Field(default=7, ge=1, le=50, description="embedding: how many nearest training prompts vote")

    @model_validator(mode="after")
    def _check(self) -> "PrefilterConfig":
        if self.low > self.high:
            raise ValueError(f"prefilter.low ({self.low}) is above prefilter.high ({self.high}); low must be <= high")
        if self.kind == "reward_model" and not self.reward_model:
            raise ValueError("prefilter.kind is reward_model but prefilter.reward_model is not set; give the folder "
                             "written by `cai reward`")
        return self


class GuardConfig(_Strict):
    """One guard policy: constitution, models, per-principle actions and thresholds, failure behaviour."""

    id: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                    description="Policy id, sent back with every verdict (letters, digits, '-', '_', '.')")
    description: str = Field(default="", description="What this policy is for")
    constitution: str = Field(default="default", description="Constitution YAML file, or 'default' for the shipped one")
    policy: ModelSpec = Field(default_factory=ModelSpec,
                              description="Model that writes answers (apply() without an answer)")
    checker: ModelSpec = Field(default_factory=ModelSpec, description="Model that checks answers against the principles")
    reviser: ModelSpec | None = Field(default=None, description="Model that rewrites flagged answers (default: the policy model)")
    principles: list[str] | None = Field(default=None, description="Ids of the principles to check (default: all)")
    default_action: Action = Field(default="revise", description="Action for principles without a rule")
    default_threshold: float = Field(default=0.5, ge=0.0, le=1.0,
                                     description="Threshold for principles without a rule")
    rules: dict[str, RuleConfig] = Field(default_factory=dict,
                                         description="Per-principle action and threshold: {principle_id: {action, threshold}}")
    on_checker_error: Literal["fail_closed", "fail_open"] = Field(
        default="fail_closed", description="When the checker fails or abstains: fail_closed blocks the answer, "
        "fail_open lets it through (the error is recorded either way)")
    reasons: bool = Field(default=False, description="Ask the checker for a one-sentence reason for each violated "
                          "principle (one extra batched call, only when something is flagged)")
    reason_tokens: int = Field(default=48, ge=8, le=512, description="Most tokens of one reason")
    prefilter: PrefilterConfig | None = Field(default=None, description="Optional first-stage classifier band")
    recheck: bool = Field(default=True, description="Check a revision again; still violated means blocked")
    refusal_message: str = Field(default=DEFAULT_REFUSAL, min_length=1,
                                 description="The answer sent instead of a blocked one")
    max_new_tokens: int = Field(default=256, ge=1, le=32768, description="Most tokens of a generated answer or revision")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature of generation (0: greedy)")
    seed: int = Field(default=0, description="Seed of generation and revision")
    parse_retries: int = Field(default=1, ge=0, le=5, description="Checker without log-probabilities: retries of an "
                               "unparseable written verdict before it counts as an abstention")

    @field_validator("principles")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("principles is empty; omit it to check every principle")
            dup = sorted({p for p in v if v.count(p) > 1})
            if dup:
                raise ValueError(f"principle(s) listed twice: {', '.join(dup)}")
        return v

    # --- behaviour ------------------------------------------------------------------------------------------------
    def rule(self, principle_id: str) -> RuleConfig:
        """The action and threshold of one principle (its rule, else the defaults)."""
        r = self.rules.get(principle_id)
        return r if r is not None else RuleConfig(action=self.default_action, threshold=self.default_threshold)

    def check_principles(self, known: list[str]) -> None:
        """Refuse principle ids that the constitution does not have (in ``principles`` and ``rules``)."""
        unknown = [("principles", p) for p in (self.principles or []) if p not in known]
        unknown += [("rules", p) for p in self.rules if p not in known]
        if unknown:
            field, pid = unknown[0]
            raise ConfigError(
                f"guard policy '{self.id}': {field} names the principle '{pid}', which the constitution "
                f"'{self.constitution}' does not have.",
                fix=f"use one of: {', '.join(known)}.",
            )

    def canonical(self) -> str:
        """The settings as canonical JSON (sorted keys, defaults included)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def policy_hash(self, constitution_hash: str | None = None) -> str:
        """SHA-256 (16 hex digits) of the canonical settings and the constitution's content hash."""
        if constitution_hash is None:
            from cai.constitution import load_constitution

            constitution_hash = load_constitution(self.constitution).content_hash()
        digest = hashlib.sha256(f"{self.canonical()}\n{constitution_hash}".encode("utf-8")).hexdigest()
        return digest[:16]

    @classmethod
    def load(cls, path: str | Path) -> "GuardConfig":
        """Read a policy YAML file; errors name the file, the line and the field."""
        return load_guard_config(path)


def load_guard_config(path: str | Path) -> GuardConfig:
    """A :class:`GuardConfig` from YAML, with every problem located at its line."""
    from pydantic import ValidationError

    from cai.yamlsafe import CONFIG_MAX_BYTES, YamlError, load_yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Guard policy file {path} not found.", fix="check the path (see resources/guard/policy.example.yaml).")
    try:
        data, node = load_yaml(path, max_bytes=CONFIG_MAX_BYTES, what="guard policy")
    except YamlError as e:
        raise ConfigError(e.message, fix=e.fix) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of settings, found {type(data).__name__}.",
                          fix="write key: value lines (see resources/guard/policy.example.yaml).")
    try:
        cfg = GuardConfig.model_validate(data)
    except ValidationError as e:
        lines = _line_index(node)
        out = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = next((lines[loc[:k]] for k in range(len(loc), 0, -1) if loc[:k] in lines), None)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting; check its spelling (`cai guard` documents every setting)"
            where = f"{path}:{line}" if line else str(path)
            field = ".".join(str(x) for x in loc) or "(top level)"
            out.append(f"  {where}: {field}: {msg}")
        raise ConfigError(f"invalid guard policy {path}:\n" + "\n".join(out),
                          fix="correct the field(s) above; every setting is described in GuardConfig.") from None
    return cfg


def _line_index(node) -> dict[tuple, int]:
    from cai.constitution.load import _line_index as index

    return index(node) if node is not None else {}
