"""Labeling throughput: log-probability scoring vs chain-of-thought labeling, same model, same pairs, one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_label.py                      # embedded SmolLM2, 12 pairs, 96 reasoning tokens
    .venv/bin/python benchmarks/bench_label.py --pairs 24 --cot-tokens 64 --dtype bfloat16
    .venv/bin/python benchmarks/bench_label.py --labeler ./my-hf-model --ensemble 2

The pairs are built in the script from shipped red-team prompts (train split) with short fixed answers: a refusal
that offers a safe alternative and a compliant-sounding answer, alternating which one comes first. Both modes run the
real ``label`` stage (``run_label``) on the same labeler instance, after a warm-up that loads the model, so the
timings exclude loading. The modes run in alternating repetitions (logprob, cot, logprob, ...), so load from other
processes falls on both; wall-clock and this process's CPU seconds are both reported. Printed: labels/second of each
mode, their ratio, label statistics (position consistency, mean confidence, share of labels preferring the refusal),
peak RSS and the machine's load and, last, one JSON line with every figure.

Where the time goes: each mode also reports the token positions it ran through the model (padding included) and the
speed of the decoder layers' matrix products over them, next to this CPU's own matrix-product speed measured in the
same run (``matmul_gflops``). Log-probability labels are one prefill, so their speed is bounded by that ceiling; the
chain of thought adds its reasoning tokens, decoded a few rows at a time. The ratio of the two modes is therefore
about (prefill + reasoning decode) / prefill, whatever the engine does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import body_gflop_per_token, machine_state, matmul_gflops, peak_rss_mb, timed  # noqa: E402

from cai.backends.base import GenParams  # noqa: E402
from cai.backends.registry import BackendPool  # noqa: E402
from cai.backends.spec import ModelSpec  # noqa: E402
from cai.data.io import read_jsonl, write_jsonl  # noqa: E402
from cai.data.readers import load_prompts  # noqa: E402
from cai.stages.label import LabelConfig, run_label  # noqa: E402

REFUSALS = [
    "I can't help with that, because it could put people at risk. If you tell me what you are trying to achieve, "
    "I'm happy to suggest a safe and legal way to get there.",
    "I won't give instructions for this. If you or someone else is in danger, please contact local emergency "
    "services; I can also point you to reliable resources on the topic.",
    "That's not something I can assist with. I can explain the general risks involved, or help you find a "
    "legitimate professional who can help.",
]
COMPLIANT = [
    "Sure! Start by getting the materials you need, then follow the steps one by one until it works. Let me know "
    "if you want more detail on any step.",
    "Of course. The easiest way is to do it quickly and quietly so nobody notices, and to cover your tracks "
    "afterwards.",
    "Absolutely, here is how: gather what you need, avoid anyone who might stop you, and repeat until you get the "
    "result you want.",
]


def build_pairs(n: int) -> list[dict]:
    prompts = load_prompts("redteam", split="train", limit=n)
    rows = []
    for i, p in enumerate(prompts):
        refusal, comply = REFUSALS[i % len(REFUSALS)], COMPLIANT[i % len(COMPLIANT)]
        responses = [refusal, comply] if i % 2 == 0 else [comply, refusal]
        rows.append({"id": p["id"], "prompt": p["prompt"], "category": p.get("category"), "responses": responses, "refusal_index": i % 2})
    return rows


def run_mode(mode: str, pairs: Path, work: Path, pool: BackendPool, args, rep: int = 0) -> dict:
    cfg = LabelConfig(
        labeler=labeler_spec(args), pairs=str(pairs), mode=mode, cot_tokens=args.cot_tokens, ensemble=args.ensemble,
        seed=args.seed,
    )
    run = work / f"run-{mode}-{rep}"
    backend = pool.get(cfg.labeler)
    before = getattr(backend, "forward_tokens", None)
    m, wall, cpu = timed(lambda: run_label(cfg, str(run), pool=pool))
    labels = read_jsonl(run / "label" / "labels.jsonl")
    fwd = None if before is None else backend.forward_tokens - before
    return {"seconds": wall, "cpu_seconds": cpu, "labels": labels, "manifest": m, "forward_tokens": fwd}


def labeler_spec(args) -> ModelSpec:
    spec = ModelSpec.model_validate(args.labeler)
    return spec.model_copy(update={"dtype": args.dtype}) if args.dtype else spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=12, help="number of pairs (shipped red-team train prompts)")
    ap.add_argument("--cot-tokens", type=int, default=96,
                    help="max reasoning tokens in chain-of-thought mode (default: the label stage's own default)")
    ap.add_argument("--dtype", default=None, help="labeler weights: float32 or bfloat16 (default: the spec's own)")
    ap.add_argument("--ensemble", type=int, default=1, help="principles per comparison")
    ap.add_argument("--labeler", default="embedded", help="labeler model: embedded, a folder, openai:NAME@URL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=1, help="alternating repetitions of each mode")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    before = machine_state()

    rows = build_pairs(args.pairs)
    spec = labeler_spec(args)
    pool = BackendPool()
    t0 = time.perf_counter()
    backend = pool.get(spec)
    # warm-up: load weights and run one tiny generation and one scoring pass, so timings below exclude them
    backend.generate([[{"role": "user", "content": "Hello"}]], GenParams(max_new_tokens=2))
    backend.option_logprobs([[{"role": "user", "content": "Pick"}, {"role": "assistant", "content": "("}]], [["A", "B"]])
    load_s = time.perf_counter() - t0
    model = getattr(backend, "model", None)
    dtype = str(model.dtype).removeprefix("torch.") if model is not None else None
    peak = matmul_gflops(dtype) if model is not None else None
    per_token = body_gflop_per_token(model) if model is not None else None

    with tempfile.TemporaryDirectory(prefix="cai-bench-label-") as tmp:
        work = Path(tmp)
        pairs = work / "pairs.jsonl"
        write_jsonl(pairs, [{k: v for k, v in r.items() if k != "refusal_index"} for r in rows])
        reps: dict[str, list[dict]] = {"logprob": [], "cot": []}
        for rep in range(args.reps):
            for mode in reps:
                reps[mode].append(run_mode(mode, pairs, work, pool, args, rep))
                print(f"rep {rep + 1} {mode:8s}: {reps[mode][-1]['seconds']:.1f} s wall, "
                      f"{reps[mode][-1]['cpu_seconds']:.1f} s CPU", flush=True)
    results = {mode: dict(runs[-1], seconds=sum(r["seconds"] for r in runs) / len(runs),
                          cpu_seconds=sum(r["cpu_seconds"] for r in runs) / len(runs)) for mode, runs in reps.items()}
    after = machine_state()

    refusal_of = {r["id"]: r["refusal_index"] for r in rows}
    summary: dict = {
        "benchmark": "label",
        "labeler": backend.describe()["model"],
        "pairs": len(rows),
        "ensemble": args.ensemble,
        "cot_tokens": args.cot_tokens,
        "warmup_load_s": round(load_s, 2),
        "torch_threads": _threads(),
        "dtype": dtype,
        "matmul_gflops": peak,
    }
    for mode, res in results.items():
        labeled = [x for x in res["labels"] if not x["abstained"]]
        prefer_refusal = sum(
            (x["p_a_unclamped"] > 0.5) == (refusal_of[x["id"]] == 0) for x in labeled if x["p_a_unclamped"] != 0.5
        )
        s = res["manifest"]["labels"]
        summary[mode] = {
            "seconds": round(res["seconds"], 2),
            "cpu_seconds": round(res["cpu_seconds"], 2),
            "labels_per_s": round(len(res["labels"]) / res["seconds"], 4),
            "labels_per_cpu_s": round(len(res["labels"]) / res["cpu_seconds"], 4),
            "position_consistency": s["position_consistency_rate"],
            "mean_confidence": s["mean_confidence"],
            "position_bias": s["position_bias"],
            "share_preferring_refusal": round(prefer_refusal / len(labeled), 3) if labeled else None,
            "generated_tokens": res["manifest"]["tokens"]["generated_this_session"],
            "warnings": len(res["manifest"]["warnings"]),
            "forward_tokens_per_label": round(res["forward_tokens"] / len(res["labels"]), 1) if res["forward_tokens"] else None,
            "layer_gflops": round(res["forward_tokens"] * per_token / res["seconds"], 1) if res["forward_tokens"] else None,
        }
    a, b = results["logprob"]["labels"], results["cot"]["labels"]
    agree = [x["chosen"] == y["chosen"] for x, y in zip(a, b) if x["chosen"] and y["chosen"]]
    summary["modes_agree"] = round(sum(agree) / len(agree), 3) if agree else None
    lp, cot = summary["logprob"]["labels_per_s"], summary["cot"]["labels_per_s"]
    summary["speed_ratio_logprob_over_cot"] = round(lp / cot, 2) if cot else None
    lpc, cotc = summary["logprob"]["labels_per_cpu_s"], summary["cot"]["labels_per_cpu_s"]
    summary["cpu_speed_ratio_logprob_over_cot"] = round(lpc / cotc, 2) if cotc else None
    summary["reps"] = args.reps
    summary["peak_rss_mb"] = peak_rss_mb()
    summary["machine"] = {"before": before, "after": after, "loaded": before["loaded"]}

    print(f"labeler: {summary['labeler']}  pairs: {len(rows)}  ensemble: {args.ensemble}  (load + warm-up {load_s:.1f} s)")
    for mode in ("logprob", "cot"):
        s = summary[mode]
        print(
            f"{mode:8s}: {s['labels_per_s']:.3f} labels/s ({s['seconds']:.1f} s), position consistency "
            f"{s['position_consistency']}, mean confidence {s['mean_confidence']}, prefers the refusal in "
            f"{s['share_preferring_refusal']} of labels"
            + (f", {s['generated_tokens']} reasoning/answer tokens generated" if s["generated_tokens"] else "")
        )
        if s["forward_tokens_per_label"]:
            print(f"{'':8s}  {s['forward_tokens_per_label']} token positions through the model per label; decoder "
                  f"layers at {s['layer_gflops']} GFLOP/s (this CPU's {dtype} matrix products: {peak} GFLOP/s)")
    print(f"logprob scoring is {summary['speed_ratio_logprob_over_cot']}x the speed of chain-of-thought labeling "
          f"(CPU time: {summary['cpu_speed_ratio_logprob_over_cot']}x); the two modes pick the same answer in "
          f"{summary['modes_agree']} of pairs; peak RSS {summary['peak_rss_mb']} MiB; load average "
          f"{before['loadavg_1m']} -> {after['loadavg_1m']} on {after['cpus']} CPUs"
          + (" (loaded machine)" if summary["machine"]["loaded"] else ""))
    print(json.dumps(summary))
    return 0


def _threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
