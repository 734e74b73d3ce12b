"""Typed, versioned manifests: one pydantic model per stage, read with :func:`load_manifest`.

Every stage writes ``runs/<run>/<stage>/manifest.json`` last (:meth:`cai.runs.StageDir.finish` adds ``stage``,
``format_version``, ``finished_at`` and ``versions``). The models here describe what each stage writes; readers (the
report, CLI summaries, the pipeline) go through them instead of indexing dicts by string.

* A rate is a :class:`Figure`: value, k, n, 95% interval and the judge that produced it (with the judge's measured
  accuracy where it is known), so a reader never re-derives k from a rounded value.
* Optional ``accounting`` per role (:class:`RoleAccounting`): calls, prompt / completion / cached-prefix tokens, wall
  seconds, tokens/s and, where a price is configured, money. :func:`accounting_from_stats` builds one from a backend's
  ``stats.as_dict()``.
* Unknown keys are kept (``extra="allow"``): a manifest written by a newer toolkit, or a stage that records more,
  still loads. A manifest whose ``format_version`` is newer than this toolkit knows is refused with a clear error.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cai.errors import UserInputError

FORMAT_VERSION = 1
"""The newest manifest format this toolkit reads and writes (same number as :data:`cai.runs.FORMAT_VERSION`)."""


# --- figures --------------------------------------------------------------------------------------------------------
class Figure(BaseModel):
    """One reported number with its evidence: value, k of n (for rates), a 95% interval and the judge behind it."""

    model_config = ConfigDict(extra="allow")

    value: float | None = Field(description="The rate or mean (None when n is 0)")
    k: int | None = Field(default=None, ge=0, description="Successes counted, for a rate (value = k / n)")
    n: int | None = Field(default=None, ge=0, description="Items the figure is computed over")
    ci95: tuple[float, float] | None = Field(default=None, description="95% interval (lo, hi)")
    method: str | None = Field(default=None, description="How the interval was computed: wilson, bootstrap, ...")
    judge: str | None = Field(default=None, description="Name of the judge (or 'measurement') that produced the figure")
    judge_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="The judge's measured accuracy on a labeled set, where known"
    )

    @model_validator(mode="after")
    def _rate_consistent(self) -> "Figure":
        if self.k is not None and self.n is not None and self.k > self.n:
            raise ValueError(f"k={self.k} is larger than n={self.n}")
        return self

    @classmethod
    def rate(cls, k: int, n: int, judge: str | None = None, *, judge_accuracy: float | None = None,
             digits: int = 4) -> "Figure":
        """``k`` of ``n`` as a rate with its Wilson 95% interval."""
        from cai.evaluate.stats import wilson

        lo, hi = wilson(k, n)
        return cls(value=round(k / n, digits) if n else None, k=k, n=n, ci95=(round(lo, digits), round(hi, digits)),
                   method="wilson", judge=judge, judge_accuracy=judge_accuracy)

    @property
    def lo(self) -> float | None:
        return self.ci95[0] if self.ci95 else None

    @property
    def hi(self) -> float | None:
        return self.ci95[1] if self.ci95 else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``value`` always present, other unset fields left out, extra keys kept."""
        d = self.model_dump(mode="json", exclude_none=True)
        return {"value": self.value, **d}


def as_figure(obj: Any) -> Figure | None:
    """A figure dict (or :class:`Figure`) as a :class:`Figure`; ``None`` for anything that is not one."""
    if isinstance(obj, Figure):
        return obj
    if not isinstance(obj, dict) or "value" not in obj:
        return None
    try:
        return Figure.model_validate(obj)
    except ValidationError:
        return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def format_figure(f: dict[str, Any] | Figure | None, *, pct: bool = True, digits: int = 1, with_n: bool = True,
                  missing: str = "–") -> str:
    """A figure as plain text: ``12.5% [5.1, 27.0] n=40`` (``pct``) or ``0.412 [0.3, 0.5] n=40``; ``missing`` when
    there is no value."""
    d = f.as_dict() if isinstance(f, Figure) else f
    if not isinstance(d, dict) or not _finite(d.get("value")):
        return missing
    scale = 100 if pct else 1
    s = f"{scale * d['value']:.{digits}f}" + ("%" if pct else "")
    ci = d.get("ci95")
    if ci and len(ci) == 2 and all(_finite(c) for c in ci):
        s += f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
    if with_n and d.get("n") is not None:
        s += f" n={d['n']}"
    return s


# --- accounting -----------------------------------------------------------------------------------------------------
class RoleAccounting(BaseModel):
    """What one role (policy, critic, labeler, judge, ...) cost in a stage."""

    model_config = ConfigDict(extra="allow")

    calls: int = Field(default=0, ge=0, description="Batched calls to the backend")
    prompt_tokens: int = Field(default=0, ge=0, description="Prompt tokens sent (or run through the model)")
    completion_tokens: int = Field(default=0, ge=0, description="Tokens generated")
    cached_prefix_tokens: int = Field(default=0, ge=0, description="Prompt tokens served from a cached shared prefix")
    wall_seconds: float = Field(default=0.0, ge=0, description="Seconds spent in the backend's calls")
    tokens_per_s: float | None = Field(default=None, ge=0, description="Generated tokens per wall second")
    cost: float | None = Field(default=None, ge=0, description="Money spent, where the role has a price per million tokens")
    currency: str | None = Field(default=None, description="Currency of cost (e.g. USD)")

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def accounting_from_stats(stats: dict[str, Any] | Any, *, wall_seconds: float | None = None,
                          price_per_million: tuple[float, float] | None = None, currency: str = "USD") -> RoleAccounting:
    """A role's accounting from a backend's ``stats`` (the object or its ``as_dict()``).

    ``wall_seconds`` defaults to the backend's own ``generate_seconds``; ``price_per_million`` is (prompt, completion)
    money per million tokens, for example an OpenAI-compatible server's price.
    """
    s = stats.as_dict() if hasattr(stats, "as_dict") else dict(stats or {})
    wall = float(wall_seconds if wall_seconds is not None else s.get("generate_seconds") or 0.0)
    comp = int(s.get("completion_tokens") or 0)
    prompt = int(s.get("prompt_tokens") or 0)
    cost = None
    if price_per_million is not None:
        cost = round((prompt * price_per_million[0] + comp * price_per_million[1]) / 1e6, 6)
    return RoleAccounting(
        calls=int(s.get("calls") or 0), prompt_tokens=prompt, completion_tokens=comp,
        cached_prefix_tokens=int(s.get("cached_prefix_tokens") or 0), wall_seconds=round(wall, 3),
        tokens_per_s=round(comp / wall, 2) if wall > 0 and comp else None,
        cost=cost, currency=currency if cost is not None else None,
    )


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What a backend's numeric counters grew by between two ``stats.as_dict()`` snapshots (a backend may serve
    several roles; each role is accounted by the calls made for it)."""
    return {k: v - (before.get(k) or 0) for k, v in after.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def price_of(backend: Any) -> tuple[float, float] | None:
    """(prompt, completion) money per million tokens a backend is configured with, if any: its ``price_per_million``
    attribute or the same key in :meth:`describe` (an OpenAI-compatible server with a price)."""
    price = getattr(backend, "price_per_million", None)
    if price is None and hasattr(backend, "describe"):
        price = backend.describe().get("price_per_million")
    if isinstance(price, (list, tuple)) and len(price) == 2 and all(isinstance(x, (int, float)) for x in price):
        return float(price[0]), float(price[1])
    return None


class RoleMeter:
    """Accounts each role's backend calls in a stage: what the calls made for a role added to the backend's counters
    (one backend may serve several roles, or earlier stages), the wall time they took, and money where priced::

        meter = RoleMeter()
        comps = meter.measure("policy", backend, lambda: backend.generate(convs, params))
        manifest["accounting"] = meter.as_manifest()
    """

    def __init__(self) -> None:
        self._roles: dict[str, dict[str, Any]] = {}
        self._price: dict[str, tuple[float, float] | None] = {}

    def measure(self, role: str, backend: Any, fn: Any) -> Any:
        """Run ``fn()`` and add what it cost to ``role``. ``backend`` None (a judge without a model) records nothing."""
        if backend is None:
            return fn()
        before = backend.stats.as_dict()
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            delta = stats_delta(before, backend.stats.as_dict())
            delta["_seconds"] = time.perf_counter() - t0
            prev = self._roles.get(role, {})
            self._roles[role] = {k: v + prev.get(k, 0) for k, v in delta.items()}
            self._price[role] = price_of(backend)

    def accounting(self) -> dict[str, RoleAccounting]:
        return {role: accounting_from_stats(d, wall_seconds=d["_seconds"], price_per_million=self._price.get(role))
                for role, d in self._roles.items()}

    def as_manifest(self) -> dict[str, dict[str, Any]]:
        """The manifest's ``accounting`` section."""
        return {role: a.model_dump(mode="json", exclude_none=True) for role, a in self.accounting().items()}


# --- the common part ------------------------------------------------------------------------------------------------
class ConstitutionRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    version: str | int | None = None
    hash: str | None = None


class StageManifest(BaseModel):
    """What every stage's manifest holds; a stage's model adds its own sections."""

    model_config = ConfigDict(extra="allow")
    STAGE: ClassVar[str] = ""
    VERSION: ClassVar[int] = FORMAT_VERSION
    DEFAULT_ROLE: ClassVar[str] = "model"

    stage: str = Field(description="Stage name (the folder under the run)")
    format_version: int = Field(default=FORMAT_VERSION, ge=1, description="Manifest format version")
    finished_at: str | None = Field(default=None, description="UTC time the manifest was written")
    versions: dict[str, Any] = Field(default_factory=dict, description="Versions of Python and key packages")
    constitution: ConstitutionRef | None = Field(default=None, description="Constitution used (name, version, hash)")
    config: dict[str, Any] = Field(default_factory=dict, description="The stage's config, as run")
    outputs: dict[str, Any] = Field(default_factory=dict, description="Output files, relative to the stage folder")
    timing: dict[str, Any] = Field(default_factory=dict, description="Seconds and rates of this session")
    tokens: dict[str, Any] | None = Field(default=None, description="Generated tokens and the backends' raw counters")
    accounting: dict[str, RoleAccounting] | None = Field(default=None, description="Per-role calls, tokens, time, money")

    def role_accounting(self) -> dict[str, RoleAccounting]:
        """Per-role accounting; for a manifest without it, what its raw backend counters (``tokens.backend_stats``)
        say, per backend (role :attr:`DEFAULT_ROLE` when the stage has one backend)."""
        if self.accounting is not None:
            return dict(self.accounting)
        raw = (self.tokens or {}).get("backend_stats")
        if not isinstance(raw, dict) or not raw:
            return {}
        if all(isinstance(v, dict) for v in raw.values()):
            return {f"backend {k}": accounting_from_stats(v) for k, v in raw.items()}
        return {self.DEFAULT_ROLE: accounting_from_stats(raw)}

    @model_validator(mode="after")
    def _version(self) -> "StageManifest":
        if self.format_version > self.VERSION:
            raise ValueError(f"format_version {self.format_version} is newer than this toolkit reads ({self.VERSION})")
        if self.STAGE and self.stage != self.STAGE:
            raise ValueError(f"stage is '{self.stage}', expected '{self.STAGE}'")
        return self


class ReviseManifest(StageManifest):
    STAGE: ClassVar[str] = "revise"
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="role -> backend description")
    counts: dict[str, Any] = Field(default_factory=dict, description="Rows, revisions generated/accepted, flags")


class PairsManifest(StageManifest):
    STAGE: ClassVar[str] = "pairs"
    DEFAULT_ROLE: ClassVar[str] = "policy"
    model: dict[str, Any] | None = Field(default=None, description="The policy that wrote the answers")
    counts: dict[str, Any] = Field(default_factory=dict, description="Prompts, answers, comparisons, identical rows")


class TrainingManifest(StageManifest):
    """Common part of sft, reward, dpo and rl."""

    data: dict[str, Any] = Field(default_factory=dict, description="Training data: files, digests, rows")
    training: dict[str, Any] = Field(default_factory=dict, description="Steps, device, precision, seconds")
    params: dict[str, Any] | None = Field(default=None, description="Total and trainable parameters")
    lora: dict[str, Any] | None = Field(default=None, description="LoRA settings (merged into the saved model)")


class SftManifest(TrainingManifest):
    STAGE: ClassVar[str] = "sft"
    base_model: dict[str, Any] | None = None


class RewardManifest(TrainingManifest):
    STAGE: ClassVar[str] = "reward"
    base_model: dict[str, Any] | None = None
    loss: dict[str, Any] | None = None
    eval: dict[str, Any] | None = Field(default=None, description="Held-out accuracy, margin, ECE (before and after)")


class DpoManifest(TrainingManifest):
    STAGE: ClassVar[str] = "dpo"
    policy: dict[str, Any] | None = None
    reference: str | None = None
    dpo: dict[str, Any] | None = None


class RlManifest(TrainingManifest):
    STAGE: ClassVar[str] = "rl"
    algorithm: str | None = None
    policy: dict[str, Any] | None = None
    reward_model: str | None = None
    reference: str | None = None
    rl: dict[str, Any] | None = Field(default=None, description="beta, generations, KL definition, refusal classifier")
    reward: dict[str, Any] | None = Field(
        default=None, description="Reward source (model or constitution); for the labeler: its calls, ratings, "
        "seconds and abstentions in total and per step"
    )


class OrpoManifest(TrainingManifest):
    STAGE: ClassVar[str] = "orpo"
    policy: dict[str, Any] | None = None
    orpo: dict[str, Any] | None = Field(default=None, description="beta, trainer, last logged metrics")


class BestOfNManifest(StageManifest):
    STAGE: ClassVar[str] = "bestofn"
    policy: dict[str, Any] | None = None
    reward_model: str | None = None
    n: int | None = None
    summary: dict[str, Any] | None = None
    refusal_classifier: str | None = None


class LabelStats(BaseModel):
    """The label statistics: whether the AI labels carry signal."""

    model_config = ConfigDict(extra="allow")

    n: int = Field(ge=0, description="Comparisons")
    labeled: int = Field(ge=0, description="Comparisons with a label (not abstentions)")
    abstentions: int = Field(default=0, ge=0, description="Comparisons without a usable answer")
    skipped_identical: int = Field(default=0, ge=0, description="Identical answer pairs skipped before labeling")
    position_consistency: Figure | None = Field(default=None, description="Both orders prefer the same answer, of labeled")
    kept: Figure | None = Field(default=None, description="Labels that passed min_confidence, of all comparisons")
    preferring_position_a: Figure | None = Field(default=None, description="Per-order answers preferring (A), of 2 x labeled")
    choosing_first_answer: Figure | None = Field(default=None, description="Labels choosing the pair's first answer, of labeled")
    kept_after_filter: int = Field(default=0, ge=0, description="Labels written to preference.jsonl")
    min_confidence: float | None = None
    mean_confidence: float | None = Field(default=None, description="Mean |p - 0.5| * 2 of labeled comparisons")
    position_bias: float | None = Field(default=None, description="Mean |p_order1 - p_order2|")
    confidence_histogram: list[int] | None = None
    confidence_histogram_edges: list[float] | None = None
    warnings: list[str] = Field(default_factory=list)


class LabelManifest(StageManifest):
    STAGE: ClassVar[str] = "label"
    DEFAULT_ROLE: ClassVar[str] = "labeler"
    model: dict[str, Any] | None = Field(default=None, description="The labeler's backend description")
    mode: str | None = None
    input: dict[str, Any] | None = None
    labels: LabelStats | None = None
    warnings: list[str] = Field(default_factory=list)


class EvalManifest(StageManifest):
    STAGE: ClassVar[str] = "eval"
    models: dict[str, Any] = Field(default_factory=dict, description="Evaluated model name -> model spec")
    backends: dict[str, Any] = Field(default_factory=dict)
    judge: dict[str, Any] | None = Field(default=None, description="The refusal judge's description")
    pairwise_judge: dict[str, Any] | None = None
    counts: dict[str, Any] = Field(default_factory=dict)
    figures: dict[str, dict[str, Figure]] = Field(
        default_factory=dict, description="Model -> headline rates (harmful compliance, over-refusal), as in metrics.json"
    )


class RedteamResults(BaseModel):
    """The red-team figures (see :mod:`cai.redteam.metrics`)."""

    model_config = ConfigDict(extra="allow")

    counts: dict[str, int] = Field(default_factory=dict, description="Cases by status, successes, near-duplicates")
    success: Figure | None = Field(default=None, description="Successful attacks of judged cases (status ok)")
    by_category: dict[str, Figure] = Field(default_factory=dict, description="Harm category -> success rate")
    by_method: dict[str, Figure] = Field(default_factory=dict, description="Method -> success rate")
    attacker_refusal: Figure | None = Field(default=None, description="Cases the attacker refused to write, of all")
    error_rate: Figure | None = Field(default=None, description="Cases that ended in an error, of all")
    diversity: dict[str, Any] = Field(default_factory=dict, description="Self-BLEU and embedding distance of attacks")
    unique_successes: dict[str, Any] = Field(default_factory=dict, description="Clusters of successful attacks")
    near_duplicates: dict[str, Any] = Field(default_factory=dict, description="Threshold and attacks flagged")
    judge: dict[str, Any] = Field(default_factory=dict, description="The deciding judge and its measured quality")


class RedteamManifest(StageManifest):
    STAGE: ClassVar[str] = "redteam"
    DEFAULT_ROLE: ClassVar[str] = "attacker"
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="attacker, target -> backend description")
    judges: list[dict[str, Any]] = Field(default_factory=list, description="Judges' descriptions, the deciding one first")
    purpose: str | None = Field(default=None, description="What the target is for, as given")
    counts: dict[str, Any] = Field(default_factory=dict, description="Cases by status, successes, attacks written")
    results: RedteamResults | None = Field(default=None, description="Success rates, diversity, clusters, judge quality")


MANIFESTS: dict[str, type[StageManifest]] = {
    m.STAGE: m for m in (ReviseManifest, PairsManifest, LabelManifest, SftManifest, RewardManifest, DpoManifest,
                         RlManifest, OrpoManifest, BestOfNManifest, EvalManifest, RedteamManifest)
}


def load_manifest(stage: str, source: str | Path | dict[str, Any]) -> StageManifest:
    """The typed manifest of ``stage`` from a file (or a stage folder holding ``manifest.json``) or a dict.

    Raises :class:`~cai.errors.UserInputError` naming the file and the field when it is unreadable or invalid.
    """
    model = MANIFESTS.get(stage)
    if model is None:
        raise UserInputError(f"No manifest model for stage '{stage}'.", fix=f"use one of {', '.join(MANIFESTS)}.")
    where = "manifest"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "manifest.json"
        where = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserInputError(f"{where} does not exist: the {stage} stage has not finished.",
                                 fix=f"run (or finish) the {stage} stage first.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserInputError(f"{where} could not be read as JSON ({e}).",
                                 fix=f"rerun the {stage} stage with --overwrite to write it again.") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{where} is not a JSON object.", fix=f"rerun the {stage} stage with --overwrite.")
    data = {"stage": stage, **data}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()[:5])
        raise UserInputError(f"{where} is not a valid {stage} manifest: {problems}.",
                             fix=f"rerun the {stage} stage with --overwrite, or use a toolkit that wrote this format.") from None
