"""Benchmark: ``cai eval`` end to end against plain batched generation of the same answers, one run.

    .venv/bin/python benchmarks/bench_eval.py                       # 3 models x 101 prompts x 96 tokens
    .venv/bin/python benchmarks/bench_eval.py --models 2 --limit 16 --max-new-tokens 32 --no-pairwise
    .venv/bin/python benchmarks/bench_eval.py --dtype bfloat16      # the dtype the demo pipeline's models run in

The eval side is the real stage (``run_evaluate``): every model answers every shipped eval prompt (harmful and benign
eval splits), the refusal classifier judges them, and the models are compared pairwise (helpfulness and
harmlessness, both orders, on the embedded judge). The models are the embedded SmolLM2-135M-Instruct under different
names, so the pool loads one instance; they sample (``--temperature``, 0.7 by default) and each model has its own
seed, so their answers differ as distinct models' answers would (with greedy decoding all three would write the same
text and the pairwise judge would score identical answers, which flatters it). The baseline is plain batched
``model.generate`` (left padding, the same prompts, batch size, token limit and temperature) of one model's answers.
The two run in alternating repetitions. Printed:
generated tokens/s of the eval path's generation and of the baseline, the whole stage's time (and its share spent
generating and judging), CPU seconds, peak RSS and the machine's load; last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_state, peak_rss_mb, plain_batched_generate, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=3, help="models evaluated (the embedded model under N names)")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each prompt set (default: all)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-pairwise", action="store_true", help="skip the pairwise comparisons")
    ap.add_argument("--temperature", type=float, default=0.7,
                    help="sampling temperature of the answers (0: greedy, and the models' answers are identical)")
    ap.add_argument("--dtype", default="auto", help="weights: auto (fp32 on CPU), float32 or bfloat16")
    ap.add_argument("--reps", type=int, default=1, help="alternating repetitions of each side")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from cai.backends.registry import BackendPool
    from cai.backends.spec import ModelSpec
    from cai.evaluate.items import conversation, load_items
    from cai.stages.evaluate import EvalConfig, run_evaluate

    before = machine_state()
    spec = {"model": "embedded", "batch_size": args.batch_size, "dtype": args.dtype}
    cfg = EvalConfig(models={f"m{i + 1}": ModelSpec.model_validate(spec) for i in range(args.models)},
                     helpfulness_judge=ModelSpec.model_validate(spec), max_new_tokens=args.max_new_tokens,
                     limit=args.limit, temperature=args.temperature,
                     pairwise=[] if args.no_pairwise else ["helpful", "harmless"])
    items = load_items(cfg)
    pool = BackendPool()
    backend = pool.get(cfg.models["m1"])
    convs = [conversation(cfg, it["prompt"]) for it in items]
    print(f"torch threads: {torch.get_num_threads()}; {args.models} models x {len(items)} prompts x "
          f"{args.max_new_tokens} tokens; batch {args.batch_size}; dtype {args.dtype}; temperature {args.temperature}; "
          f"pairwise: {cfg.pairwise or 'none'}", flush=True)
    evals, plains = [], []
    with tempfile.TemporaryDirectory(prefix="cai-bench-eval-") as tmp:
        for rep in range(args.reps):
            backend._cache.clear()
            progress_lines = []
            m, wall, cpu = timed(lambda: run_evaluate(cfg, str(Path(tmp) / f"run{rep}"), pool=pool,
                                                      on_progress=lambda p: progress_lines.append(p.done)))
            gen_s = sum(m["timing"]["generate_seconds"].values())
            tokens = m["tokens"]["generated_this_session"]
            pair_s = sum((m["timing"].get("pairwise_seconds") or {}).values())
            evals.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "generate_s": round(gen_s, 2),
                          "pairwise_s": round(pair_s, 2), "tokens": tokens, "progress_updates": len(progress_lines)})
            print(f"rep {rep + 1} cai eval: {wall:.1f} s wall ({cpu:.1f} s CPU), generation {gen_s:.1f} s for {tokens} "
                  f"tokens = {tokens / gen_s:.1f} tok/s, pairwise {pair_s:.1f} s, {len(progress_lines)} progress "
                  f"updates", flush=True)
            n, wall, cpu = timed(lambda: plain_batched_generate(backend.model, backend.tok, convs, args.max_new_tokens,
                                                               args.batch_size, args.temperature))
            plains.append({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "tokens": n})
            print(f"rep {rep + 1} plain   : {n} tokens in {wall:.1f} s ({cpu:.1f} s CPU) = {n / wall:.1f} tok/s",
                  flush=True)
    after = machine_state()
    e_tps = sum(e["tokens"] for e in evals) / sum(e["generate_s"] for e in evals)
    p_tps = sum(p["tokens"] for p in plains) / sum(p["wall_s"] for p in plains)
    res = {
        "bench": "eval", "models": args.models, "prompts": len(items), "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "dtype": args.dtype, "temperature": args.temperature, "pairwise": cfg.pairwise,
        "reps": args.reps,
        "torch_threads": torch.get_num_threads(),
        "eval_generate_tokens_per_s": round(e_tps, 2), "plain_tokens_per_s": round(p_tps, 2),
        "tokens_per_s_ratio": round(e_tps / p_tps, 2),
        "eval_stage_seconds": round(sum(e["wall_s"] for e in evals) / len(evals), 1),
        "eval_stage_cpu_seconds": round(sum(e["cpu_s"] for e in evals) / len(evals), 1),
        "peak_rss_mb": peak_rss_mb(),
        "machine": {"before": before, "after": after, "loaded": before["loaded"]},
        "runs": {"eval": evals, "plain": plains},
    }
    print(f"cai eval generation {res['eval_generate_tokens_per_s']} tok/s vs plain batched generation "
          f"{res['plain_tokens_per_s']} tok/s (x{res['tokens_per_s_ratio']}); whole stage {res['eval_stage_seconds']} s; "
          f"peak RSS {res['peak_rss_mb']} MiB; load average {before['loadavg_1m']} -> {after['loadavg_1m']} on "
          f"{after['cpus']} CPUs" + (" (loaded machine)" if res["machine"]["loaded"] else ""))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
