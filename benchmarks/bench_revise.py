"""Benchmark: the SL-CAI engine against a naive loop, same job, same model, one run.

    .venv/bin/python benchmarks/bench_revise.py                 # 32 prompts, 2 rounds, embedded model (~15 min)
    .venv/bin/python benchmarks/bench_revise.py --prompts 16 --rounds 1 --answer-tokens 64

Both sides run the same SL-CAI job (same red-team prompts, principles, rounds, seed, token limits, greedy decoding)
on the embedded SmolLM2-135M-Instruct with transformers:

- engine: ``cai.stages.revise.revise_shard`` through ``TransformersBackend`` (all prompts of a step in one batch,
  preallocated KV cache, the shared few-shot prefix computed once and reused);
- naive: one prompt at a time, one ``model.generate`` call per step, batch size 1, no prefix cache.

Prints generated tokens/s and examples/hour of each and their ratio, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def naive_run(model, tok, items, const, cfg) -> tuple[int, float]:
    import torch

    from cai.stages.revise import _rng
    from cai.stages.sl_prompts import clean, critique_conversation, revision_conversation

    def gen(conv, max_new):
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1] :]
        n = int((new != tok.eos_token_id).sum())
        return tok.decode(new, skip_special_tokens=True).strip(), n

    tokens = 0
    t0 = time.perf_counter()
    for it in items:
        answer, n = gen([{"role": "user", "content": it["prompt"]}], cfg.answer_tokens)
        tokens += n
        for rnd in range(1, cfg.rounds + 1):
            p = const.sample(_rng(cfg.seed, it["id"], rnd))[0]
            cconv = critique_conversation(const, p, it["prompt"], answer)
            critique, n = gen(cconv, cfg.critique_tokens)
            tokens += n
            revision, n = gen(revision_conversation(cconv, p, clean(critique)), cfg.revision_tokens)
            tokens += n
            answer = clean(revision) or answer
    return tokens, time.perf_counter() - t0


def engine_run(backend, items, const, cfg) -> tuple[int, float]:
    from cai.stages.revise import revise_shard

    before = backend.stats.completion_tokens
    t0 = time.perf_counter()
    revise_shard(items, const, cfg, backend, backend, backend, shard_index=0)
    return backend.stats.completion_tokens - before, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--critique-tokens", type=int, default=48)
    ap.add_argument("--revision-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from cai.backends.embedded import embedded_model_dir
    from cai.backends.transformers_backend import TransformersBackend
    from cai.constitution import load_constitution
    from cai.data.readers import load_prompts
    from cai.stages.revise import ReviseConfig

    const = load_constitution()
    rows = load_prompts("redteam", split="train")
    random.Random(args.seed).shuffle(rows)
    items = [dict(r, kind="redteam") for r in rows[: args.prompts]]
    cfg = ReviseConfig(
        rounds=args.rounds,
        seed=args.seed,
        answer_tokens=args.answer_tokens,
        critique_tokens=args.critique_tokens,
        revision_tokens=args.revision_tokens,
        shard_size=len(items),
        repetition_penalty=1.0,  # plain greedy on both sides, so both produce the same text
    )
    backend = TransformersBackend(str(embedded_model_dir()), batch_size=args.batch_size)
    print(f"torch threads: {torch.get_num_threads()}; {len(items)} prompts x {args.rounds} rounds; "
          f"max new tokens answer/critique/revision = {args.answer_tokens}/{args.critique_tokens}/{args.revision_tokens}")
    e_tok, e_s = engine_run(backend, items, const, cfg)
    print(f"engine: {e_tok} tokens in {e_s:.1f} s = {e_tok / e_s:.1f} tok/s, {len(items) / e_s * 3600:.0f} examples/h "
          f"(prefix tokens reused: {backend.stats.cached_prefix_tokens})")
    n_tok, n_s = naive_run(backend.model, backend.tok, items, const, cfg)
    print(f"naive : {n_tok} tokens in {n_s:.1f} s = {n_tok / n_s:.1f} tok/s, {len(items) / n_s * 3600:.0f} examples/h")
    res = {
        "bench": "revise",
        "prompts": len(items),
        "rounds": args.rounds,
        "engine_tokens_per_s": round(e_tok / e_s, 2),
        "naive_tokens_per_s": round(n_tok / n_s, 2),
        "engine_examples_per_h": round(len(items) / e_s * 3600, 1),
        "naive_examples_per_h": round(len(items) / n_s * 3600, 1),
        "tokens_per_s_ratio": round((e_tok / e_s) / (n_tok / n_s), 2),
        "examples_per_h_ratio": round(n_s / e_s, 2),
        "engine_seconds": round(e_s, 1),
        "naive_seconds": round(n_s, 1),
    }
    print(f"ratio (engine / naive): tokens/s x{res['tokens_per_s_ratio']}, examples/h x{res['examples_per_h_ratio']}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
