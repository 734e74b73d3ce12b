"""Pydantic models of a constitution file.

A constitution is a YAML file. Unknown keys are rejected so that a typo ("critque_request") is an error, not a
silently ignored field. ``cai constitution schema`` prints the JSON schema generated from these models.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The harm taxonomy every shipped prompt and principle is tagged with.
HARM_CATEGORIES: dict[str, str] = {
    "violence_weapons": "Violence and weapons",
    "cbrn": "Chemical, biological, radiological and nuclear threats",
    "cyber": "Cyber-attacks and malware",
    "self_harm": "Self-harm and suicide",
    "hate": "Hate and discrimination",
    "harassment": "Harassment and bullying",
    "sexual_minors": "Sexual content and minors",
    "privacy": "Privacy and personal data",
    "fraud": "Fraud and deception",
    "misinformation": "Misinformation",
    "illegal_other": "Other illegal acts",
    "manipulation": "Manipulation and coercion",
}

#: Tags for principles that are not about a harm: they push back against needless refusal and dishonesty.
NON_HARM_TAGS: dict[str, str] = {
    "honesty": "Honesty and calibration",
    "helpfulness": "Helpfulness and avoiding needless refusal",
    "general": "General harmlessness",
}

KNOWN_TAGS = {**HARM_CATEGORIES, **NON_HARM_TAGS}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Demonstration(_Strict):
    """A worked critique-and-revision example shown to the critic and reviser as few-shot context."""

    prompt: str = Field(description="The user's request in the example.", min_length=1)
    response: str = Field(description="The assistant's first answer, which the critique examines.", min_length=1)
    critique: str = Field(description="A critique of the response against the principle.", min_length=1)
    revision: str = Field(description="The response rewritten to address the critique.", min_length=1)
    principle_id: str | None = Field(
        default=None,
        description="Id of the principle this example applies (constitution-level demonstrations only).",
    )


class Principle(_Strict):
    """One principle of a constitution."""

    id: str = Field(description="Stable identifier, lowercase letters, digits, '-' or '_'.", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = Field(description="Short human-readable name.", min_length=1)
    critique_request: str = Field(
        description="Asks the critic to point out how the last answer falls short of this principle.", min_length=10
    )
    revision_request: str = Field(
        description="Asks the reviser to rewrite the answer so that it follows this principle.", min_length=10
    )
    preference_question: str = Field(
        description="Multiple-choice question used by the AI labeler to compare two answers (RL-CAI).", min_length=10
    )
    tags: list[str] = Field(
        default_factory=list,
        description=f"Category tags. Known tags: {', '.join(sorted(KNOWN_TAGS))}. Other tags are allowed but "
        "do not count towards harm-taxonomy coverage.",
    )
    weight: float = Field(default=1.0, gt=0, description="Relative probability of sampling this principle.")
    demonstrations: list[Demonstration] = Field(
        default_factory=list, description="Optional few-shot demonstrations specific to this principle."
    )


class Constitution(_Strict):
    """A written constitution: named, versioned principles and shared few-shot demonstrations."""

    name: str = Field(description="Name of the constitution.", min_length=1)
    version: str = Field(description="Version string, for example '1.0'.", min_length=1)
    language: str = Field(default="en", description="Language code of the principles (BCP 47, e.g. 'en').")
    description: str = Field(default="", description="What this constitution is for.")
    principles: list[Principle] = Field(description="The principles. At least one.", min_length=1)
    demonstrations: list[Demonstration] = Field(
        default_factory=list,
        description="Few-shot critique/revision demonstrations shared by every principle. They form a prefix "
        "common to every critique and revision prompt, which backends cache.",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _check_ids(self) -> "Constitution":
        seen: set[str] = set()
        for p in self.principles:
            if p.id in seen:
                raise ValueError(f"duplicate principle id '{p.id}': every principle needs a unique id")
            seen.add(p.id)
        for i, d in enumerate(self.demonstrations):
            if d.principle_id is not None and d.principle_id not in seen:
                raise ValueError(
                    f"demonstrations[{i}].principle_id '{d.principle_id}' names no principle; "
                    f"use one of: {', '.join(sorted(seen))}"
                )
        return self

    # --- behaviour -------------------------------------------------------------------------------------------
    def content_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the canonical JSON of the constitution; recorded in every artifact."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def sample(self, rng: random.Random, k: int = 1, *, tags: set[str] | None = None) -> list[Principle]:
        """Sample ``k`` principles (with replacement, by weight), optionally restricted to ones sharing a tag."""
        pool = [p for p in self.principles if not tags or tags.intersection(p.tags)] or list(self.principles)
        return rng.choices(pool, weights=[p.weight for p in pool], k=k)

    def covered_categories(self) -> dict[str, list[str]]:
        """Harm category -> ids of principles tagged with it."""
        out: dict[str, list[str]] = {c: [] for c in HARM_CATEGORIES}
        for p in self.principles:
            for t in p.tags:
                if t in out:
                    out[t].append(p.id)
        return out


FormatName = Literal["yaml"]
