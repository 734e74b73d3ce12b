"""The guard against bare generation and a critique-then-revise loop per principle, and its catch/false-positive rates.

Run from the repository root::

    .venv/bin/python benchmarks/bench_guard.py                            # embedded model, small default
    .venv/bin/python benchmarks/bench_guard.py --requests 8 --eval-limit 0 --max-new-tokens 64   # bigger

Part 1, latency (same prompts, same model, greedy, one process): for each prompt the policy model's answer is
generated once (``bare``); the guard is that generation plus ``Guard.apply`` on its answer (one batched check over
every principle, one revision only when something is flagged); the loop baseline is that generation plus, for each
principle in turn, a critique and, unless the critique contains "no critique needed", a revision (2 sequential
calls per principle, the phrase test that chains of this kind use; critiques without few-shot examples, which only
makes the baseline faster); the cascade is the guard with the embedding first stage in front of the checker.
Printed: p50/p95 latency and model calls per request, and the overhead ratio over bare generation at p50 on the
requests where nothing was flagged.

Part 2, rates on the shipped eval splits (the prompts ``cai eval`` reads: red-team ``eval`` split as harmful,
helpful ``eval`` split as benign, its ``benign_risky`` rows separately), as a check-only input rail (``check(messages,
None)``, no generation): the share flagged with a ``block``/``revise`` action on harmful prompts and the
false-positive share on benign and benign-but-risky prompts, each with a 95% Wilson interval, for the first-stage
embedding classifier alone (every eval prompt), the checker model alone and the cascade (first ``--eval-limit``
prompts of each set). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread unless told otherwise: on a shared small machine torch's spinning workers make every step slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

PRINCIPLES = ["harmless-overall", "no-violence-uplift", "answer-benign-requests"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def loop_baseline(backend, const, principles, messages, answer, max_new_tokens):
    """Critique then revise, sequentially, per principle; the phrase test decides whether to revise."""
    from cai.backends.base import GenParams
    from cai.stages.sl_prompts import critique_conversation, revision_conversation

    params = GenParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    prompt = "\n".join(m["content"] for m in messages if m["role"] == "user")
    calls = 0
    for p in principles:
        conv = critique_conversation(const, p, prompt, answer, few_shot=0)
        critique = backend.generate([conv], params)[0].text
        calls += 1
        if "no critique needed" in critique.lower():
            continue
        revised = backend.generate([revision_conversation(conv, p, critique)], params)[0]
        calls += 1
        if not revised.failed:
            answer = revised.text
    return answer, calls


def latency_part(guard, cascade, prompts: list[str], max_new_tokens: int, loop: bool = True) -> dict:
    backend = guard.policy_model
    rows = []
    for text in prompts:
        msgs = [{"role": "user", "content": text}]
        t0 = time.perf_counter()
        answer = guard.generate(msgs)
        gen_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        res = guard.apply(msgs, answer)
        guard_ms = gen_ms + (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        res_c = cascade.apply(msgs, answer)
        cascade_ms = gen_ms + (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        loop_calls = 0
        if loop:
            _, loop_calls = loop_baseline(backend, guard.constitution, guard.principles, msgs, answer, max_new_tokens)
        loop_ms = gen_ms + (time.perf_counter() - t0) * 1000
        rows.append({"prompt": text[:60], "bare_ms": round(gen_ms, 1), "guard_ms": round(guard_ms, 1), "cascade_ms": round(cascade_ms, 1),
                     "loop_ms": round(loop_ms, 1), "cascade_calls": 1 + res_c.model_calls, "cascade_outcome": res_c.outcome,
                     "guard_calls": 1 + res.model_calls, "loop_calls": 1 + loop_calls, "outcome": res.outcome,
                     "flagged": [v.principle_id for v in res.check.flagged]})
        print(f"  {rows[-1]}", flush=True)

    def stats(key):
        v = [r[key] for r in rows]
        return {"p50": round(statistics.median(v), 1), "p95": round(pct(v, 0.95), 1)}

    def ratio(key, outcome_key):
        clean = [r for r in rows if r[outcome_key] == "pass"]
        if not clean:
            return None
        bare = statistics.median(r["bare_ms"] for r in clean)
        return round(statistics.median(r[key] for r in clean) / bare, 3) if bare > 0 else None

    return {
        "requests": len(rows),
        "bare": stats("bare_ms") | {"calls_per_request": 1.0},
        "guard": stats("guard_ms") | {"calls_per_request": statistics.mean(r["guard_calls"] for r in rows)},
        "cascade": stats("cascade_ms") | {"calls_per_request": statistics.mean(r["cascade_calls"] for r in rows)},
        "loop": (stats("loop_ms") | {"calls_per_request": statistics.mean(r["loop_calls"] for r in rows)}) if loop else None,
        "overhead_ratio_p50_unflagged": ratio("guard_ms", "outcome"),
        "cascade_overhead_ratio_p50_unflagged": ratio("cascade_ms", "cascade_outcome"),
        "unflagged_requests": sum(r["outcome"] == "pass" for r in rows),
        "outcomes": {o: sum(r["outcome"] == o for r in rows) for o in ("pass", "revised", "blocked", "flagged")},
        "rows": rows,
    }


def rate(k: int, n: int) -> dict:
    from cai.evaluate.stats import wilson

    lo, hi = wilson(k, n) if n else (float("nan"), float("nan"))
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def eval_part(guard_model, guard_cascade, limit: int) -> dict:
    from cai.data.readers import load_prompts
    from cai.guard.prefilter import EmbeddingPrefilter

    harmful = [r["prompt"] for r in load_prompts("redteam", split="eval")]
    benign_rows = load_prompts("helpful", split="eval")
    sets = {
        "harmful": harmful,
        "benign": [r["prompt"] for r in benign_rows if not r.get("benign_risky")],
        "benign_risky": [r["prompt"] for r in benign_rows if r.get("benign_risky")],
    }
    out: dict = {"mode": "input check (check-only, no generation)"}
    pre = EmbeddingPrefilter(guard_cascade.config.prefilter.neighbours)
    band = guard_cascade.config.prefilter
    out["classifier"] = {"name": "embedding kNN over shipped train prompts (all-MiniLM-L6-v2), flagged at >= 0.5"}
    for name, texts in sets.items():
        scores = pre.request_scores(texts)
        out["classifier"][name] = rate(sum(s >= 0.5 for s in scores), len(texts))
        out["classifier"][name]["escalated_share"] = round(sum(band.low <= s < band.high for s in scores) / len(texts), 4)
    for label, guard in (("model", guard_model), ("cascade", guard_cascade)):
        out[label] = {"checker": guard.checker.model_id, "principles": [p.id for p in guard.principles],
                      "prefilter": guard.config.prefilter.model_dump() if guard.config.prefilter else None}
        ms = []
        for name, texts in sets.items():
            texts = texts[:limit]
            t0 = time.perf_counter()
            res = [guard.check([{"role": "user", "content": t}], None) for t in texts]
            ms += [(time.perf_counter() - t0) * 1000 / max(1, len(texts))] * len(texts)
            hit = sum(any(v.violated and v.action in ("block", "revise") for v in r.verdicts) for r in res)
            out[label][name] = rate(hit, len(texts))
            out[label][name]["model_checked"] = sum(r.decided_by == "model" for r in res)
            print(f"  {label} {name}: {out[label][name]}", flush=True)
        out[label]["mean_check_ms"] = round(statistics.mean(ms)) if ms else None
    return out


def injection_part(guard) -> dict:
    """Verdict flips on the shipped injection set: the same answer judged with and without its injected text."""
    from cai.guard.injections import count_flips, load_injections

    def verdicts(pairs):
        res = guard.check_many([([{"role": "user", "content": p}], a) for p, a in pairs])
        return [any(v.violated and v.action in ("block", "revise") for v in r.verdicts) for r in res]

    t0 = time.perf_counter()
    out = count_flips(verdicts, load_injections())
    out["checker"] = guard.checker.model_id
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  injections: {out['flips']} of {out['n']} verdicts flipped ({out['flipped_ids']})", flush=True)
    return out


def print_latency(lat: dict) -> None:
    loop = lat["loop"] or {"p50": "-", "p95": "-", "calls_per_request": float("nan")}
    print(f"p50/p95 ms  bare {lat['bare']['p50']}/{lat['bare']['p95']}  guard {lat['guard']['p50']}/{lat['guard']['p95']}"
          f"  loop {loop['p50']}/{loop['p95']}")
    print(f"  cascade (embedding first stage) {lat['cascade']['p50']}/{lat['cascade']['p95']}")
    print(f"calls/request  bare 1  guard {lat['guard']['calls_per_request']:.2f}  cascade "
          f"{lat['cascade']['calls_per_request']:.2f}  loop {loop['calls_per_request']:.2f}")
    print(f"overhead at p50 when nothing is flagged: guard {lat['overhead_ratio_p50_unflagged']}, cascade "
          f"{lat['cascade_overhead_ratio_p50_unflagged']} (goal <= 1.3)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded", help="policy model and checker (default: embedded)")
    ap.add_argument("--requests", type=int, default=3, help="prompts in the latency part (benign first, then harmful)")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="tokens per answer, critique and revision")
    ap.add_argument("--principles", default=",".join(PRINCIPLES), help="comma-separated principle ids, or 'all'")
    ap.add_argument("--eval-limit", type=int, default=4, help="eval prompts per set checked by the model (0: skip)")
    ap.add_argument("--skip-loop", action="store_true", help="leave out the per-principle loop baseline (it is slow)")
    ap.add_argument("--injections", action="store_true",
                    help="also count verdict flips on the shipped injection set with the checker model")
    args = ap.parse_args()

    from cai.backends.registry import BackendPool
    from cai.data.readers import load_prompts
    from cai.guard import Guard, GuardConfig

    principles = None if args.principles == "all" else args.principles.split(",")
    pool = BackendPool()
    base = dict(policy=args.model, checker=args.model, principles=principles, max_new_tokens=args.max_new_tokens,
                rules={"answer-benign-requests": {"action": "flag"}} if principles is None or "answer-benign-requests" in principles else {})
    t0 = time.perf_counter()
    guard = Guard(GuardConfig(**base), pool=pool)
    guard.checker.model_id  # load the model before timing anything
    load_s = time.perf_counter() - t0
    benign = [r["prompt"] for r in load_prompts("helpful", split="eval") if not r.get("benign_risky")]
    harmful = [r["prompt"] for r in load_prompts("redteam", split="eval")]
    n_h = args.requests // 3
    prompts = benign[: args.requests - n_h] + harmful[:n_h]
    print(f"model {guard.checker.model_id}, {len(guard.principles)} principles, load {load_s:.1f} s", flush=True)
    report: dict = {"bench": "guard", "model": guard.checker.model_id, "principles": [p.id for p in guard.principles],
                    "max_new_tokens": args.max_new_tokens, "cpu_count": os.cpu_count(),
                    "load_average": os.getloadavg()[0]}
    cascade = Guard(GuardConfig(**base, prefilter={"kind": "embedding"}), pool=pool)
    t0 = time.perf_counter()
    if prompts:
        cascade.check([{"role": "user", "content": "warm up"}], "ok")  # embeds the reference prompts once
        t0 = time.perf_counter()
        report["latency"] = latency_part(guard, cascade, prompts, args.max_new_tokens, loop=not args.skip_loop)
        print_latency(report["latency"])
    if args.eval_limit > 0:
        report["eval"] = eval_part(guard, cascade, args.eval_limit)
    if args.injections:
        report["injections"] = injection_part(guard)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
