"""Best-of-N sampling: a no-training baseline for RL against the same reward model.

For every prompt the policy samples ``n`` answers (all ``n`` copies of every prompt of a shard go to the backend in
one ``generate`` call), the reward model scores each, and the highest-scoring answer is kept. Comparing the mean
reward of the chosen answers with the mean reward of a random candidate (the mean over all candidates, i.e. its
expected value, and one seeded draw) shows how much the reward model can buy by selection alone; ``cai rl`` should
beat best-of-N at a similar KL to be worth its training. Refusal rate, length and 3-gram repetition of the chosen
answers vs all candidates show whether selection favours refusing or boilerplate.

Output ``runs/<run>/bestofn/``: ``answers.jsonl`` (one row per prompt: every candidate with its reward, the index and
text of the chosen one), ``shards/`` (the resume unit), ``manifest.json`` last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from cai.backends.base import GenParams
from cai.backends.registry import BackendPool
from cai.backends.spec import ModelSpec
from cai.data.readers import load_prompts
from cai.errors import UserInputError
from cai.progress import Progress
from cai.seeding import rng
from cai.stages.sharded import Shard, ShardedResult, run_sharded
from cai.stages.reward import reward_model_of
from cai.train.rl_metrics import completion_metrics, refusal_classifier


class BestOfNConfig(BaseModel):
    """Settings of ``cai bestofn``; YAML keys (a ``bestofn:`` section or flat keys) and CLI flags use these names."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=4, ge=1, description="Answers sampled per prompt; the reward model keeps the best")
    policy: ModelSpec | None = Field(
        default=None, description="Model that samples: null = this run's sft/model if present, else 'embedded'"
    )
    reward_model: str | None = Field(
        default=None, description="Reward model folder: null = this run's reward/model (written by `cai reward`)"
    )
    prompts: str = Field(default="redteam", description="Prompts: 'redteam' or 'helpful' (shipped) or a file path")
    prompt_split: str = Field(default="eval", description="Split of the prompt file: eval (default), train or all")
    column_map: dict[str, str] = Field(default_factory=dict, description="Our field -> your column, e.g. {prompt: question}")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts")
    max_new_tokens: int = Field(default=160, ge=1, description="Max new tokens per sampled answer")
    temperature: float = Field(default=0.8, gt=0, description="Sampling temperature (must be > 0 to get distinct answers)")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling")
    seed: int = Field(default=0, description="Seeds sampling and the random-candidate draw")
    shard_size: int = Field(default=8, ge=1, description="Prompts per shard (n x this answers per generate call; resume unit)")
    reward_batch_size: int = Field(default=8, ge=1, description="Sequences per reward-model forward pass")
    device: str = Field(default="auto", description="Reward model device: auto, cpu or cuda")


def resolve_policy_spec(cfg: BestOfNConfig, run_dir: Path) -> tuple[ModelSpec, str]:
    """The sampling policy: ``cfg.policy``, else the run's default (:func:`cai.registry.policy_default`)."""
    if cfg.policy is not None:
        return cfg.policy, "config"
    from cai.registry import policy_default

    sft_model, source = policy_default(run_dir)
    return (ModelSpec(model=str(sft_model)) if sft_model is not None else ModelSpec()), source


def best_of_n_shard(shard: Shard, cfg: BestOfNConfig, policy: Any, scorer: Any,
                    progress: Progress | None = None) -> list[dict]:
    """Sample ``cfg.n`` answers per prompt in one generate call, score them, keep the best (first on ties)."""
    items = shard.items
    convs = [[{"role": "user", "content": it["prompt"]}] for it in items for _ in range(cfg.n)]
    params = GenParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                       seed=shard.seed())
    comps = policy.generate(convs, params)
    texts = [c.text for c in comps]
    rewards = scorer.score([c[0]["content"] for c in convs], texts, batch_size=cfg.reward_batch_size)
    rows = []
    for k, it in enumerate(items):
        cand = []
        for j in range(cfg.n):
            c = comps[k * cfg.n + j]
            cand.append({"text": c.text, "reward": round(float(rewards[k * cfg.n + j]), 6),
                         "finish_reason": c.finish_reason, "tokens": c.completion_tokens})
        best = max(range(cfg.n), key=lambda j: (cand[j]["reward"], -j))
        rnd = rng(cfg.seed, it["id"]).randrange(cfg.n)
        rows.append({
            "id": it["id"],
            "prompt": it["prompt"],
            "category": it.get("category"),
            "candidates": cand,
            "chosen_index": best,
            "chosen": cand[best]["text"],
            "chosen_reward": cand[best]["reward"],
            "random_index": rnd,
            "mean_reward": round(sum(c["reward"] for c in cand) / cfg.n, 6),
        })
    if progress:
        progress.advance(len(items), sum(c.completion_tokens for c in comps))
    return rows


def summarize(rows: list[dict]) -> dict[str, Any]:
    n = len(rows)
    prompts = [r["prompt"] for r in rows]
    chosen = [r["chosen"] for r in rows]
    all_p = [r["prompt"] for r in rows for _ in r["candidates"]]
    all_t = [c["text"] for r in rows for c in r["candidates"]]
    best = sum(r["chosen_reward"] for r in rows) / n
    expected_random = sum(r["mean_reward"] for r in rows) / n
    drawn = sum(r["candidates"][r["random_index"]]["reward"] for r in rows) / n
    return {
        "prompts": n,
        "mean_best_reward": round(best, 6),
        "mean_random_candidate_reward": round(expected_random, 6),
        "mean_drawn_candidate_reward": round(drawn, 6),
        "best_minus_random": round(best - expected_random, 6),
        "mean_worst_reward": round(sum(min(c["reward"] for c in r["candidates"]) for r in rows) / n, 6),
        "chosen": completion_metrics(prompts, chosen),
        "all_candidates": completion_metrics(all_p, all_t),
    }


def run_bestofn(
    cfg: BestOfNConfig,
    run_dir: str | Path,
    *,
    pool: BackendPool | None = None,
    scorer: Any = None,
    overwrite: bool = False,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume) ``cai bestofn`` into ``run_dir/bestofn``. Returns the manifest.

    ``scorer`` (anything with ``score(prompts, answers, batch_size=...)``) replaces the reward model (tests).
    ``on_progress(prompts_done, prompts_total, tokens_generated_this_session)`` is called after each shard;
    ``on_ready`` gets the stage's :class:`~cai.progress.Progress` once, before the first shard.
    """
    run_dir = Path(run_dir)
    spec, policy_source = resolve_policy_spec(cfg, run_dir)
    reward_path = None if scorer is not None else reward_model_of(cfg.reward_model, run_dir)
    items = load_prompts(cfg.prompts, split=cfg.prompt_split, column_map=cfg.column_map, limit=cfg.limit)
    if not items:
        raise UserInputError(f"prompts: '{cfg.prompts}' (split {cfg.prompt_split}) has no prompts.",
                             fix="check the file, prompt_split (train, eval or all) and limit.")
    items = [dict(r, id=str(r.get("id", i))) for i, r in enumerate(items)]

    def load() -> tuple[Any, Any]:
        policy = (pool or BackendPool()).get(spec)
        if scorer is not None:
            return policy, scorer
        from cai.stages.reward import RewardScorer

        return policy, RewardScorer(reward_path, device=cfg.device, batch_size=cfg.reward_batch_size)

    def counts(p: Progress) -> None:
        if on_progress is not None:
            on_progress(p.done, p.total, p.tokens)

    def finish(result: ShardedResult[tuple[Any, Any]]) -> dict:
        rows = result.rows
        result.stage.write_output("answers.jsonl", rows)
        _, refusal_name = refusal_classifier()
        return {
            "policy": {"model": spec.label(), "source": policy_source},
            "reward_model": str(reward_path) if reward_path else "custom scorer",
            "n": cfg.n,
            "summary": summarize(rows),
            "refusal_classifier": refusal_name,
            "timing": {"seconds_this_session": round(result.seconds, 2), "resumed_prompts": result.resumed,
                       "answers_this_session": (len(items) - result.resumed) * cfg.n},
            "outputs": {"answers": "answers.jsonl"},
            "config": cfg.model_dump(mode="json"),
        }

    return run_sharded(
        run_dir, "bestofn", items, shard_size=cfg.shard_size, seed=cfg.seed, inputs=items,
        identity={"bestofn": cfg.model_dump(mode="json"), "policy": spec.label(),
                  "reward_model": str(reward_path) if reward_path else "custom scorer"},
        load=load, load_when_done=False,
        work=lambda shard, res, prog: best_of_n_shard(shard, cfg, res[0], res[1], prog),
        finish=finish, overwrite=overwrite, on_progress=counts, on_ready=on_ready,
    )
