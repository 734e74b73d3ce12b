"""Which weights are fastest on this CPU, and what they do to the model: fp32 against bf16 and int8, one run.

    .venv/bin/python benchmarks/bench_dtype.py                 # 24 label pairs (both orders) and 32 answers x 48 tokens
    .venv/bin/python benchmarks/bench_dtype.py --pairs 8 --prompts 8

Three copies of the embedded SmolLM2-135M-Instruct run the same two jobs on the transformers backend: letter scoring
of label pairs (both orders, the label stage's prompt) and greedy answers to shipped red-team prompts. The copies
are fp32 (the baseline), bf16, and int8 (``torch.ao.quantization.quantize_dynamic`` on every linear layer: int8
weights, fp32 activations). Printed per copy: seconds for each job, tokens/s, and how far it moves from fp32 (largest
letter log-probability difference, share of the same letter picked, share of the same greedy text); then this CPU's
speed for the MLP's matrix product in each dtype and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_state, matmul_gflops, peak_rss_mb  # noqa: E402
from bench_label import build_pairs  # noqa: E402


def int8_matmul_gflops(seconds: float = 1.0) -> float:
    """The MLP-shaped product (4096 x 576 by 576 x 1536) through a dynamically quantized int8 linear layer."""
    import torch

    lin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(576, 1536, bias=False)),
                                                 {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(4096, 576)
    with torch.inference_mode():
        lin(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            lin(x)
            n += 1
    return round(2 * 4096 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    from cai.backends.base import GenParams
    from cai.backends.embedded import embedded_model_dir
    from cai.backends.transformers_backend import TransformersBackend
    from cai.data.readers import load_prompts
    from cai.labeling import prompts as LP

    before = machine_state()
    convs = []
    for r in build_pairs(args.pairs):
        a, b = r["responses"]
        convs += [LP.scoring_conversation(r["prompt"], "Which reply is less harmful?", x, y) for x, y in ((a, b), (b, a))]
    prompts = [[{"role": "user", "content": p["prompt"]}] for p in load_prompts("redteam", split="train", limit=args.prompts)]
    out: dict[str, dict] = {}
    kept: dict[str, tuple] = {}
    for name in ("float32", "bfloat16", "int8"):
        b = TransformersBackend(str(embedded_model_dir()), batch_size=64, dtype="float32" if name == "int8" else name)
        if name == "int8":
            b.model = torch.ao.quantization.quantize_dynamic(b.model, {torch.nn.Linear}, dtype=torch.qint8)
        b.option_logprobs(convs[:2], [["A", "B"]] * 2)  # warm-up
        t0 = time.perf_counter()
        lp = b.option_logprobs(convs, [["A", "B"]] * len(convs))
        label_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        comps = b.generate(prompts, GenParams(max_new_tokens=args.max_new_tokens))
        gen_s = time.perf_counter() - t0
        tokens = sum(c.completion_tokens for c in comps)
        kept[name] = (lp, [c.text for c in comps])
        out[name] = {"label_s": round(label_s, 2), "generate_s": round(gen_s, 2), "tokens": tokens,
                     "tokens_per_s": round(tokens / gen_s, 1)}
        del b
    ref_lp, ref_text = kept["float32"]
    for name in ("bfloat16", "int8"):
        lp, text = kept[name]
        out[name]["max_letter_logprob_diff"] = round(max(abs(x - y) for r, s in zip(lp, ref_lp) for x, y in zip(r, s)), 3)
        out[name]["same_letter"] = round(sum((r[0] > r[1]) == (s[0] > s[1]) for r, s in zip(lp, ref_lp)) / len(lp), 3)
        out[name]["same_text"] = round(sum(x == y for x, y in zip(text, ref_text)) / len(text), 3)
        out[name]["label_speedup"] = round(out["float32"]["label_s"] / out[name]["label_s"], 2)
        out[name]["tokens_per_s_ratio"] = round(out[name]["tokens_per_s"] / out["float32"]["tokens_per_s"], 2)
    mm = {"float32": matmul_gflops("float32"), "bfloat16": matmul_gflops("bfloat16"), "int8": int8_matmul_gflops()}
    after = machine_state()
    for name, r in out.items():
        extra = (f"; vs fp32: labels x{r['label_speedup']}, tokens/s x{r['tokens_per_s_ratio']}, letter log-prob "
                 f"moves up to {r['max_letter_logprob_diff']}, same letter {r['same_letter']}, same greedy text "
                 f"{r['same_text']}") if name != "float32" else ""
        print(f"{name:8s}: {len(convs)} letter scores in {r['label_s']} s, {r['tokens']} tokens in {r['generate_s']} s "
              f"({r['tokens_per_s']} tok/s){extra}")
    print(f"MLP-shaped matrix product: fp32 {mm['float32']}, bf16 {mm['bfloat16']}, int8 {mm['int8']} GFLOP/s; peak RSS "
          f"{peak_rss_mb()} MiB; load average {before['loadavg_1m']} -> {after['loadavg_1m']} on {after['cpus']} CPUs")
    print(json.dumps({"bench": "dtype", "pairs": args.pairs, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                      "results": out, "matmul_gflops": mm, "peak_rss_mb": peak_rss_mb(),
                      "machine": {"before": before, "after": after}}))


if __name__ == "__main__":
    main()
