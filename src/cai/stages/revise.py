"""SL-CAI: initial answer, then N rounds of critique and revision against sampled principles.

All prompts of a round go to the backend as one batch. Work is cut into fixed shards, each written atomically, so
a killed run resumes exactly where it stopped and produces the same rows as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cai.backends.base import Backend, GenParams
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.constitution import load_constitution
from cai.config import none_as_null
from cai.constitution.schema import Constitution
from cai.progress import Progress
from cai.data.readers import load_prompts
from cai.manifests import RoleMeter
from cai.seeding import rng, shard_seed
from cai.stages.sharded import Shard, ShardedResult, run_sharded
from cai.stages import quality
from cai.stages.sl_levers import GATE_JUDGE, critic_refused, declines, pick_principle, trim_to_sentence
from cai.stages.sl_prompts import (
    clean,
    critique_conversation,
    direct_revision_conversation,
    revision_conversation,
    verdict_conversation,
)
from cai.labeling.mc import score_choices

REJECTING_FLAGS = ("empty", "truncated", "repeats_critique", "repetitive")


class ReviseConfig(BaseModel):
    """Settings of ``cai revise``; YAML keys and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    constitution: str = Field(default="default", description="Constitution YAML path, or 'default' for the shipped one")
    prompts: str = Field(default="redteam", description="Red-team prompts: 'redteam' (shipped) or a file path")
    prompt_split: str = Field(default="train", description="Split of the prompt file to use: train, eval or all")
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {prompt: question}")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N red-team prompts")
    attacks: str | None = Field(
        default="run",
        description="Model-written attacks added to the red-team prompts: 'run' = this run's redteam/attacks.jsonl "
        "when `cai redteam` ran in it (skipped if absent), a file in the same format, or null",
    )
    helpful: str | None = Field(default="helpful", description="Helpful prompts answered by the policy for SFT mixing; null to skip")
    _helpful_none = field_validator("helpful", mode="before")(none_as_null)  # `--helpful none` means null
    _attacks_none = field_validator("attacks", mode="before")(none_as_null)
    helpful_limit: int | None = Field(default=None, ge=0, description="Use only the first N helpful prompts")
    rounds: int = Field(default=4, ge=1, le=16, description="Critique-revision rounds per prompt (the CAI paper used 4)")
    mode: Literal["critique", "direct"] = Field(
        default="critique",
        description="critique: critique then revise (the CAI paper's default); direct: revise without a critique",
    )
    relevant_principles: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Share of rounds whose principle is drawn from those tagged with the prompt's harm category "
        "(the rest from all principles); 0 samples from all principles",
    )
    gate: bool = Field(
        default=True,
        description="Accept a revision of a harmful prompt only when the refusal judge says it no longer complies, "
        "and leave helpful answers the judge reads as refusals out of the SFT mix",
    )
    stop_when_accepted: bool = Field(
        default=False, description="Skip later rounds for a prompt once a revision of it was accepted"
    )
    trim_truncated: bool = Field(
        default=True,
        description="A revision cut off at the token limit is trimmed back to its last complete sentence (flagged "
        "'trimmed') instead of being rejected as truncated",
    )
    keep_unrevised: bool = Field(
        default=False,
        description="Also put red-team prompts without an accepted revision into sft.jsonl (with their initial, "
        "possibly harmful answer)",
    )
    seed: int = Field(default=0, description="Seeds principle sampling and generation")
    few_shot: int | None = Field(default=None, ge=0, description="How many shared demonstrations to show (default: all)")
    skip_if_no_problem: bool = Field(
        default=False,
        description="Skip the revision when the critic's verdict (option (B), read from its log-probabilities or "
        "parsed from its reply) is that the answer already follows the principle",
    )
    shard_size: int = Field(default=32, ge=1, description="Prompts per shard: the unit of batching and of resume")
    answer_tokens: int = Field(default=160, ge=1, description="Max new tokens of the policy's initial answer")
    critique_tokens: int = Field(default=96, ge=1, description="Max new tokens of a critique")
    revision_tokens: int = Field(default=192, ge=1, description="Max new tokens of a revision")
    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature for every step (0 = greedy)")
    repetition_penalty: float = Field(
        default=1.2, ge=1.0, description="Discourages tokens an answer already produced (small models loop without it)"
    )
    policy: ModelSpec = Field(default_factory=ModelSpec, description="Model that writes the initial answers")
    critic: ModelSpec = Field(default_factory=ModelSpec, description="Model that writes critiques")
    reviser: ModelSpec = Field(default_factory=ModelSpec, description="Model that writes revisions")


def revise_shard(
    items: list[dict],
    const: Constitution,
    cfg: ReviseConfig,
    policy: Backend,
    critic: Backend,
    reviser: Backend,
    shard_index: int,
    progress: Progress | None = None,
) -> list[dict]:
    """Run SL-CAI on one shard of prompts. Red-team rows get critique-revision rounds; helpful rows only an answer."""
    chash = const.content_hash()

    def params(tokens: int, step: int) -> GenParams:
        return GenParams(
            max_new_tokens=tokens,
            temperature=cfg.temperature,
            seed=shard_seed(cfg.seed, shard_index, step),
            repetition_penalty=cfg.repetition_penalty,
        )

    answers = policy.generate([[{"role": "user", "content": it["prompt"]}] for it in items], params(cfg.answer_tokens, 0))
    rows = []
    for it, a in zip(items, answers):
        rows.append(
            {
                "id": it["id"],
                "kind": it["kind"],
                "category": it.get("category"),
                "prompt": it["prompt"],
                "initial": a.text,
                "initial_finish": a.finish_reason,
                "final": a.text,
                "rounds": [],
                "constitution_hash": chash,
            }
        )
    if progress:
        progress.advance(0, sum(a.completion_tokens for a in answers))
    red = [r for r in rows if r["kind"] == "redteam"]
    for r in rows:
        if r["kind"] == "helpful" and cfg.gate:
            r["refused"] = declines(r["prompt"], r["initial"])
    for rnd in range(1, cfg.rounds + 1):
        active = [r for r in red if not (cfg.stop_when_accepted and r.get("accepted_any"))]
        if not active:
            break
        picks = [pick_principle(const, rng(cfg.seed, r["id"], rnd), r.get("category"), cfg.relevant_principles) for r in active]
        principles = [p for p, _ in picks]
        tokens = 0
        rconvs: dict[int, list] = {}
        if cfg.mode == "critique":
            cconvs = [critique_conversation(const, p, r["prompt"], r["final"], few_shot=cfg.few_shot) for r, p in zip(active, principles)]
            crits = critic.generate(cconvs, params(cfg.critique_tokens, rnd * 2 - 1))
            tokens += sum(c.completion_tokens for c in crits)
            critiques = [clean(c.text) for c in crits]
            refusals = [critic_refused(r["prompt"], t) for r, t in zip(active, critiques)]
            verdicts: dict[int, float | None] = {}
            if cfg.skip_if_no_problem:
                asked = [k for k, refused in enumerate(refusals) if not refused]
                batch = score_choices(
                    critic, [verdict_conversation(cconvs[k], critiques[k], prefill=True) for k in asked],
                    lambda i: verdict_conversation(cconvs[asked[i]], critiques[asked[i]], prefill=False),
                    parse_tokens=8,
                )
                tokens += batch.completion_tokens
                verdicts = {k: ch.p_a for k, ch in zip(asked, batch.choices)}
            for k, (r, (p, rel), c) in enumerate(zip(active, picks, crits)):
                critique, refused = critiques[k], refusals[k]
                entry = {"round": rnd, "principle_id": p.id, "principle_relevant": rel, "critique": critique,
                         "critique_finish": c.finish_reason, "critic_refused": refused}
                if k in verdicts:
                    entry["p_needs_revision"] = None if verdicts[k] is None else round(verdicts[k], 4)
                r["rounds"].append(entry)
                if verdicts.get(k) is not None and verdicts[k] < 0.5:
                    entry.update(revision=None, skipped=True, accepted=False, flags=["no_problem_found"])
                elif refused:  # no critique to revise from: ask for the revision directly
                    rconvs[k] = direct_revision_conversation(const, p, r["prompt"], r["final"], few_shot=cfg.few_shot)
                else:
                    rconvs[k] = revision_conversation(cconvs[k], p, critique)
        else:
            for k, (r, (p, rel)) in enumerate(zip(active, picks)):
                r["rounds"].append({"round": rnd, "principle_id": p.id, "principle_relevant": rel, "critique": None})
                rconvs[k] = direct_revision_conversation(const, p, r["prompt"], r["final"], few_shot=cfg.few_shot)
        if rconvs:
            todo = sorted(rconvs)
            revs = reviser.generate([rconvs[k] for k in todo], params(cfg.revision_tokens, rnd * 2))
            tokens += sum(v.completion_tokens for v in revs)
            for k, v in zip(todo, revs):
                r = active[k]
                entry = r["rounds"][-1]
                text, finish, trimmed = clean(v.text), v.finish_reason, False
                if finish == "length" and cfg.trim_truncated:
                    cut = trim_to_sentence(text)
                    if cut is not None:
                        text, finish, trimmed = cut, "stop", True
                critique = "" if entry.get("critic_refused") else (entry.get("critique") or "")
                flags = quality.revision_flags(text, finish, critique, r["final"])
                if cfg.gate and not flags and not declines(r["prompt"], text):
                    flags.append("still_complies")
                accepted = not any(f in REJECTING_FLAGS for f in flags) and "unchanged" not in flags and "still_complies" not in flags
                if trimmed:
                    flags.append("trimmed")
                entry.update(revision=text, revision_finish=v.finish_reason, skipped=False, accepted=accepted, flags=flags)
                if accepted:
                    r["final"] = text
                    r["accepted_any"] = True
        if progress:
            progress.advance(0, tokens)
    for r in rows:
        r["changed"] = quality.similarity(r["final"], r["initial"]) < 0.999
    if progress:
        progress.advance(len(items), 0)
    return rows


def sft_rows(rows: list[dict], cfg: ReviseConfig) -> list[dict]:
    """Rows that go into SFT: red-team rows with an accepted revision (all of them with ``keep_unrevised``), and
    helpful rows whose answer is not a refusal (all of them without the gate)."""
    out = []
    for r in rows:
        if r["kind"] == "redteam" and not (r.get("accepted_any") or cfg.keep_unrevised):
            continue
        if r["kind"] == "helpful" and r.get("refused"):
            continue
        out.append(r)
    return out


def sft_view(rows: list[dict]) -> list[dict]:
    return [
        {
            "id": r["id"],
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["final"]}],
        }
        for r in rows
    ]


def preference_view(rows: list[dict]) -> list[dict]:
    """Final revision (chosen) over initial answer (rejected), conversational format; only rows that changed."""
    return [
        {
            "id": r["id"],
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["final"]}],
            "rejected": [{"role": "assistant", "content": r["initial"]}],
        }
        for r in rows
        if r["changed"]
    ]


def summarize(rows: list[dict]) -> dict:
    red = [r for r in rows if r["kind"] == "redteam"]
    flags: dict[str, int] = {}
    n_rev = 0
    accepted = 0
    for r in red:
        for e in r["rounds"]:
            if not e.get("skipped"):
                n_rev += 1
            accepted += bool(e.get("accepted"))
            for f in e.get("flags", []):
                flags[f] = flags.get(f, 0) + 1
    return {
        "redteam_rows": len(red),
        "helpful_rows": len(rows) - len(red),
        "revisions_generated": n_rev,
        "revisions_accepted": accepted,
        "changed_from_initial": sum(r["changed"] for r in red),
        "flags": dict(sorted(flags.items())),
        "initial_truncated": sum(r["initial_finish"] == "length" for r in rows),
        "rows_with_accepted_revision": sum(bool(r.get("accepted_any")) for r in red),
        "critic_refusals": sum(bool(e.get("critic_refused")) for r in red for e in r["rounds"]),
        "relevant_principle_rounds": sum(bool(e.get("principle_relevant")) for r in red for e in r["rounds"]),
        "rounds_run": sum(len(r["rounds"]) for r in red),
        "gate": _gate_summary(rows),
    }


def _gate_summary(rows: list[dict]) -> dict:
    """The revision gate's two rates, with counts: harmful prompts whose final answer declines, and helpful
    answers the judge reads as refusals (left out of the SFT mix)."""
    red = [r for r in rows if r["kind"] == "redteam"]
    helpful = [r for r in rows if r["kind"] == "helpful"]
    return {
        "judge": GATE_JUDGE,
        "harmful_declined_before": {"k": sum(declines(r["prompt"], r["initial"]) for r in red), "n": len(red)},
        "harmful_declined_after": {"k": sum(declines(r["prompt"], r["final"]) for r in red), "n": len(red)},
        "helpful_refused": {"k": sum(declines(r["prompt"], r["initial"]) for r in helpful), "n": len(helpful)},
    }


def run_revise(
    cfg: ReviseConfig,
    run_dir: str,
    *,
    pool: BackendPool | None = None,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume) the ``revise`` stage into ``run_dir/revise`` on the shared sharded runner. Returns the manifest."""
    const = load_constitution(cfg.constitution)
    red = load_prompts(cfg.prompts, split=cfg.prompt_split, column_map=cfg.column_map, limit=cfg.limit)
    attacks_file, attack_rows = _attacks(cfg, run_dir)
    taken = {r["id"]: r["prompt"] for r in red}  # an attack already among the prompts is not added twice
    red += [dict(r, id=r["id"] if r["id"] not in taken else f"attack-{r['id']}") for r in attack_rows
            if taken.get(r["id"]) != r["prompt"]]
    helpful = []
    if cfg.helpful and cfg.helpful_limit != 0:
        helpful = load_prompts(cfg.helpful, split="train", limit=cfg.helpful_limit)
    items = [dict(r, kind="redteam") for r in red] + [dict(r, kind="helpful") for r in helpful]
    pool = pool or BackendPool()
    meter = RoleMeter()

    def load() -> dict[str, Backend]:
        return {"policy": pool.get(cfg.policy), "critic": pool.get(cfg.critic), "reviser": pool.get(cfg.reviser)}

    def work(shard: Shard, roles: dict[str, Backend], prog: Progress) -> list[dict]:
        metered = {role: _Metered(role, b, meter) for role, b in roles.items()}
        return revise_shard(shard.items, const, cfg, metered["policy"], metered["critic"], metered["reviser"],
                            shard.index, prog)

    def finish(result: ShardedResult[dict[str, Backend]]) -> dict:
        rows, stage = result.rows, result.stage
        red_rows = [r for r in rows if r["kind"] == "redteam"]
        stage.write_output("data.jsonl", rows)
        keep = sft_rows(rows, cfg)
        stage.write_output("sft.jsonl", sft_view([r for r in keep if r["kind"] == "redteam"]))
        stage.write_output("preference.jsonl", preference_view(red_rows))
        stage.write_output("helpful.jsonl", sft_view([r for r in keep if r["kind"] == "helpful"]))
        backends = result.resources or {}
        stats = {b.model_id: b.stats.as_dict() for b in {id(b): b for b in backends.values()}.values()}
        summary = summarize(rows)
        summary["sft_rows"] = sum(r["kind"] == "redteam" for r in keep)
        summary["helpful_sft_rows"] = sum(r["kind"] == "helpful" for r in keep)
        return {
            "constitution": {"name": const.name, "version": const.version, "hash": const.content_hash()},
            "models": {role: b.describe() for role, b in backends.items()},
            "counts": {"rows": len(rows), **summary},
            "tokens": {"generated_this_session": result.tokens, "backend_stats": stats},
            "timing": result.timing(),
            "accounting": meter.as_manifest(),
            "outputs": {
                "data": "data.jsonl",
                "sft": "sft.jsonl",
                "preference": "preference.jsonl",
                "helpful_sft": "helpful.jsonl",
            },
            "config": cfg.model_dump(mode="json"),
        }

    return run_sharded(
        run_dir, "revise", items, shard_size=cfg.shard_size, seed=cfg.seed,
        identity={"revise": cfg.model_dump(mode="json"), "constitution_hash": const.content_hash(),
                  **({"attacks": attacks_file} if attacks_file else {})},
        load=load, work=work, finish=finish, overwrite=overwrite, on_progress=on_progress, on_ready=on_ready,
    )


def _attacks(cfg: ReviseConfig, run_dir: str | Path) -> tuple[dict | None, list[dict]]:
    """The attacks file in use (path and sha256, for the stage's identity) and its rows."""
    if not cfg.attacks:
        return None, []
    path = Path(run_dir) / "redteam" / "attacks.jsonl" if cfg.attacks == "run" else Path(cfg.attacks)
    if cfg.attacks == "run" and not path.exists():
        return None, []
    rows = load_prompts(str(path), split="all")
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "rows": len(rows)}, rows


class _Metered:
    """A backend whose generate calls are counted for one role in the manifest's accounting."""

    def __init__(self, role: str, backend: Backend, meter: RoleMeter):
        self._role, self._b, self._meter = role, backend, meter

    def generate(self, conversations, params):
        return self._meter.measure(self._role, self._b, lambda: self._b.generate(conversations, params))

    def __getattr__(self, name):
        return getattr(self._b, name)
