"""Labeling throughput: log-probability scoring vs chain-of-thought labeling, same model, same pairs, one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_label.py                      # embedded SmolLM2, 12 pairs, 64 reasoning tokens
    .venv/bin/python benchmarks/bench_label.py --pairs 24 --cot-tokens 96
    .venv/bin/python benchmarks/bench_label.py --labeler ./my-hf-model --ensemble 2

The pairs are built in the script from shipped red-team prompts (train split) with short fixed answers: a refusal
that offers a safe alternative and a compliant-sounding answer, alternating which one comes first. Both modes run the
real ``label`` stage (``run_label``) on the same labeler instance, after a warm-up that loads the model, so the
timings exclude loading. Printed: labels/second of each mode, their ratio, label statistics (position consistency,
mean confidence, share of labels preferring the refusal) and, last, one JSON line with every figure.
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


def run_mode(mode: str, pairs: Path, work: Path, pool: BackendPool, args) -> dict:
    cfg = LabelConfig(
        labeler=args.labeler, pairs=str(pairs), mode=mode, cot_tokens=args.cot_tokens, ensemble=args.ensemble, seed=args.seed
    )
    t0 = time.perf_counter()
    m = run_label(cfg, str(work / f"run-{mode}"), pool=pool)
    dt = time.perf_counter() - t0
    labels = read_jsonl(work / f"run-{mode}" / "label" / "labels.jsonl")
    return {"seconds": dt, "labels": labels, "manifest": m}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=12, help="number of pairs (shipped red-team train prompts)")
    ap.add_argument("--cot-tokens", type=int, default=64, help="max reasoning tokens in chain-of-thought mode")
    ap.add_argument("--ensemble", type=int, default=1, help="principles per comparison")
    ap.add_argument("--labeler", default="embedded", help="labeler model: embedded, a folder, openai:NAME@URL")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rows = build_pairs(args.pairs)
    spec = ModelSpec.model_validate(args.labeler)
    pool = BackendPool()
    t0 = time.perf_counter()
    backend = pool.get(spec)
    # warm-up: load weights and run one tiny generation and one scoring pass, so timings below exclude them
    backend.generate([[{"role": "user", "content": "Hello"}]], GenParams(max_new_tokens=2))
    backend.option_logprobs([[{"role": "user", "content": "Pick"}, {"role": "assistant", "content": "("}]], [["A", "B"]])
    load_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="cai-bench-label-") as tmp:
        work = Path(tmp)
        pairs = work / "pairs.jsonl"
        write_jsonl(pairs, [{k: v for k, v in r.items() if k != "refusal_index"} for r in rows])
        results = {mode: run_mode(mode, pairs, work, pool, args) for mode in ("logprob", "cot")}

    refusal_of = {r["id"]: r["refusal_index"] for r in rows}
    summary: dict = {
        "benchmark": "label",
        "labeler": backend.describe()["model"],
        "pairs": len(rows),
        "ensemble": args.ensemble,
        "cot_tokens": args.cot_tokens,
        "warmup_load_s": round(load_s, 2),
        "torch_threads": _threads(),
    }
    for mode, res in results.items():
        labeled = [x for x in res["labels"] if not x["abstained"]]
        prefer_refusal = sum(
            (x["p_a_unclamped"] > 0.5) == (refusal_of[x["id"]] == 0) for x in labeled if x["p_a_unclamped"] != 0.5
        )
        s = res["manifest"]["labels"]
        summary[mode] = {
            "seconds": round(res["seconds"], 2),
            "labels_per_s": round(len(res["labels"]) / res["seconds"], 4),
            "position_consistency": s["position_consistency_rate"],
            "mean_confidence": s["mean_confidence"],
            "position_bias": s["position_bias"],
            "share_preferring_refusal": round(prefer_refusal / len(labeled), 3) if labeled else None,
            "generated_tokens": res["manifest"]["tokens"]["generated_this_session"],
            "warnings": len(res["manifest"]["warnings"]),
        }
    a, b = results["logprob"]["labels"], results["cot"]["labels"]
    agree = [x["chosen"] == y["chosen"] for x, y in zip(a, b) if x["chosen"] and y["chosen"]]
    summary["modes_agree"] = round(sum(agree) / len(agree), 3) if agree else None
    lp, cot = summary["logprob"]["labels_per_s"], summary["cot"]["labels_per_s"]
    summary["speed_ratio_logprob_over_cot"] = round(lp / cot, 2) if cot else None

    print(f"labeler: {summary['labeler']}  pairs: {len(rows)}  ensemble: {args.ensemble}  (load + warm-up {load_s:.1f} s)")
    for mode in ("logprob", "cot"):
        s = summary[mode]
        print(
            f"{mode:8s}: {s['labels_per_s']:.3f} labels/s ({s['seconds']:.1f} s), position consistency "
            f"{s['position_consistency']}, mean confidence {s['mean_confidence']}, prefers the refusal in "
            f"{s['share_preferring_refusal']} of labels"
            + (f", {s['generated_tokens']} reasoning/answer tokens generated" if s["generated_tokens"] else "")
        )
    print(f"logprob scoring is {summary['speed_ratio_logprob_over_cot']}x the speed of chain-of-thought labeling; "
          f"the two modes pick the same answer in {summary['modes_agree']} of pairs")
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
