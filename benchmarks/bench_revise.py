"""Benchmark: the SL-CAI engine against a naive loop, same job, same model, one run.

    .venv/bin/python benchmarks/bench_revise.py                 # 32 prompts, 2 rounds, embedded model
    .venv/bin/python benchmarks/bench_revise.py --prompts 16 --rounds 1 --naive-prompts 4 --reps 2

Both sides run the very same job: ``cai.stages.revise.revise_shard`` (same red-team prompts, principles, rounds, gate,
seed, token limits, greedy decoding) on the embedded SmolLM2-135M-Instruct loaded once. Only the backend differs:

- engine: ``TransformersBackend`` (all prompts of a step in one batch, the shared few-shot prefix kept once, each
  row's critique keys/values reused for its revision, finished rows dropped from the batch);
- naive: one conversation at a time through ``model.generate`` (batch 1, no cache kept between calls).

The two run in alternating repetitions (engine, naive, engine, ...), so load from other processes falls on both. The
naive side may run on the first ``--naive-prompts`` prompts only (it is slow); rates are per prompt and per token, and
the texts both sides wrote for those prompts are compared (greedy decoding must give the same text). Prints tokens/s
and examples/hour of each (wall clock and this process's CPU time), their ratios, peak RSS and the machine's load, and
ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import NaiveBackend, body_gflop_per_token, machine_state, matmul_gflops, peak_rss_mb, timed  # noqa: E402


def texts(rows: list[dict]) -> dict[tuple, str]:
    """Every text a run wrote, keyed by (prompt id, step)."""
    out = {}
    for r in rows:
        out[(r["id"], "initial")] = r["initial"]
        for e in r["rounds"]:
            out[(r["id"], e["round"], "critique")] = e.get("critique")
            out[(r["id"], e["round"], "revision")] = e.get("revision")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--naive-prompts", type=int, default=None, help="prompts the naive loop runs (default: all)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--critique-tokens", type=int, default=48)
    ap.add_argument("--revision-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1, help="alternating repetitions of each side")
    ap.add_argument("--dtype", default="float32", help="weights of both sides: float32 or bfloat16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from cai.backends.embedded import embedded_model_dir
    from cai.backends.transformers_backend import TransformersBackend
    from cai.constitution import load_constitution
    from cai.data.readers import load_prompts
    from cai.stages.revise import ReviseConfig, revise_shard

    before = machine_state()
    const = load_constitution()
    rows = load_prompts("redteam", split="train")
    random.Random(args.seed).shuffle(rows)
    items = [dict(r, kind="redteam") for r in rows[: args.prompts]]
    naive_items = items[: args.naive_prompts or len(items)]
    cfg = ReviseConfig(
        rounds=args.rounds, seed=args.seed, answer_tokens=args.answer_tokens, critique_tokens=args.critique_tokens,
        revision_tokens=args.revision_tokens, shard_size=len(items),
        repetition_penalty=1.0,  # plain greedy on both sides, so both must write the same text
    )
    engine = TransformersBackend(str(embedded_model_dir()), batch_size=args.batch_size, dtype=args.dtype)
    naive = NaiveBackend(engine.model, engine.tok)  # the same weights, loaded once
    print(f"torch threads: {torch.get_num_threads()}; dtype {args.dtype}; engine: {len(items)} prompts, naive: "
          f"{len(naive_items)} prompts; {args.rounds} rounds; max new tokens answer/critique/revision = "
          f"{args.answer_tokens}/{args.critique_tokens}/{args.revision_tokens}; shared-prefix kernel: {engine.fast}")
    runs: dict[str, list[dict]] = {"engine": [], "naive": []}
    outputs: dict[str, list[dict]] = {}
    for rep in range(args.reps):
        for side, backend, its in (("engine", engine, items), ("naive", naive, naive_items)):
            engine._cache.clear()  # every repetition starts cold: no prefix or row cache from the last one
            engine._rows.entries.clear()
            engine._rows.used = 0
            tok0, fwd0 = backend.stats.completion_tokens, engine.forward_tokens
            out, wall, cpu = timed(lambda: revise_shard(its, const, cfg, backend, backend, backend, shard_index=0))
            tokens = backend.stats.completion_tokens - tok0
            runs[side].append({"prompts": len(its), "tokens": tokens, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
            if side == "engine":  # token positions the engine ran through the model: prefills, decode steps, padding
                runs[side][-1]["forward_tokens"] = engine.forward_tokens - fwd0
            outputs[side] = out
            print(f"rep {rep + 1} {side:6s}: {len(its)} prompts, {tokens} tokens in {wall:.1f} s wall / {cpu:.1f} s CPU "
                  f"= {tokens / wall:.1f} tok/s, {len(its) / wall * 3600:.0f} examples/h", flush=True)
    after = machine_state()

    def rate(side: str, what: str, clock: str) -> float:
        num = sum(r[what] for r in runs[side])
        return num / sum(r[clock] for r in runs[side])

    res: dict = {"bench": "revise", "prompts": len(items), "naive_prompts": len(naive_items), "rounds": args.rounds,
                 "reps": args.reps, "dtype": args.dtype, "torch_threads": torch.get_num_threads()}
    for side in runs:
        res[f"{side}_tokens_per_s"] = round(rate(side, "tokens", "wall_s"), 2)
        res[f"{side}_examples_per_h"] = round(rate(side, "prompts", "wall_s") * 3600, 1)
        res[f"{side}_cpu_tokens_per_s"] = round(rate(side, "tokens", "cpu_s"), 2)
    res["tokens_per_s_ratio"] = round(res["engine_tokens_per_s"] / res["naive_tokens_per_s"], 2)
    res["examples_per_h_ratio"] = round(res["engine_examples_per_h"] / res["naive_examples_per_h"], 2)
    res["cpu_tokens_per_s_ratio"] = round(res["engine_cpu_tokens_per_s"] / res["naive_cpu_tokens_per_s"], 2)
    ours, theirs = texts(outputs["engine"]), texts(outputs["naive"])
    same = [ours.get(k) == v for k, v in theirs.items()]
    res["same_text"] = {"k": sum(same), "n": len(same)}
    res["reused_row_tokens"] = engine.reused_row_tokens
    # where the engine's time goes: its decoder layers' matrix products against this CPU's own ceiling for them
    fwd = sum(r["forward_tokens"] for r in runs["engine"])
    res["engine_forward_tokens"] = fwd
    res["engine_layer_gflops"] = round(fwd * body_gflop_per_token(engine.model) / sum(r["wall_s"] for r in runs["engine"]), 1)
    res["matmul_gflops"] = matmul_gflops(args.dtype)
    res["peak_rss_mb"] = peak_rss_mb()
    res["machine"] = {"before": before, "after": after, "loaded": before["loaded"]}
    res["runs"] = runs
    print(f"ratio (engine / naive): tokens/s x{res['tokens_per_s_ratio']} (CPU time x{res['cpu_tokens_per_s_ratio']}), "
          f"examples/h x{res['examples_per_h_ratio']}; same greedy text in {sum(same)} of {len(same)} steps; "
          f"peak RSS {res['peak_rss_mb']} MiB; engine: {fwd} token positions through the model, decoder layers at "
          f"{res['engine_layer_gflops']} GFLOP/s (this CPU's {args.dtype} matrix products: {res['matmul_gflops']} GFLOP/s); "
          f"load average {before['loadavg_1m']} -> {after['loadavg_1m']} on "
          f"{after['cpus']} CPUs{' (loaded machine)' if res['machine']['loaded'] else ''}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
