"""RL-CAI data, step 1: sample K answers per prompt from the policy, to be compared by the AI labeler.

Every shard's prompts are repeated K times and sent to the backend as one sampling batch, with a seed derived from
the run seed and the shard index. Shards are fixed from the full input and written atomically, so a killed run
resumes where it stopped; ``pairs.jsonl`` and the manifest (written last) appear only when every shard is done.
"""

from __future__ import annotations

import re
import time
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import Backend, GenParams
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.data.readers import load_prompts
from cai.runs import StageDir
from cai.progress import Progress

_WS = re.compile(r"\s+")


class PairsConfig(BaseModel):
    """Settings of ``cai pairs``; YAML keys and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field(default="redteam", description="Prompts to answer: 'redteam' (shipped) or a file path")
    prompt_split: str = Field(default="train", description="Split of the prompt file to use: train, eval or all")
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {prompt: question}")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts")
    helpful: str | None = Field(default=None, description="Also sample answers to these helpful prompts ('helpful' = shipped); null to skip")
    helpful_limit: int | None = Field(default=None, ge=0, description="Use only the first N helpful prompts")
    k: int = Field(default=2, ge=2, le=16, description="Answers sampled per prompt (compared in consecutive pairs)")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature (must be > 0 so the K answers differ)")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling threshold")
    max_tokens: int = Field(default=160, ge=1, description="Max new tokens per answer")
    seed: int = Field(default=0, description="Seeds sampling; each shard uses a different seed derived from it")
    shard_size: int = Field(default=16, ge=1, description="Prompts per shard (K answers each): the unit of batching and resume")
    policy: ModelSpec = Field(default_factory=ModelSpec, description="Model whose answers are sampled (usually the SL-CAI model)")


def _norm(text: str) -> str:
    return _WS.sub(" ", text.strip().lower())


def shard_seed(cfg: PairsConfig, shard_index: int) -> int:
    return cfg.seed * 7919 + shard_index * 101 + 17


def pairs_shard(items: list[dict], cfg: PairsConfig, policy: Backend, shard_index: int, progress: Progress | None = None) -> list[dict]:
    """Sample K answers for every prompt of one shard in a single generate call."""
    convs = [[{"role": "user", "content": it["prompt"]}] for it in items for _ in range(cfg.k)]
    params = GenParams(max_new_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=shard_seed(cfg, shard_index))
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
    stage = StageDir(run_dir, "pairs")
    pool = pool or BackendPool()
    if overwrite or not stage.is_complete():
        pool.get(cfg.policy)  # a model that fails to load must not leave a half-started stage behind
    state = stage.begin({"pairs": cfg.model_dump(mode="json"), "prompt_ids": [it["id"] for it in items]}, overwrite=overwrite)
    if state == "complete":
        return stage.manifest()
    policy = pool.get(cfg.policy)
    shards = [items[i : i + cfg.shard_size] for i in range(0, len(items), cfg.shard_size)]
    already = sum(len(s) for i, s in enumerate(shards) if stage.shard_done(i))
    prog = Progress(total=len(items), done=already, callback=on_progress)
    prog.extra["resumed_rows"] = already
    if on_ready:
        on_ready(prog)
    t0 = time.perf_counter()
    for i, shard in enumerate(shards):
        if stage.shard_done(i):
            continue
        stage.write_shard(i, pairs_shard(shard, cfg, policy, i, prog))
    elapsed = time.perf_counter() - t0
    rows = stage.read_shards(len(shards))
    stage.write_output("pairs.jsonl", rows)
    n_answers = sum(len(r["responses"]) for r in rows)
    manifest = {
        "model": policy.describe(),
        "counts": {
            "prompts": len(rows),
            "redteam_prompts": sum(r["kind"] == "redteam" for r in rows),
            "helpful_prompts": sum(r["kind"] == "helpful" for r in rows),
            "answers": n_answers,
            "k": cfg.k,
            "comparisons": sum(max(len(r["responses"]) - 1, 0) for r in rows),
            "identical_rows": sum(r["identical"] for r in rows),
            "truncated_answers": sum(f == "length" for r in rows for f in r["finish"]),
            "empty_answers": sum(sum(r["empty"]) for r in rows),
        },
        "tokens": {"generated_this_session": prog.tokens, "backend_stats": policy.stats.as_dict()},
        "timing": {
            "seconds_this_session": round(elapsed, 2),
            "rows_this_session": len(rows) - already,
            "generated_tokens_per_s": round(prog.tokens / elapsed, 2) if elapsed > 0 else None,
            "resumed_rows": already,
        },
        "outputs": {"pairs": "pairs.jsonl"},
        "config": cfg.model_dump(mode="json"),
    }
    stage.finish(manifest)
    return manifest
