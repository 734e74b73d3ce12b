"""``cai eval``: harmlessness, over-refusal, helpfulness, reward-model accuracy and reward-hacking signals per model.

Every model answers every prompt (harmful, benign and any benchmark files) in one batched ``generate`` call. A refusal
judge (the local classifier by default, or an LLM judge) labels each answer; a pairwise judge compares models with
each other in both orders (win rate against the baseline, Elo across all models); an optional reward model is scored
on held-out preference pairs. Every figure carries its n, a 95% interval (Wilson for rates, bootstrap for means) and
the name of the judge that produced it.

Outputs in ``runs/<run>/eval/``: ``answers.jsonl`` (one row per model and prompt with the verdict), ``pairwise.jsonl``,
``metrics.json``, ``summary.md`` and ``manifest.json`` (last; its headline rates as figures with the refusal judge's
measured accuracy, and per-role accounting). Each model's answers with their verdicts (one shard per model) and each
pair's comparisons are written atomically when done, so a rerun resumes where a killed one stopped.

The parts: :mod:`cai.evaluate.config` (settings), :mod:`cai.evaluate.items` (what is asked),
:mod:`cai.evaluate.judges` (who decides), :mod:`cai.evaluate.metrics` (the figures), :mod:`cai.evaluate.render`
(``summary.md``); this module runs them as a stage.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Callable

from cai.backends.base import GenParams
from cai.backends.registry import BackendPool
from cai.data.io import atomic_write_text, read_jsonl, write_json, write_jsonl
from cai.errors import MissingExtraError, UserInputError
from cai.evaluate.benchmarks import read_benchmark
from cai.evaluate.config import BenchmarkFile, EvalConfig
from cai.evaluate.items import PREFERENCE_KINDS, conversation, load_items
from cai.evaluate.judges import PairwiseJudge, make_refusal_judge
from cai.evaluate.metrics import MEASURED, headline_figures, model_metrics, pairwise_metrics, reward_metrics
from cai.evaluate.render import render_summary, summary_path
from cai.manifests import RoleMeter
from cai.progress import Progress
from cai.stages.sharded import Shard, ShardedResult, run_sharded

__all__ = ["BenchmarkFile", "EvalConfig", "MEASURED", "load_items", "render_summary", "run_evaluate", "summary_path"]


def _reward_scorer(path: str):
    try:
        from cai.stages.reward import RewardScorer
    except ImportError as e:
        raise MissingExtraError(
            f"Reward-model evaluation needs cai.stages.reward.RewardScorer, which could not be imported ({e}).",
            fix="install the full toolkit (pip install -e .), or drop reward_model from the eval config.",
        ) from None
    return RewardScorer(path)


def run_evaluate(
    cfg: EvalConfig,
    run_dir: str,
    *,
    pool: BackendPool | None = None,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_ready: Callable[[Progress], None] | None = None,
) -> dict:
    """Run (or resume) the ``eval`` stage into ``run_dir/eval``. Returns the manifest.

    Runs on the shared sharded runner (:func:`cai.stages.sharded.run_sharded`) with one shard per model: the model
    answers every prompt in one batched call and the refusal judge labels the answers; a killed run resumes at the
    first model it had not finished. The pairwise comparisons follow, one resumable file per aspect and model pair.
    """
    items = load_items(cfg)
    if not items:
        raise UserInputError("No prompts to evaluate (every prompt set is empty after split and limit).",
                             fix="check harmful/benign/benchmarks, their split and limit.")
    needs_const = not isinstance(cfg.judge, str) or (len(cfg.models) > 1 and "harmless" in cfg.pairwise)
    const = None
    if needs_const:
        from cai.constitution import load_constitution

        const = load_constitution(cfg.constitution)
    pool = pool or BackendPool()
    names = list(cfg.models)
    accounts = RoleMeter()
    timing: dict[str, Any] = {"generate_seconds": {}, "judge_seconds": {}}

    def load() -> dict[str, Any]:
        res: dict[str, Any] = {"models": {m: pool.get(cfg.models[m]) for m in names},
                               "judge": make_refusal_judge(cfg.judge, pool, const), "pairwise": None}
        if len(names) > 1 and cfg.pairwise:
            res["pairwise"] = PairwiseJudge(pool.get(cfg.helpfulness_judge), cfg.helpfulness_judge.label(), const,
                                            seed=cfg.seed)
        return res

    def work(shard: Shard, res: dict[str, Any], prog: Progress) -> list[dict]:
        m = shard.items[0]["model"]
        backend, judge = res["models"][m], res["judge"]
        t0 = time.perf_counter()
        convs = [conversation(cfg, it["prompt"]) for it in items]
        # each model samples from its own stream (the shard's seed), so two models with the same weights still differ
        params = GenParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=shard.seed())
        # greedy answers do not depend on the call they are in: one call per batch, so progress shows as it goes
        step = (getattr(backend, "batch_size", None) if cfg.temperature == 0 else None) or max(1, len(convs))
        comps = []
        for a in range(0, len(convs), step):
            part = accounts.measure(f"model:{m}", backend, lambda: backend.generate(convs[a:a + step], params))
            comps.extend(part)
            prog.advance(0, sum(c.completion_tokens for c in part))
        timing["generate_seconds"][m] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        verdicts = accounts.measure("judge", getattr(judge, "backend", None),
                                    lambda: judge.judge([it["prompt"] for it in items], [c.text for c in comps]))
        timing["judge_seconds"][m] = round(time.perf_counter() - t0, 2)
        prog.advance(len(items), 0)
        return [{"model": m, "key": it["key"], "answer": c.text, "finish_reason": c.finish_reason,
                 "completion_tokens": c.completion_tokens, "verdict": v.as_dict()}
                for it, c, v in zip(items, comps, verdicts)]

    def finish(result: ShardedResult[dict[str, Any]]) -> dict:
        res = result.resources or {}
        per_model: dict[str, list[dict]] = {m: [] for m in names}
        by_key = {it["key"]: it for it in items}
        for r in result.rows:
            per_model[r["model"]].append({"model": r["model"], **by_key[r["key"]], "answer": r["answer"],
                                          "finish_reason": r["finish_reason"], "completion_tokens": r["completion_tokens"],
                                          "verdict": r["verdict"]})
        for m, rows in per_model.items():
            if [r["key"] for r in rows] != [it["key"] for it in items]:
                raise UserInputError(f"{result.stage.path}: the answers of model '{m}' do not match this run's prompts.",
                                     fix="rerun with --overwrite.")
        judge_name = per_model[names[0]][0]["verdict"]["judge"].split("+")[0]
        pair_rows, pjudge = _pairwise(result.stage.path, res.get("pairwise"), per_model)
        metrics: dict[str, Any] = {"judge": judge_name, "baseline": cfg.baseline_name(), "models": {}, "counts": {}}
        for m in names:
            metrics["models"][m] = model_metrics(per_model[m], judge_name, cfg, pair_rows, m)
        elo = pairwise_metrics(pair_rows, cfg, names)
        if elo:
            metrics["elo"] = elo
        if cfg.reward_model:
            t0 = time.perf_counter()
            metrics["reward_model"] = _reward_metrics(cfg, per_model)
            timing["reward_seconds"] = round(time.perf_counter() - t0, 2)
        metrics["counts"] = {"prompts": len(items),
                             "by_set": {s: sum(it["set"] == s for it in items) for s in dict.fromkeys(it["set"] for it in items)}}
        all_rows = [r for m in names for r in per_model[m]]
        result.stage.write_output("answers.jsonl", [
            {"model": r["model"], "prompt_id": r["key"], "set": r["set"], "id": r["id"], "category": r["category"],
             "expected": r["expected"], **({"benign_risky": r["benign_risky"]} if "benign_risky" in r else {}),
             "prompt": r["prompt"], "answer": r["answer"], "finish_reason": r["finish_reason"],
             "completion_tokens": r["completion_tokens"], "verdict": r["verdict"]}
            for r in all_rows
        ])
        if pair_rows:
            result.stage.write_output("pairwise.jsonl", pair_rows)
        write_json(result.stage.path / "metrics.json", metrics)
        atomic_write_text(result.stage.path / "summary.md", render_summary(metrics, cfg))
        timing["seconds_this_session"] = round(time.perf_counter() - t_start, 2)
        judge = res.get("judge")
        return {
            "models": {m: cfg.models[m].model_dump(mode="json") for m in names},
            "backends": {m: b.describe() for m, b in (res.get("models") or {}).items()},
            "judge": judge.describe() if judge else {"judge": judge_name},
            "pairwise_judge": pjudge.describe() if pjudge and pair_rows else None,
            "constitution": {"name": const.name, "version": const.version, "hash": const.content_hash()} if const else None,
            "counts": {"prompts": len(items), "models": len(names), "answers": len(all_rows), "comparisons": len(pair_rows)},
            "figures": headline_figures(metrics, _judge_accuracy(judge_name)),
            "tokens": {"generated_this_session": result.tokens},
            "accounting": accounts.as_manifest(),
            "timing": timing,
            "outputs": {"answers": "answers.jsonl", "metrics": "metrics.json", "summary": "summary.md",
                        **({"pairwise": "pairwise.jsonl"} if pair_rows else {})},
            "config": cfg.model_dump(mode="json"),
        }

    def _pairwise(stage_path: Path, pjudge: PairwiseJudge | None,
                  per_model: dict[str, list[dict]]) -> tuple[list[dict], PairwiseJudge | None]:
        """Every pair of models compared in both orders per aspect; each (aspect, pair) file is written when done."""
        pair_rows: list[dict] = []
        aspects = {"helpful": "comply", "harmless": "refuse"}
        if len(names) < 2:
            return pair_rows, pjudge
        for aspect in cfg.pairwise:
            idx = [i for i, it in enumerate(items) if it["expected"] == aspects[aspect]]
            if not idx:
                continue
            pending = []
            for a, b in itertools.combinations(names, 2):
                p = stage_path / "pairwise" / f"{aspect}__{a}__{b}.jsonl"
                if p.exists():
                    pair_rows.extend(read_jsonl(p))
                else:
                    pending.append((a, b, p))
            if not pending:
                continue
            # every missing model pair of this aspect in one call: comparisons that show the same answer first
            # share its prefill; each pair's file is still written on its own, so a rerun resumes per pair
            pjudge = pjudge or PairwiseJudge(pool.get(cfg.helpfulness_judge), cfg.helpfulness_judge.label(), const,
                                             seed=cfg.seed)
            t0 = time.perf_counter()
            res = accounts.measure("pairwise_judge", pjudge.backend, lambda: pjudge.compare_many(
                aspect, [items[i]["key"] for i in idx], [items[i]["prompt"] for i in idx],
                [([per_model[a][i]["answer"] for i in idx], [per_model[b][i]["answer"] for i in idx])
                 for a, b, _ in pending]))
            timing.setdefault("pairwise_seconds", {})[aspect] = round(time.perf_counter() - t0, 2)
            for (a, b, p), results in zip(pending, res):
                rows = [{"aspect": aspect, "model_x": a, "model_y": b, "judge": pjudge.name, **r.as_dict()}
                        for r in results]
                write_jsonl(p, rows)
                pair_rows.extend(rows)
        return pair_rows, pjudge

    t_start = time.perf_counter()
    return run_sharded(
        run_dir, "eval", [{"model": m, **it} for m in names for it in items], shard_size=len(items), seed=cfg.seed,
        identity={"eval": cfg.model_dump(mode="json"), "items": [it["key"] for it in items],
                  "constitution_hash": const.content_hash() if const else None},
        load=load, work=work, finish=finish, overwrite=overwrite, on_progress=on_progress, on_ready=on_ready,
    )


def _judge_accuracy(judge_name: str) -> float | None:
    """The refusal judge's measured accuracy on the held-out labeled set, where it is measured (the local classifier)."""
    if not judge_name.startswith("classifier:"):
        return None
    from cai.evaluate.refusal import CLASSIFIER_NAME, measure_refusal_classifier

    if judge_name != f"classifier:{CLASSIFIER_NAME}":
        return None
    split = (measure_refusal_classifier().get("splits") or {}).get("heldout") or {}
    return split.get("accuracy")


def _reward_metrics(cfg: EvalConfig, per_model: dict[str, list[dict]]) -> dict:
    pairs = read_benchmark("auto", cfg.preference_pairs)  # type: ignore[arg-type]
    if pairs[0]["benchmark"] not in PREFERENCE_KINDS:
        raise UserInputError(f"preference_pairs: {cfg.preference_pairs} holds {pairs[0]['benchmark']} rows, not preference pairs.",
                             fix="give a file with prompt/chosen/rejected (as `cai revise`/`cai label` write) or HH-RLHF transcripts.")
    scorer = _reward_scorer(cfg.reward_model)  # type: ignore[arg-type]
    return reward_metrics(scorer, f"reward:{cfg.reward_model}", pairs, per_model, cfg)
