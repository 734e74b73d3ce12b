"""Settings of ``cai constitution collect``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CollectConfig(BaseModel):
    """Collective CAI: a draft constitution from statements the public voted on, kept by cross-group consensus."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="Folder of a Polis export (comments.csv + votes.csv or participants-votes.csv) or of "
                                   "statements.csv + votes.csv; or 'synthetic' for a built-in vote matrix with planted groups.")
    out: str = Field(default="runs/collect", description="Output folder: constitution.yaml, report.md, report.json, CSV tables.")
    rule: Literal["gac", "threshold"] = Field(default="gac", description="gac: keep statements whose group-aware consensus "
                                              "(geometric mean over groups) reaches the threshold; threshold: keep those "
                                              "that every group agrees with at the threshold share.")
    threshold: float = Field(default=0.6, gt=0, lt=1, description="Agreement a kept statement needs (see rule).")
    min_group_votes: int = Field(default=3, ge=1, description="Threshold rule: each group must cast at least this many votes on a statement.")
    min_votes_per_participant: int = Field(default=7, ge=1, description="Drop participants who voted on fewer statements (Polis uses 7).")
    min_votes_per_statement: int = Field(default=3, ge=1, description="Drop statements with fewer votes.")
    include_unmoderated: bool = Field(default=True, description="Keep statements not yet moderated (moderated = 0); moderated-out (-1) ones are always dropped.")
    max_groups: int = Field(default=5, ge=2, description="Try k = 2 .. max_groups opinion groups.")
    min_group_size: int = Field(default=3, ge=1, description="A grouping is accepted only when every group has this many participants.")
    components: int = Field(default=2, ge=1, le=10, description="PCA components the participants are clustered in.")
    stability_seeds: int = Field(default=5, ge=0, le=50, description="Extra seeds the grouping is repeated with to measure its stability.")
    seed: int = Field(default=0, description="Seed of k-means (and of the synthetic votes).")
    top: int = Field(default=10, ge=1, description="Consensus and divisive statements listed in the report.")
    max_principles: int = Field(default=12, ge=1, description="Most principles in the draft constitution (the highest-consensus kept statements).")
    rewrite: Literal["model", "verbatim"] = Field(default="verbatim", description="model: a model rewrites each kept statement as "
                                                 "'Choose the response that ...'; verbatim: the principle quotes the statement (no model).")
    rewriter: str = Field(default="embedded", description="Model spec of the rewriter (rewrite: model).")
    name: str = Field(default="collective", description="Name written into the constitution.")
    synthetic_participants: int = Field(default=120, ge=10, le=20000, description="Participants of the synthetic vote matrix.")
