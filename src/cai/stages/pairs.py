"""RL-CAI data, step 1: sample K answers per prompt from the policy, to be compared by the AI labeler.

Every shard's prompts are repeated K times and sent to the backend as one sampling batch, with a seed derived from
the run seed and the shard index. Shards are fixed from the full input and written atomically, so a killed run
resumes where it stopped; ``pairs.jsonl`` and the manifest (written last) appear only when every shard is done.
"""

from __future__ import annotations

import re
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cai.backends.base import Backend, GenParams
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.config import none_as_null
from cai.data.readers import load_prompts
from cai.progress import Progress
from cai.stages.sharded import Shard, ShardedResult, run_sharded

_WS = re.compile(r"\s+")
SAMPLING_STEP = 17
"""The sampling call's step inside a shard: its seed is ``cai.seeding.shard_seed(seed, shard, 17)``."""


class PairsConfig(BaseModel):
    """Settings of ``cai pairs``; YAML keys and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field(default="redteam", description="Prompts to answer: 'redteam' (shipped) or a file path")
    prompt_split: str = Field(default="train", description="Split of the prompt file to use: train, eval or all")
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {prompt: question}")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts")
    helpful: str | None = Field(default=None, description="Also sample answers to these helpful prompts ('helpful' = shipped); null to skip")
    _helpful_none = field_validator("helpful", mode="before")(none_as_null)  # `--helpful none` means null
    helpful_limit: int | None = Field(default=None, ge=0, description="Use only the first N helpful prompts")
    k: int = Field(default=2, ge=2, le=16, description="Answers sampled per prompt (compared in consecutive pairs)")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature (must be > 0 so the K answers differ)")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling threshold")
    max_tokens: int = Field(default=160, ge=1, description="Max new tokens per answer")
    seed: int = Field(default=0, description="Seeds sampling; each shard uses a different seed derived from it")
    shard_size: int = Field(default=16, ge=1, description="Prompts per shard (K answers each): the unit of batching and resume")
    policy: ModelSpec = Field(default_factory=ModelSpec, description="Model whose answers are sampled (usually the SL-CAI model)")

    @model_validator(mode="before")
    @classmethod
    def _helpful_limit_means_shipped(cls, data: object) -> object:
        """``helpful_limit: N`` without ``helpful`` samples the first N shipped helpful prompts."""
        if isinstance(data, dict) and data.get("helpful_limit") and "helpful" not in data:
            return {**data, "helpful": "helpful"}
        return data


def _norm(text: str) -> str:
    return _WS.sub(" ", text.strip().lower())


def pairs_shard(shard: Shard, cfg: PairsConfig, policy: Backend, progress: Progress | None = None) -> list[dict]:
    """Sample K answers for every prompt of one shard in a single generate call."""
    items = shard.items
    convs = [[{"role": "user", "content": it["prompt"]}] for it in items for _ in range(cfg.k)]
    params = GenParams(max_new_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                       seed=shard.seed(SAMPLING_STEP))
    comps = policy.generate(convs, params)
    rows = []
    for j, it in enumerate(items):
        got = comps[j * cfg.k : (j + 1) * cfg.k]
        responses = [c.text for c in got]
        distinct = len({_norm(r) for r in responses})
        rows.append(
            {
                "id": it["id"],
                "prompt": it["prompt"],
                "category": it.get("category"),
                "kind": it["kind"],
                "responses": responses,
                "finish": [c.finish_reason for c in got],
                "identical": distinct == 1,
                "n_distinct": distinct,
                "empty": [not r.strip() for r in responses],
            }
        )
    if progress:
        progress.advance(len(items), sum(c.completion_tokens for c in comps))
    return rows


def run_pairs(
    cfg: PairsConfig,
    run_dir: str,
    *,
    pool: BackendPool | None = None,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume) the ``pairs`` stage into ``run_dir/pairs``. Returns the manifest."""
    red = load_prompts(cfg.prompts, split=cfg.prompt_split, column_map=cfg.column_map, limit=cfg.limit)
    helpful = []
    if cfg.helpful and cfg.helpful_limit != 0:
        helpful = load_prompts(cfg.helpful, split="train", limit=cfg.helpful_limit)
    items = [dict(r, kind="redteam") for r in red] + [dict(r, kind="helpful") for r in helpful]
    pool = pool or BackendPool()

    def finish(result: ShardedResult[Backend]) -> dict:
        rows, policy = result.rows, result.resources
        result.stage.write_output("pairs.jsonl", rows)
        return {
            "model": policy.describe(),
            "counts": {
                "prompts": len(rows),
                "redteam_prompts": sum(r["kind"] == "redteam" for r in rows),
                "helpful_prompts": sum(r["kind"] == "helpful" for r in rows),
                "answers": sum(len(r["responses"]) for r in rows),
                "k": cfg.k,
                "comparisons": sum(max(len(r["responses"]) - 1, 0) for r in rows),
                "identical_rows": sum(r["identical"] for r in rows),
                "truncated_answers": sum(f == "length" for r in rows for f in r["finish"]),
                "empty_answers": sum(sum(r["empty"]) for r in rows),
            },
            "tokens": {"generated_this_session": result.tokens, "backend_stats": policy.stats.as_dict()},
            "timing": result.timing(),
            "outputs": {"pairs": "pairs.jsonl"},
            "config": cfg.model_dump(mode="json"),
        }

    return run_sharded(
        run_dir, "pairs", items, shard_size=cfg.shard_size, seed=cfg.seed, inputs=items,
        identity={"pairs": cfg.model_dump(mode="json"), "prompt_ids": [it["id"] for it in items]},
        load=lambda: pool.get(cfg.policy),
        work=lambda shard, policy, prog: pairs_shard(shard, cfg, policy, prog),
        finish=finish, overwrite=overwrite, on_progress=on_progress, on_ready=on_ready,
    )
