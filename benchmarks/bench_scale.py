"""Benchmark: the SL-CAI critique round on the ray executor (Ray Data + vLLM) against raw vLLM, same requests.

    # on a GPU machine, after `pip install -e '.[scale]'` (or: bash scripts/gpu_scale_check.sh)
    python benchmarks/bench_scale.py                          # 1024 critiques, 128 new tokens, Llama-7B shapes
    python benchmarks/bench_scale.py --shape qwen2.5-7b --prompts 2048 --engines 1 --tp 1
    python benchmarks/bench_scale.py --dry-run                # CPU: build the model folder, requests and processor

No weights travel: the model is a folder holding a config we write (Llama-2-7B or Qwen2.5-7B shapes; the vocabulary
is the embedded SmolLM2 tokenizer's, copied in with its chat template) and vLLM fills it with random weights
(``load_format="dummy"``). Random weights write random text; only the speed is measured.

Both sides get the same requests: the critique prompts ``cai revise`` builds for its first round (the shipped
constitution's few-shot critique conversation, sampled principles, the shipped red-team prompts, a fixed-length
answer standing in for the policy's), greedy, ``--output-tokens`` new tokens, per-request seeds.

- ray: :class:`cai.executors.raydata.RayDataBackend` (the backend every stage gets with ``executor: {kind: ray,
  engine: vllm}``) runs the batch as one Ray Data job (engine start-up included, as in a stage);
- raw: ``vllm.LLM(...).chat(...)`` in a separate process (start-up and generation timed apart).

Prints generated tokens/s of each and ``ratio`` = ray tokens/s / raw tokens/s, both with engine start-up (the goal is
>= 0.9), the raw generation-only rate, and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {  # architecture, hidden, intermediate, layers, heads, kv heads, rope theta
    "llama-7b": ("LlamaForCausalLM", "llama", 4096, 11008, 32, 32, 32, 10000.0),
    "qwen2.5-7b": ("Qwen2ForCausalLM", "qwen2", 3584, 18944, 28, 28, 4, 1000000.0),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def write_model(folder: Path, shape: str, max_len: int) -> Path:
    """A model folder vLLM can fill with dummy weights: our config + the embedded tokenizer."""
    from cai.backends.embedded import embedded_model_dir

    src = embedded_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    base = json.loads((src / "config.json").read_text())
    arch, mtype, hidden, inter, layers, heads, kv, theta = SHAPES[shape]
    cfg = {"architectures": [arch], "model_type": mtype, "hidden_size": hidden, "intermediate_size": inter,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "vocab_size": base["vocab_size"], "max_position_embeddings": max_len, "rope_theta": theta,
           "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "bos_token_id": base.get("bos_token_id"), "eos_token_id": base.get("eos_token_id"),
           "pad_token_id": base.get("pad_token_id")}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder


def critique_requests(n: int, answer_words: int, seed: int) -> list[list[dict]]:
    """The first-round critique conversations of ``cai revise`` for ``n`` red-team prompts (cycled)."""
    from cai.constitution import load_constitution
    from cai.data.readers import load_prompts
    from cai.seeding import rng
    from cai.stages.sl_levers import pick_principle
    from cai.stages.sl_prompts import critique_conversation

    const = load_constitution("default")
    prompts = load_prompts("redteam", split="all")
    words = ("Here is a detailed answer with the steps you asked for and some background on each of them. " * 40).split()
    answer = " ".join(words[:answer_words])
    out = []
    for i in range(n):
        item = prompts[i % len(prompts)]
        principle, _ = pick_principle(const, rng(seed, f"{item['id']}-{i}", 1), item.get("category"), 0.8)
        out.append(critique_conversation(const, principle, item["prompt"], answer))
    return out


def run_raw(model: str, convs_file: Path, args: argparse.Namespace) -> dict:
    """Raw vLLM in this process: ``LLM(...)`` then one ``chat`` call over every conversation."""
    from vllm import LLM, SamplingParams

    from cai.backends.base import GenParams

    convs = json.loads(convs_file.read_text())
    params = GenParams(max_new_tokens=args.output_tokens, temperature=0.0, seed=args.seed)
    t0 = time.perf_counter()
    llm = LLM(model=model, load_format="dummy", tensor_parallel_size=args.tp, enable_prefix_caching=True,
              max_model_len=args.max_len, seed=args.seed)
    t1 = time.perf_counter()
    sps = [SamplingParams(max_tokens=args.output_tokens, temperature=0.0, seed=params.seed_for(i))
           for i in range(len(convs))]
    outs = llm.chat(convs, sampling_params=sps, use_tqdm=False)
    t2 = time.perf_counter()
    return {"start_s": t1 - t0, "generate_s": t2 - t1,
            "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs)}


def run_ray(model: str, convs: list, args: argparse.Namespace) -> dict:
    from cai.backends.base import GenParams
    from cai.backends.spec import ModelSpec
    from cai.executors.config import ExecutorConfig
    from cai.executors.raydata import RayDataBackend, ensure_ray

    ex = ExecutorConfig(kind="ray", engine="vllm", num_engines=args.engines, tensor_parallel_size=args.tp,
                        batch_size=args.batch_size, engine_kwargs={"load_format": "dummy", "max_model_len": args.max_len})
    ensure_ray(ex)
    backend = RayDataBackend(ModelSpec(backend="transformers", model=model), ex)
    t0 = time.perf_counter()
    comps = backend.generate(convs, GenParams(max_new_tokens=args.output_tokens, temperature=0.0, seed=args.seed))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "generated_tokens": sum(c.completion_tokens for c in comps),
            "prompt_tokens": sum(c.prompt_tokens for c in comps), "failed": sum(c.failed for c in comps),
            "describe": backend.describe()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-7b")
    ap.add_argument("--prompts", type=int, default=1024, help="critique requests")
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--answer-words", type=int, default=120, help="length of the answer each critique is about")
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256, help="rows per Ray Data batch")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=".cache/bench_scale")
    ap.add_argument("--dry-run", action="store_true", help="build the model folder, requests and processor only")
    ap.add_argument("--raw-only", help=argparse.SUPPRESS)  # internal: the raw side, in its own process
    args = ap.parse_args()
    work = Path(args.workdir)
    model = work / f"dummy-{args.shape}"
    if args.raw_only:
        print("BENCH_RAW " + json.dumps(run_raw(str(model), Path(args.raw_only), args)), flush=True)
        return
    write_model(model, args.shape, args.max_len)
    random.seed(args.seed)
    convs = critique_requests(args.prompts, args.answer_words, args.seed)
    convs_file = work / "critiques.json"
    convs_file.write_text(json.dumps(convs))
    print(f"model folder {model} ({args.shape} shapes, dummy weights); {len(convs)} critique requests, "
          f"{args.output_tokens} new tokens each", flush=True)
    if args.dry_run:
        from cai.backends.spec import ModelSpec
        from cai.executors.config import ExecutorConfig
        from cai.executors.engines import VllmEngine

        eng = VllmEngine(ModelSpec(backend="transformers", model=str(model)),
                         ExecutorConfig(kind="ray", num_engines=args.engines, tensor_parallel_size=args.tp,
                                        batch_size=args.batch_size, engine_kwargs={"load_format": "dummy"}))
        print(json.dumps({"dry_run": True, "processor_config": eng.config().model_dump(mode="json"),
                          "first_request_chars": len(json.dumps(convs[0]))}))
        return
    # raw first, in its own process, so its GPU memory is free again before Ray Data starts its engines
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--raw-only", str(convs_file)],
                         check=True, stdout=subprocess.PIPE, text=True)  # its log goes to the console
    print(out.stdout, end="")
    raw = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("BENCH_RAW "))[len("BENCH_RAW "):])
    ray_side = run_ray(str(model), convs, args)
    raw_rate = raw["generated_tokens"] / (raw["start_s"] + raw["generate_s"])
    raw_gen_rate = raw["generated_tokens"] / raw["generate_s"]
    ray_rate = ray_side["generated_tokens"] / ray_side["seconds"]
    ratio = ray_rate / raw_rate
    print(f"raw vLLM   : start {raw['start_s']:.1f} s + generate {raw['generate_s']:.1f} s, "
          f"{raw['generated_tokens']} tokens -> {raw_rate:.0f} tokens/s with start-up, {raw_gen_rate:.0f} generating")
    print(f"ray executor: {ray_side['seconds']:.1f} s (one Ray Data job, engine start-up included), "
          f"{ray_side['generated_tokens']} tokens -> {ray_rate:.0f} tokens/s; failed rows {ray_side['failed']}")
    print(f"ratio (ray / raw, both with start-up): {ratio:.3f}  (goal >= 0.9)")
    print(json.dumps({"bench": "scale", "shape": args.shape, "prompts": len(convs), "output_tokens": args.output_tokens,
                      "engines": args.engines, "tp": args.tp, "ratio": round(ratio, 3),
                      "ray_tokens_per_s": round(ray_rate, 1), "raw_tokens_per_s": round(raw_rate, 1),
                      "raw_generate_tokens_per_s": round(raw_gen_rate, 1), "raw": raw,
                      "ray": {k: v for k, v in ray_side.items() if k != "describe"},
                      "versions": ray_side["describe"].get("versions")}))


if __name__ == "__main__":
    main()
