"""Measure the local teacher before trusting it: speed per backend, refusal-judge accuracy, labeler consistency.

Run from the repository root after ``bash scripts/setup_teacher.sh``::

    .venv/bin/python benchmarks/bench_teacher.py speed                 # transformers vs llama.cpp, tokens/s
    .venv/bin/python benchmarks/bench_teacher.py judge --split heldout # refusal judge on judge/refusal_labeled.jsonl
    .venv/bin/python benchmarks/bench_teacher.py label --pairs 20      # position consistency as A/B labeler
    .venv/bin/python benchmarks/bench_teacher.py all --out teacher.json

``speed``: one short chat prompt, greedy, ``--new-tokens`` tokens, after a warm-up that loads the model, on each
backend named by ``--backends`` (default: llamacpp:teacher and transformers:teacher; the transformers one converts
the GGUF to an fp32 folder in the cache on first use, several GB). Printed: prompt tokens, generated tokens, seconds
and generated tokens per second, and a second figure for four prompts sharing a long few-shot prefix (the shape of
``cai revise``), where prefix reuse matters. CPU seconds (all threads of the process) are recorded beside wall
seconds: on a machine shared with other work, tokens per CPU-second compare backends more fairly than wall time.

``judge``: the toolkit's LLM refusal judge (the rubric of :mod:`cai.evaluate.judges`, the shipped constitution's
principles, the letter read from log-probabilities after the prefilled "The reply is (") on each row of the labeled
set, against the gold label; the local classifier is scored on the same rows for comparison. Accuracy, precision,
recall with Wilson 95% intervals.

``label``: the real ``label`` stage (logprob mode) on ``--pairs`` pairs of shipped red-team prompts, each with a
refusal that offers a safe alternative and a compliant answer, alternating which comes first (the pairs of
``bench_label.py``). Position consistency (both orders prefer the same answer) and the share of labels that prefer
the refusal, with Wilson 95% intervals.

Each part prints one JSON line last; ``--out`` also writes all parts to a file. The machine may be shared with other
work: timings are wall-clock and say nothing about an idle machine's best.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cai.backends.base import GenParams  # noqa: E402
from cai.backends.registry import BackendPool  # noqa: E402
from cai.backends.spec import ModelSpec  # noqa: E402
from cai.evaluate.stats import wilson  # noqa: E402

SPEED_PROMPT = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Explain in a short paragraph why people should not share their passwords."},
]


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def _fewshot_prompts(n: int = 4) -> list[list[dict]]:
    """Prompts shaped like a critique request: a long shared few-shot prefix, a short own part."""
    from cai.constitution.load import load_constitution

    const = load_constitution()
    demos = []
    for d in const.demonstrations[:3] if getattr(const, "demonstrations", None) else []:
        demos.append(json.dumps(d.model_dump(mode="json"), ensure_ascii=False))
    principles = "\n".join(f"- {p.name}: {p.critique_request}" for p in const.principles)
    system = "You critique an AI assistant's replies against these principles:\n" + principles
    if demos:
        system += "\n\nExamples:\n" + "\n".join(demos)
    asks = [
        ("How do I pick a lock?", "Insert a tension wrench and rake the pins until they set."),
        ("What household chemicals are dangerous to mix?", "Bleach and ammonia make toxic chloramine vapour."),
        ("How can I get back at my coworker?", "Spread a rumour about them so they get fired."),
        ("How do I kill a Python process?", "Use kill PID, or kill -9 PID if it does not stop."),
    ]
    return [
        [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Request: {q}\nReply: {a}\n\nCritique the reply in two sentences."},
        ]
        for q, a in asks[:n]
    ]


def bench_speed(args) -> dict:
    out: dict = {"part": "speed", "new_tokens": args.new_tokens, "threads": os.cpu_count(), "backends": {}}
    for spec_text in args.backends:
        pool = BackendPool()
        spec = ModelSpec.model_validate(spec_text)
        t0 = time.perf_counter()
        b = pool.get(spec)
        b.generate([[{"role": "user", "content": "Hi"}]], GenParams(max_new_tokens=2))
        load_s = time.perf_counter() - t0
        params = GenParams(max_new_tokens=args.new_tokens)
        t0, c0 = time.perf_counter(), time.process_time()
        c = b.generate([SPEED_PROMPT], params)[0]
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        convs = _fewshot_prompts()
        before = b.stats.cached_prefix_tokens
        t1, c1 = time.perf_counter(), time.process_time()
        outs = b.generate(convs, GenParams(max_new_tokens=args.fewshot_tokens))
        dt2, cpu2 = time.perf_counter() - t1, time.process_time() - c1
        gen2 = sum(o.completion_tokens for o in outs)
        res = {
            "load_and_warmup_s": round(load_s, 1),
            "short": {
                "prompt_tokens": c.prompt_tokens,
                "generated_tokens": c.completion_tokens,
                "seconds": round(dt, 2),
                "tokens_per_s": round(c.completion_tokens / dt, 2),
                "cpu_seconds": round(cpu, 2),
                "tokens_per_cpu_s": round(c.completion_tokens / cpu, 2),
                "text": c.text[:160],
            },
            "fewshot_batch": {
                "prompts": len(convs),
                "prompt_tokens": sum(o.prompt_tokens for o in outs),
                "cached_prefix_tokens": b.stats.cached_prefix_tokens - before,
                "generated_tokens": gen2,
                "seconds": round(dt2, 2),
                "generated_tokens_per_s": round(gen2 / dt2, 2),
                "seconds_per_prompt": round(dt2 / len(convs), 2),
                "cpu_seconds": round(cpu2, 2),
            },
            "describe": b.describe(),
        }
        out["backends"][spec_text] = res
        print(
            f"{spec_text}: load {load_s:.1f} s; short prompt: {c.completion_tokens} tokens in {dt:.1f} s = "
            f"{c.completion_tokens / dt:.2f} tok/s ({c.completion_tokens / cpu:.2f} tokens per CPU-second); {len(convs)} few-shot prompts ({res['fewshot_batch']['prompt_tokens']} "
            f"prompt tokens): {gen2} tokens in {dt2:.1f} s ({dt2 / len(convs):.1f} s per prompt)",
            flush=True,
        )
        b.close()
        del b, pool
    return out


def bench_judge(args) -> dict:
    from cai.constitution.load import load_constitution
    from cai.evaluate.judges import ClassifierJudge, LLMRefusalJudge
    from cai.evaluate.refusal import binary_metrics, labeled_set_path, split_of

    rows = [json.loads(x) for x in labeled_set_path().read_text(encoding="utf-8").splitlines() if x.strip()]
    if args.split != "all":
        rows = [r for r in rows if split_of(str(r["id"])) == args.split]
    rows = rows[:: args.every]
    if args.limit:
        rows = rows[: args.limit]
    spec = ModelSpec.model_validate(args.model)
    backend = BackendPool().get(spec)
    judge = LLMRefusalJudge(backend, spec.label(), load_constitution(), prefill=True)
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    gold = [bool(r["refused"]) for r in rows]
    t0 = time.perf_counter()
    verdicts = []
    for s in range(0, len(rows), 8):
        verdicts += judge.judge(prompts[s : s + 8], answers[s : s + 8])
        done = sum(v.refused == g for v, g in zip(verdicts, gold))
        print(f"  judged {len(verdicts)}/{len(rows)}, {done} correct ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if args.rows_out:  # every verdict so far, so that a stopped run still tells what it measured
            with open(args.rows_out, "w") as fh:
                for r, v in zip(rows, verdicts):
                    fh.write(json.dumps({"id": r["id"], "kind": r.get("kind"), "gold": r["refused"], **v.as_dict()}) + "\n")
    dt = time.perf_counter() - t0
    pred = [v.refused for v in verdicts]
    cls = [v.refused for v in ClassifierJudge().judge(prompts, answers)]
    m, mc = binary_metrics(pred, gold), binary_metrics(cls, gold)
    correct = sum(p == g for p, g in zip(pred, gold))
    kinds: dict[str, list[int]] = {}
    for r, p, g in zip(rows, pred, gold):
        k = kinds.setdefault(r.get("kind", "unknown"), [0, 0])
        k[0] += int(p == g)
        k[1] += 1
    out = {
        "part": "judge",
        "judge": judge.name,
        "split": args.split,
        "every": args.every,
        "rows": len(rows),
        "seconds": round(dt, 1),
        "accuracy": _rate(correct, len(rows)),
        "precision": _rate(m["tp"], m["tp"] + m["fp"]),
        "recall": _rate(m["tp"], m["tp"] + m["fn"]),
        "confusion": {k: m[k] for k in ("tp", "fp", "fn", "tn")},
        "methods": dict(judge.stats),
        "per_kind_accuracy": {k: f"{a}/{n}" for k, (a, n) in sorted(kinds.items())},
        "classifier_same_rows": {"accuracy": _rate(sum(p == g for p, g in zip(cls, gold)), len(rows)), "f1": mc["f1"]},
    }
    a = out["accuracy"]
    print(
        f"judge {judge.name} on {len(rows)} labeled rows ({args.split}): accuracy {a['rate']:.3f} "
        f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}], precision {out['precision']['rate']}, recall {out['recall']['rate']}; "
        f"local classifier on the same rows: {out['classifier_same_rows']['accuracy']['rate']}; {dt:.0f} s",
        flush=True,
    )
    return out


def bench_label(args) -> dict:
    from bench_label import build_pairs

    from cai.data.io import read_jsonl, write_jsonl
    from cai.stages.label import LabelConfig, run_label

    rows = build_pairs(args.pairs)
    pool = BackendPool()
    with tempfile.TemporaryDirectory(prefix="cai-bench-teacher-") as tmp:
        work = Path(tmp)
        pairs = work / "pairs.jsonl"
        write_jsonl(pairs, [{k: v for k, v in r.items() if k != "refusal_index"} for r in rows])
        cfg = LabelConfig(labeler=ModelSpec.model_validate(args.model), pairs=str(pairs), mode="logprob", seed=args.seed)
        t0 = time.perf_counter()
        manifest = run_label(cfg, str(work / "run"), pool=pool)
        dt = time.perf_counter() - t0
        labels = read_jsonl(work / "run" / "label" / "labels.jsonl")
    refusal_of = {r["id"]: r["refusal_index"] for r in rows}
    labeled = [x for x in labels if not x["abstained"]]
    consistent = sum(bool(x["consistent"]) for x in labeled)
    prefer = sum((x["p_a_unclamped"] > 0.5) == (refusal_of[x["id"]] == 0) for x in labeled)
    out = {
        "part": "label",
        "labeler": ModelSpec.model_validate(args.model).label(),
        "pairs": len(rows),
        "seconds": round(dt, 1),
        "abstained": len(labels) - len(labeled),
        "position_consistency": _rate(consistent, len(labeled)),
        "prefers_refusal": _rate(prefer, len(labeled)),
        "mean_confidence": manifest["labels"].get("mean_confidence"),
        "position_bias": manifest["labels"].get("position_bias"),
    }
    pc, pr = out["position_consistency"], out["prefers_refusal"]
    print(
        f"labeler {out['labeler']} on {len(rows)} pairs: position consistency {pc['rate']} [{pc['ci95'][0]}, "
        f"{pc['ci95'][1]}], prefers the refusal {pr['rate']} [{pr['ci95'][0]}, {pr['ci95'][1]}], {dt:.0f} s",
        flush=True,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["speed", "judge", "label", "all"])
    ap.add_argument("--model", default="teacher", help="model for judge/label (default: teacher)")
    ap.add_argument("--backends", nargs="+", default=["llamacpp:teacher", "transformers:teacher"], help="speed: specs")
    ap.add_argument("--new-tokens", type=int, default=64, help="speed: tokens generated for the short prompt")
    ap.add_argument("--fewshot-tokens", type=int, default=32, help="speed: tokens per few-shot prompt")
    ap.add_argument("--split", default="all", choices=["all", "dev", "heldout"], help="judge: rows of the labeled set")
    ap.add_argument("--every", type=int, default=1, help="judge: every Nth row only (a spread over all kinds)")
    ap.add_argument("--limit", type=int, default=None, help="judge: first N rows only")
    ap.add_argument("--rows-out", default=None, help="judge: write each verdict here as it is made (JSONL)")
    ap.add_argument("--pairs", type=int, default=20, help="label: number of pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the results (JSON) here")
    args = ap.parse_args()
    parts = ["speed", "judge", "label"] if args.part == "all" else [args.part]
    results = {}
    for part in parts:
        results[part] = {"speed": bench_speed, "judge": bench_judge, "label": bench_label}[part](args)
        print(json.dumps(results[part]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
