"""Settings of ``cai constitution infer``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class InferConfig(BaseModel):
    """Inverse CAI: infer a constitution that explains a set of pairwise preferences."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="Preference pairs: a CSV or JSONL file (ICAI, TRL or HH-RLHF), or 'synthetic' "
                                   "for the built-in set labeled by three known rules.")
    format: Literal["auto", "icai", "trl", "hh"] = Field(default="auto", description="Format of the input; auto reads it from the columns.")
    out: str = Field(default="runs/infer", description="Output folder: constitution.yaml, report.md, report.json, the call cache.")
    proposer: str = Field(default="embedded", description="Model that proposes principles (a model spec: embedded, a folder, openai:NAME@URL, fake).")
    labeler: str = Field(default="embedded", description="Model that tests principles by answering comparison questions (a model spec).")
    synthetic_pairs: int = Field(default=48, ge=12, le=2000, description="Pairs in the built-in synthetic set (input 'synthetic').")
    max_pairs: int | None = Field(default=None, ge=4, description="Use at most this many pairs of the input (after shuffling); none: all.")
    train_fraction: float = Field(default=0.5, gt=0, lt=1, description="Share of pairs used to propose and test candidates.")
    val_fraction: float = Field(default=0.25, gt=0, lt=1, description="Share used to select the constitution greedily; the rest is the held-out test split of the report.")
    propose_pairs: int = Field(default=24, ge=1, description="Propose from at most this many training pairs.")
    proposals_per_pair: int = Field(default=1, ge=1, le=16, description="Candidate principles sampled per pair (1: greedy).")
    propose_temperature: float = Field(default=0.8, ge=0, description="Sampling temperature of the proposer when it gives more than one candidate per pair.")
    propose_tokens: int = Field(default=24, ge=4, le=200, description="Most tokens of one proposed principle.")
    cluster_threshold: float = Field(default=0.8, gt=0, le=1, description="Cosine similarity at or above which two candidates count as the same principle.")
    max_candidates: int = Field(default=10, ge=1, description="Test at most this many candidate clusters (the most often proposed).")
    relevance_margin: float = Field(default=0.1, ge=0, lt=1, description="A principle votes on a pair only when |p - 0.5| * 2 reaches this; otherwise it abstains.")
    min_relevance: float = Field(default=0.1, ge=0, le=1, description="Keep a candidate only if it votes on at least this share of training pairs.")
    max_principles: int = Field(default=5, ge=1, description="Most principles in the inferred constitution.")
    name: str = Field(default="inferred", description="Name written into the constitution.")
    seed: int = Field(default=0, description="Seed of the split, the proposer's samples and the bootstrap.")
    batch_size: int = Field(default=32, ge=1, description="Model requests sent per batch (each batch is cached as soon as it returns).")
    bootstrap: int = Field(default=1000, ge=100, description="Bootstrap resamples of the 95% intervals.")

    @model_validator(mode="after")
    def _fractions(self) -> "InferConfig":
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError(f"train_fraction ({self.train_fraction}) + val_fraction ({self.val_fraction}) must be "
                             "below 1, to leave a held-out test split")
        return self
