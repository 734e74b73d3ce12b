"""What a guard check and a guarded answer return (shared by the library, the server and the audit log)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Action = Literal["revise", "block", "flag"]
Outcome = Literal["pass", "revised", "blocked", "flagged"]


@dataclass
class PrincipleVerdict:
    """The checker's verdict on one principle."""

    principle_id: str
    violated: bool
    #: P(violation) in [0, 1]; None when the checker abstained (no log-probabilities and no parseable answer).
    score: float | None
    threshold: float
    action: Action
    #: How the score was obtained: "logprob", "parsed", "classifier", or None when abstained.
    method: str | None
    reason: str | None = None


@dataclass
class CheckResult:
    """All verdicts of one check of a conversation and its answer."""

    verdicts: list[PrincipleVerdict]
    #: Which checker decided: "model", or "classifier" when the first stage was certain enough.
    decided_by: str = "model"
    model_calls: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: Set when the checker failed (down, timed out); the guard then fails open or closed per its policy.
    error: str | None = None

    @property
    def flagged(self) -> list[PrincipleVerdict]:
        return [v for v in self.verdicts if v.violated]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GuardResult:
    """The answer a guarded model returns, the action taken and how it was reached."""

    outcome: Outcome
    answer: str
    original: str
    check: CheckResult
    policy_id: str
    policy_hash: str
    #: Every step in order: {"step": "generate"|"check"|"revise"|"recheck"|"block", ...}.
    trace: list[dict] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    model_calls: int = 0

    def as_dict(self) -> dict:
        return asdict(self)
